"""`vidserve eval --task panoptic` on the service's answers as they come (POST /v1/segment's JSON
and its COCO panoptic zip), against the synthetic world's COCO panoptic ground truth: a perfect
answer scores 1 in either form, a missing segment costs, and mismatches are named."""

import json

import pytest
from typer.testing import CliRunner

from models.data.coco_panoptic import load_coco_panoptic
from models.data.rle import encode_mask
from models.eval import EvalInputError, evaluate_files
from service.cli import app
from service.schemas import FrameResult, Mask, Segment, SegmentResponse
from service.writers.coco_panoptic import coco_panoptic_zip


@pytest.fixture(scope="module")
def truth(small_dataset):
    """(ground-truth JSON, class names, {video: the perfect answer})."""
    folder, _, _ = small_dataset
    gt = folder / "panoptic" / "panoptic_val.json"
    dataset = load_coco_panoptic(gt)
    raw = {im["id"]: im for im in json.loads(gt.read_text())["images"]}
    names = {c.id: c.name for c in dataset.categories.values()}
    isthing = {c.id: c.isthing for c in dataset.categories.values()}
    frames: dict[str, list[FrameResult]] = {}
    for image in dataset.images:
        ids = image.load_ids()
        segments = [
            Segment(
                id=s.id,
                category=names[s.category_id],
                isthing=isthing[s.category_id],
                score=1.0,
                area=s.area,
                mask=Mask.model_validate(encode_mask(ids == s.id)),
            )
            for s in image.segments
        ]
        info = raw[image.id]
        frames.setdefault(info["video"], []).append(
            FrameResult(
                frame_index=info["frame_index"],
                time=0.0,
                segments=segments,
                model="truth",
                model_version="1",
            )
        )
    height, width = dataset.images[0].height, dataset.images[0].width
    answers = {
        video: SegmentResponse(
            model="truth",
            model_version="1",
            width=width,
            height=height,
            fps=4.0,
            frames=video_frames,
            tracks=[],
        )
        for video, video_frames in frames.items()
    }
    return gt, list(names.values()), answers


def save(folder, answers, kind: str, classes):
    folder.mkdir()
    for video, answer in answers.items():
        if kind == "json":
            (folder / f"{video}.json").write_text(answer.model_dump_json())
        else:
            (folder / f"{video}.zip").write_bytes(coco_panoptic_zip(answer, classes))
    return folder


@pytest.mark.parametrize("kind", ["json", "zip"])
def test_a_perfect_answer_scores_one_as_json_and_as_zip(truth, tmp_path, kind):
    gt, classes, answers = truth
    pred = save(tmp_path / "answers", answers, kind, classes)
    out = tmp_path / "scores.json"
    args = ["eval", "--task", "panoptic", "--gt", str(gt), "--pred", str(pred), "--json", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["PQ"] == metrics["PQ_th"] == metrics["PQ_st"] == pytest.approx(1.0)


def test_a_missing_thing_costs_things_only(truth, tmp_path):
    gt, classes, answers = truth
    video = sorted(answers)[0]
    frame = answers[video].frames[0]
    dropped = [s for s in frame.segments if s.isthing][0]
    kept = [s for s in frame.segments if s is not dropped]
    answers = dict(answers)
    answers[video] = answers[video].model_copy(
        update={"frames": [frame.model_copy(update={"segments": kept}), *answers[video].frames[1:]]}
    )
    metrics = evaluate_files("panoptic", gt, save(tmp_path / "a", answers, "json", classes)).metrics
    assert metrics["PQ_th"] < 1.0 and metrics["PQ_st"] == pytest.approx(1.0)


def test_answers_that_do_not_fit_are_named(truth, tmp_path):
    gt, classes, answers = truth
    first = sorted(answers)[0]
    lone = tmp_path / "lone.json"
    lone.write_text(answers[first].model_dump_json())
    with pytest.raises(EvalInputError, match="no answer for video"):
        evaluate_files("panoptic", gt, lone)  # one answer, several videos in the ground truth
    renamed = {**answers, first: _renamed(answers[first], "unicorn")}
    with pytest.raises(EvalInputError, match="category 'unicorn' is not in the ground truth"):
        evaluate_files("panoptic", gt, save(tmp_path / "b", renamed, "json", classes))
    short = {**answers, first: answers[first].model_copy(update={"frames": []})}
    with pytest.raises(EvalInputError, match="has no frame 0"):
        evaluate_files("panoptic", gt, save(tmp_path / "c", short, "json", classes))


def _renamed(answer: SegmentResponse, category: str) -> SegmentResponse:
    frame = answer.frames[0]
    segments = [frame.segments[0].model_copy(update={"category": category}), *frame.segments[1:]]
    first = frame.model_copy(update={"segments": segments})
    return answer.model_copy(update={"frames": [first, *answer.frames[1:]]})
