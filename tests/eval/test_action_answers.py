"""`vidserve eval --task action` on the service's answers as they come (POST /v1/segment's JSON
of an action model): an answer scores as the AVA results CSV of the same labels, a folder of
answers as the CSV of all of them, and bad inputs are named."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from models.data.ava import AvaBox, write_action_list, write_ava_csv
from models.data.rle import encode_mask
from models.eval import EvalInputError, evaluate_files
from service.cli import app
from service.schemas import (
    ActionLabel,
    ActionsResult,
    DetectedObject,
    FrameResult,
    Mask,
    SegmentResponse,
    TrackActions,
    build_response,
)

W, H, FPS = 200, 100, 4.0
ACTIONS = {1: "still", 2: "walk", 3: "jump", 4: "spin"}  # the label map
# Two tracked people, in input pixels and normalised (the CSV's form).
BOXES = {1: (20.0, 10.0, 80.0, 90.0), 2: (120.0, 10.0, 180.0, 90.0)}
UNIT = {1: (0.1, 0.1, 0.4, 0.9), 2: (0.6, 0.1, 0.9, 0.9)}
# key frame -> track -> [(action, score)]; track 3 is not on its key frame: no box, no row.
LABELS = {
    0: {1: [("walk", 0.9), ("still", 0.2)], 2: [("still", 0.8), ("walk", 0.6)]},
    4: {1: [("walk", 0.7), ("jump", 0.4)], 2: [("jump", 0.3), ("spin", 0.5)], 3: [("spin", 1.0)]},
}
# The truth: second -> track -> action. Per action, ranked predictions: still TP .8, FP .2 ->
# AP 1; walk TP .9, TP .7, FP .6 -> AP 1; jump FP .4, TP .3 -> AP 1/2; spin has no ground
# truth and is not averaged. mAP = (1 + 1 + 1/2) / 3.
TRUTH = {0: {1: "walk", 2: "still"}, 1: {1: "walk", 2: "jump"}}
EXPECTED_MAP = 2.5 / 3
ID = {name: i for i, name in ACTIONS.items()}


def detected(track_id: int) -> DetectedObject:
    x1, y1, x2, y2 = map(int, BOXES[track_id])
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[y1:y2, x1:x2] = 1
    return DetectedObject(
        track_id=track_id,
        category="person",
        score=0.95,
        box=BOXES[track_id],
        mask=Mask.model_validate(encode_mask(mask)),
    )


def answer(labels=LABELS, fps: float = FPS, frames: int = 8) -> SegmentResponse:
    """The response the service builds: every frame with both people, and each key frame's
    ActionsResult (merged onto the key frame's objects by build_response)."""
    events = [
        FrameResult(
            frame_index=t,
            time=t / fps,
            objects=[detected(1), detected(2)],
            model="slowfast-acrn",
            model_version="1",
        )
        for t in range(frames)
    ]
    events += [
        ActionsResult(
            key_frame=key,
            time=key / fps,
            tracks=[
                TrackActions(
                    track_id=track_id,
                    actions=[ActionLabel(label=a, score=s) for a, s in track_labels],
                )
                for track_id, track_labels in tracks.items()
            ],
            model="slowfast-acrn",
            model_version="1",
        )
        for key, tracks in labels.items()
    ]
    return build_response(events, width=W, height=H, fps=fps)


def truth_rows(video: str) -> list[AvaBox]:
    return [
        AvaBox(video, second, UNIT[track], ID[action], person_id=track)
        for second, tracks in TRUTH.items()
        for track, action in tracks.items()
    ]


def csv_rows(video: str) -> list[AvaBox]:
    """The answer's labels written by hand as AVA results rows (track 3 has no box)."""
    return [
        AvaBox(video, key / FPS, UNIT[track], ID[action], score=score)
        for key, tracks in LABELS.items()
        for track, labels in tracks.items()
        if track in UNIT
        for action, score in labels
    ]


@pytest.fixture
def data(tmp_path):
    """A two-video ground truth with its label map beside it (as `vidserve synth` writes)."""
    ann = tmp_path / "ava" / "annotations"
    ann.mkdir(parents=True)
    write_ava_csv(ann / "ava_val_v2.2.csv", truth_rows("vid0000") + truth_rows("vid0001"))
    write_action_list(ann / "ava_action_list_v2.2.pbtxt", ACTIONS)
    return ann / "ava_val_v2.2.csv"


def save(folder, videos, response=None):
    folder.mkdir(exist_ok=True)
    for video in videos:
        (folder / f"{video}.json").write_text((response or answer()).model_dump_json())
    return folder


def mean_ap(gt, pred, labelmap=None) -> float:
    return evaluate_files("action", gt, pred, labelmap=labelmap).metrics["mAP@0.5"]


def test_a_folder_of_answers_scores_as_the_equivalent_csv(data, tmp_path):
    answers = save(tmp_path / "answers", ["vid0000", "vid0001"])
    write_ava_csv(tmp_path / "pred.csv", csv_rows("vid0000") + csv_rows("vid0001"))
    labelmap = data.parent / "ava_action_list_v2.2.pbtxt"
    from_csv = evaluate_files("action", data, tmp_path / "pred.csv", labelmap=labelmap)
    from_answers = evaluate_files("action", data, answers)  # the label map beside the CSV
    assert from_answers.metrics["mAP@0.5"] == pytest.approx(EXPECTED_MAP)
    assert from_answers.metrics == pytest.approx(from_csv.metrics)
    assert from_answers.per_class == pytest.approx(from_csv.per_class)
    assert from_answers.per_class == pytest.approx({"still": 1.0, "walk": 1.0, "jump": 0.5})


def test_one_answer_is_its_videos_rows(data, tmp_path):
    """A lone <video>.json is that video's predictions: the other video's truth goes unfound,
    as with a CSV of that video alone."""
    answers = save(tmp_path / "answers", ["vid0001"])
    write_ava_csv(tmp_path / "pred.csv", csv_rows("vid0001"))
    labelmap = data.parent / "ava_action_list_v2.2.pbtxt"
    assert mean_ap(data, answers / "vid0001.json") == pytest.approx(
        mean_ap(data, tmp_path / "pred.csv", labelmap)
    )


def test_labelmap_given_elsewhere(data, tmp_path):
    """--labelmap wins over the one beside the ground truth (which is not even read)."""
    (data.parent / "ava_action_list_v2.2.pbtxt").write_text("not a label map")
    write_action_list(tmp_path / "mine.pbtxt", ACTIONS)
    answers = save(tmp_path / "answers", ["vid0000", "vid0001"])
    assert mean_ap(data, answers, tmp_path / "mine.pbtxt") == pytest.approx(EXPECTED_MAP)


def test_a_key_frame_off_the_whole_second_stands_for_it(data, tmp_path):
    """At 29.97 fps the frame of second 1 is frame 30, at 1.001 s: it is still that second's
    key frame (the first frame at or after it); frame 31 would not be."""
    fps = 29.97
    labels = {0: LABELS[0], 30: LABELS[4]}
    answers = save(tmp_path / "answers", ["vid0000", "vid0001"], answer(labels, fps, 32))
    assert mean_ap(data, answers) == pytest.approx(EXPECTED_MAP)
    late = {0: LABELS[0], 31: LABELS[4]}
    save(tmp_path / "late", ["vid0000", "vid0001"], answer(late, fps, 32))
    assert mean_ap(data, tmp_path / "late") < EXPECTED_MAP


# --- bad inputs ----------------------------------------------------------------------------------
def test_no_labelmap_anywhere(data, tmp_path):
    (data.parent / "ava_action_list_v2.2.pbtxt").unlink()
    answers = save(tmp_path / "answers", ["vid0000", "vid0001"])
    with pytest.raises(EvalInputError, match=r"no label map .*pass one with --labelmap"):
        evaluate_files("action", data, answers)


def test_a_label_not_in_the_map(data, tmp_path):
    labels = {0: {1: [("dance", 0.9)]}}
    answers = save(tmp_path / "answers", ["vid0000", "vid0001"], answer(labels))
    with pytest.raises(
        EvalInputError,
        match=r"vid0000\.json: frame 0 track 1: action 'dance' is not in the label map "
        r"\(still, walk, jump, spin\)",
    ):
        evaluate_files("action", data, answers)


@pytest.mark.parametrize(
    "content",
    [
        [{"video_id": 1, "score": 0.5}],  # a results list, not an answer
        {"model": "slowfast-acrn", "width": W, "height": H},  # no frames
        "not json at all",
    ],
)
def test_a_json_that_is_not_an_answer(data, tmp_path, content):
    path = tmp_path / "vid0000.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(EvalInputError, match=r"vid0000\.json: not (an answer|valid JSON)"):
        evaluate_files("action", data, path)


def test_an_answer_with_a_broken_object(data, tmp_path):
    broken = json.loads(answer().model_dump_json())
    del broken["frames"][0]["objects"][0]["box"]
    path = tmp_path / "vid0000.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(EvalInputError, match=r"vid0000\.json: not a readable answer .*'box'"):
        evaluate_files("action", data, path)


def test_answers_named_for_the_wrong_videos(data, tmp_path):
    save(tmp_path / "some", ["vid0000"])
    with pytest.raises(EvalInputError, match="no answer for video 'vid0001'"):
        evaluate_files("action", data, tmp_path / "some")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvalInputError, match=r"no answers \(<video>\.json\)"):
        evaluate_files("action", data, tmp_path / "empty")
    lone = save(tmp_path / "lone", ["clip"]) / "clip.json"
    with pytest.raises(EvalInputError, match="video 'clip' is not in the ground truth"):
        evaluate_files("action", data, lone)


def test_the_command_line(data, tmp_path):
    answers = save(tmp_path / "answers", ["vid0000", "vid0001"])
    args = ["eval", "--task", "action", "--gt", str(data), "--pred", str(answers)]
    out = CliRunner().invoke(app, [*args, "--json", str(tmp_path / "m.json")])
    assert out.exit_code == 0, out.output
    assert json.loads((tmp_path / "m.json").read_text())["metrics"]["mAP@0.5"] == pytest.approx(
        EXPECTED_MAP
    )
    (data.parent / "ava_action_list_v2.2.pbtxt").unlink()
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 2
    assert "error:" in out.output and "--labelmap" in out.output
