"""MaskFormer served as task `panoptic`, through a real `vidserve serve` (REST and gRPC) on a tiny
MaskFormer published into a store of its own: segments per frame that never overlap, the zip
that reads back as COCO panoptic, the rendered mp4, `vidserve eval` on the answer as it comes,
and the refusals (a prompt: 400 / INVALID_ARGUMENT; an Accept it cannot give: 406)."""

import io
import json
import zipfile

import av
import grpc
import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from models.data.coco_panoptic import load_coco_panoptic
from models.data.draw import id_colour
from models.data.rle import decode_rle, encode_mask
from models.data.synthetic.export import generate_dataset
from service.cli import app
from service.gateway.grpc_gen import vidserve_pb2 as pb
from service.gateway.grpc_gen import vidserve_pb2_grpc as pb_grpc
from service.schemas import Mask, Segment
from tests.service.conftest import VIDEO_WORLD
from tests.service.panoptic_fixtures import MODEL, STUFF, THINGS
from tests.service.test_grpc import png


def segment(server, video_file, data=None, headers=None) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/segment",
        files={"video": ("v.mp4", video_file.read_bytes())},
        data={"model": MODEL, **(data or {})},
        headers=headers or {},
        timeout=120,
    )


@pytest.fixture(scope="module")
def answer(panoptic_server, video_file) -> dict:
    response = segment(panoptic_server, video_file)
    assert response.status_code == 200, response.text
    return response.json()


def test_listed_with_task_panoptic_over_rest_and_grpc(panoptic_server):
    listed = httpx.get(f"{panoptic_server.url}/v1/models").json()["models"]
    # The checkpoint also serves `<name>-video` (tests/service/test_panoptic_video.py).
    assert sorted((m["name"], m["task"], m["takes_prompt"]) for m in listed) == [
        (MODEL, "panoptic", False),
        (f"{MODEL}-video", "panoptic", False),
    ]
    assert all(m["classes"] == THINGS + STUFF for m in listed)
    with grpc.insecure_channel(panoptic_server.grpc_target) as channel:
        models = pb_grpc.VideoSegmentationStub(channel).ListModels(pb.ListModelsRequest())
    assert sorted((m.name, m.task) for m in models.models) == [
        (MODEL, "panoptic"),
        (f"{MODEL}-video", "panoptic"),
    ]


def test_every_frame_answers_segments_that_never_overlap(answer):
    assert [f["frame_index"] for f in answer["frames"]] == list(range(VIDEO_WORLD.frames))
    kinds = set()
    for frame in answer["frames"]:
        assert frame["objects"] == [] and frame["segments"], frame["frame_index"]
        covered = np.zeros((answer["height"], answer["width"]), dtype=int)
        for segment in frame["segments"]:
            mask = decode_rle(segment["mask"]).astype(bool)
            covered += mask
            assert segment["area"] == mask.sum() > 0
            assert segment["isthing"] == (segment["category"] in THINGS)
            assert segment["category"] in THINGS + STUFF
            assert segment["track_id"] is None
            kinds.add(segment["isthing"])
        assert covered.max() == 1, f"segments overlap on frame {frame['frame_index']}"
        assert len({s["id"] for s in frame["segments"]}) == len(frame["segments"])
    assert kinds == {True, False}, "the tiny model should answer things and stuff"
    assert answer["tracks"] == []  # per-frame: no track ids


def test_the_zip_reads_back_as_coco_panoptic(panoptic_server, video_file, answer, tmp_path):
    response = segment(panoptic_server, video_file, headers={"Accept": "application/zip"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        archive.extractall(tmp_path)
    dataset = load_coco_panoptic(tmp_path / "panoptic.json")
    assert len(dataset.images) == VIDEO_WORLD.frames
    names = {c.id: (c.name, c.isthing) for c in dataset.categories.values()}
    for image, frame in zip(dataset.images, answer["frames"], strict=True):
        ids = image.load_ids()
        by_id = {s.id: s for s in image.segments}
        for answered in frame["segments"]:
            mask = decode_rle(answered["mask"]).astype(bool)
            assert (ids[mask] == answered["id"]).all()
            assert (ids == answered["id"]).sum() == mask.sum()
            written = by_id[answered["id"]]
            assert names[written.category_id] == (answered["category"], answered["isthing"])
            assert written.area == answered["area"]
        assert (ids > 0).sum() == sum(s["area"] for s in frame["segments"])


def test_vidserve_eval_reads_the_answer_as_it_comes(panoptic_server, video_file, answer, tmp_path):
    """The served video's ground truth (the synthetic world writes it) against the answer saved
    as JSON and as the zip: the same PQ either way (the tiny model's is low, not the point)."""
    generate_dataset(tmp_path / "gt", VIDEO_WORLD, 1, 4242, split="val")
    gt = tmp_path / "gt" / "panoptic" / "panoptic_val.json"
    (tmp_path / "answer.json").write_text(json.dumps(answer))
    zipped = segment(panoptic_server, video_file, headers={"Accept": "application/zip"})
    (tmp_path / "answer.zip").write_bytes(zipped.content)
    # `vidserve segment` in this process writes the same zip.
    local = CliRunner().invoke(
        app,
        ["segment", str(video_file), "--store", str(panoptic_server.store), "--model", MODEL]
        + ["--panoptic-out", str(tmp_path / "local.zip")],
    )
    assert local.exit_code == 0, local.output
    scores = []
    for pred in ("answer.json", "answer.zip", "local.zip"):
        out = tmp_path / f"{pred}.scores.json"
        args = ["eval", "--task", "panoptic", "--gt", str(gt), "--pred", str(tmp_path / pred)]
        result = CliRunner().invoke(app, [*args, "--json", str(out)])
        assert result.exit_code == 0, result.output
        scores.append(json.loads(out.read_text()))
    assert scores[0] == scores[1] == scores[2]
    assert 0.0 <= scores[0]["metrics"]["PQ"] <= 1.0


def test_a_prompt_is_refused_over_rest_and_grpc(panoptic_server, video_file):
    mask = encode_mask(np.ones((240, 320), dtype=bool))
    response = segment(panoptic_server, video_file, {"prompt_rle": json.dumps({"1": mask})})
    assert response.status_code == 400, response.text
    assert "takes no prompt" in response.json()["detail"]

    def requests():
        yield pb.StreamRequest(config=pb.SessionConfig(model=MODEL))
        prompt = pb.ObjectPrompt(object_id=1, mask=pb.Mask(size=[240, 320], counts=mask["counts"]))
        frame = np.zeros((240, 320, 3), dtype=np.uint8)
        yield pb.StreamRequest(frame=pb.ImageFrame(image=png(frame), prompts=[prompt]))

    channel = grpc.insecure_channel(panoptic_server.grpc_target)
    with channel, pytest.raises(grpc.RpcError) as refused:
        list(pb_grpc.VideoSegmentationStub(channel).StreamFrames(requests(), timeout=60))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "takes no prompt" in refused.value.details()


@pytest.mark.parametrize("accept", ["text/csv", "application/x-youtube-vis+json", "video/webm"])
def test_an_accept_it_cannot_give_is_406(panoptic_server, video_file, accept):
    response = segment(panoptic_server, video_file, headers={"Accept": accept})
    assert response.status_code == 406, response.text
    assert "panoptic model answers" in response.json()["detail"]


def test_an_accept_naming_json_among_others_gets_json(panoptic_server, video_file):
    headers = {"Accept": "text/csv, application/zip;q=0, application/json;q=0.5"}
    response = segment(panoptic_server, video_file, {"max_frames": "2"}, headers)
    assert response.status_code == 200, response.text
    assert len(response.json()["frames"]) == 2


def test_the_rendered_mp4_decodes_with_the_segments_drawn(panoptic_server, video_file):
    response = segment(panoptic_server, video_file, headers={"Accept": "video/mp4"})
    assert response.status_code == 200, response.text
    with av.open(io.BytesIO(response.content)) as container:
        drawn = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    with av.open(str(video_file)) as container:
        plain = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(drawn) == len(plain) == VIDEO_WORLD.frames
    assert drawn[0].shape == plain[0].shape
    difference = np.abs(drawn[0].astype(int) - plain[0].astype(int)).mean()
    assert difference > 5  # stuff tinted, things outlined: far beyond the codec's noise


def test_stuff_is_filled_and_things_are_outlined():
    """draw_segments on a grey frame: the stuff band tinted throughout, the thing's interior left
    as it was while its border takes its colour."""
    from service.gateway.render import category_colour, draw_segments

    image = np.full((60, 80, 3), 128, dtype=np.uint8)
    sky, disc = np.zeros((60, 80), dtype=bool), np.zeros((60, 80), dtype=bool)
    sky[:20] = True
    disc[30:50, 30:50] = True

    def segment(segment_id, category, isthing, mask):
        rle = Mask.model_validate(encode_mask(mask))
        area = int(mask.sum())
        return Segment(
            id=segment_id, category=category, isthing=isthing, score=0.9, area=area, mask=rle
        )

    drawn = draw_segments(image, [segment(1, "sky", False, sky), segment(2, "disc", True, disc)])
    tint = 0.45 * np.array(category_colour("sky")) + 0.55 * 128
    assert np.abs(drawn[:15].astype(float) - tint).max() <= 1  # (the label is below)
    assert (drawn[40, 40] == 128).all()  # inside the thing: untouched
    assert (drawn[45, 30] == id_colour(2)).all()  # its left edge: outlined in its colour
    assert (drawn[25, 5] == 128).all()  # void
