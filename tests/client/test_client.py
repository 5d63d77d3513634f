"""The Python client (clients/python) against a real `vidserve serve`: the shared server of
tests/conftest.py (`server`, `video_file`), over real REST and gRPC."""

import asyncio
import sys

import httpx
import numpy as np
import pytest
from PIL import Image
from vidserve_client import (
    AsyncClient,
    BadInput,
    Client,
    FrameResult,
    NotFound,
    SegmentResult,
    StreamSummary,
    VidserveError,
)

from models.data.davis import davis_palette
from models.data.rle import decode_rle
from models.data.synthetic.export import generate_video
from models.data.video import read_video
from service.schemas import SegmentResponse
from service.writers.davis import write_davis as server_write_davis
from service.writers.ytvis import ytvis_results as server_ytvis_results
from tests.service.conftest import VIDEO_WORLD
from tests.service.test_grpc import png
from tests.service.test_rest import assert_same_frames

LATER = 3  # the frame a second object is prompted on


@pytest.fixture(scope="module")
def client(server):
    with Client(server.url, grpc_target=server.grpc_target) as client:
        yield client


@pytest.fixture(scope="module")
def raw(server, video_file) -> dict:
    """The service's own JSON answer for the video, as curl gets it."""
    response = httpx.post(
        f"{server.url}/v1/segment",
        files={"video": ("v.mp4", video_file.read_bytes())},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def frames(video_file) -> np.ndarray:
    return read_video(video_file)[0]


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    """Object ids (T, H, W) of every frame of the `video_file` video."""
    return generate_video(VIDEO_WORLD, 4242, 0).object_map.astype(np.uint8)


def object_ids(truth: np.ndarray, t: int) -> list[int]:
    return [int(i) for i in np.unique(truth[t]) if i]


def assert_same_answer(mine: dict, theirs: dict) -> None:
    """The same JSON, key for key; scores, boxes and masks up to the float noise of another batch
    composition (tests/service/test_rest.py's rule)."""
    assert mine.keys() == theirs.keys()
    for key in ("model", "model_version", "width", "height", "fps", "stages", "actions"):
        assert mine[key] == theirs[key], key
    for a, b in zip(mine["frames"], theirs["frames"], strict=True):
        assert a.keys() == b.keys()
        assert {k: v for k, v in a.items() if k != "objects"} == {
            k: v for k, v in b.items() if k != "objects"
        }
        for oa, ob in zip(a["objects"], b["objects"], strict=True):
            assert oa.keys() == ob.keys() and oa["mask"]["size"] == ob["mask"]["size"]
    assert_same_frames(mine["frames"], theirs["frames"])
    assert [(t["track_id"], t["category"]) for t in mine["tracks"]] == [
        (t["track_id"], t["category"]) for t in theirs["tracks"]
    ]


def classes_of(client: Client, model: str) -> list[str]:
    return next(m for m in client.models() if m.name == model).classes


def masks_of(frame: FrameResult) -> dict[int, np.ndarray]:
    return {o.track_id: o.mask.to_numpy() for o in frame.objects}


# --- models and whole videos over REST -----------------------------------------------------------
def test_models_are_the_services(client, server):
    raw_models = httpx.get(f"{server.url}/v1/models").json()["models"]
    models = {m.name: m for m in client.models()}
    assert sorted(models) == sorted(m["name"] for m in raw_models)
    for expected in raw_models:
        got = models[expected["name"]]
        assert (got.task, got.version, got.classes, got.takes_prompt) == (
            expected["task"],
            expected["version"],
            expected["classes"],
            expected["takes_prompt"],
        )
        assert [s.to_dict() for s in got.stages] == expected["stages"]
    assert models["stcn"].takes_prompt and not models["masktrack"].takes_prompt


def test_a_result_reads_the_rest_json_losslessly(raw):
    result = SegmentResult.from_dict(raw)
    assert result.to_dict() == raw
    first = result.frames[0].objects[0]
    np.testing.assert_array_equal(
        first.mask.to_numpy(), decode_rle(raw["frames"][0]["objects"][0]["mask"]).astype(bool)
    )


@pytest.mark.parametrize("kind", ["path", "bytes", "file"])
def test_segment_gives_the_rest_json(client, video_file, raw, kind):
    with open(video_file, "rb") as file:
        video = {"path": video_file, "bytes": video_file.read_bytes(), "file": file}[kind]
        result = client.segment(video)
    assert isinstance(result, SegmentResult) and len(result.frames) == VIDEO_WORLD.frames
    assert sum(len(f.objects) for f in result.frames) > 0
    assert_same_answer(result.to_dict(), raw)
    assert result.classes == tuple(classes_of(client, "masktrack"))


def test_segment_options_reach_the_service(client, video_file):
    result = client.segment(video_file, "masktrack", max_frames=4, frame_stride=2)
    assert [f.frame_index for f in result.frames] == [0, 2, 4, 6]
    everything = client.segment(video_file, score_threshold=0.0, max_frames=2)
    strict = client.segment(video_file, score_threshold=0.99, max_frames=2)
    assert sum(len(f.objects) for f in everything.frames) > sum(
        len(f.objects) for f in strict.frames
    )


# --- streams over gRPC ---------------------------------------------------------------------------
def test_stream_yields_a_result_per_frame_as_rest_does(client, frames, raw):
    events = list(client.stream(list(frames), model="masktrack", summary=True))
    *results, summary = events
    assert all(isinstance(r, FrameResult) for r in results)
    assert [r.frame_index for r in results] == list(range(VIDEO_WORLD.frames))
    assert all(r.objects for r in results)
    streamed = [{**r.to_dict(), "time": None} for r in results]  # times are the client's
    assert_same_frames(streamed, [{**f, "time": None} for f in raw["frames"]])
    assert isinstance(summary, StreamSummary)
    assert [t.track_id for t in summary.tracks] == [t["track_id"] for t in raw["tracks"]]


def test_stcn_follows_numpy_mask_prompts_over_rest(client, video_file, truth):
    ids = object_ids(truth, 0)
    result = client.segment(video_file, "stcn", prompt={i: truth[0] == i for i in ids})
    assert result.model == "stcn" and len(result.frames) == VIDEO_WORLD.frames
    for object_id, mask in masks_of(result.frames[0]).items():  # the prompt comes back as given
        np.testing.assert_array_equal(mask, truth[0] == object_id)
    assert all(sorted(masks_of(f)) == ids for f in result.frames)
    later = client.segment(
        video_file, "stcn", prompt={ids[0]: truth[LATER] == ids[0]}, prompt_frame=LATER
    )
    assert all(f.objects == [] for f in later.frames[:LATER])
    assert all(sorted(masks_of(f)) == [ids[0]] for f in later.frames[LATER:])


def test_stcn_stream_takes_an_object_on_frame_0_and_another_on_frame_3(client, frames, truth):
    first, second = object_ids(truth, 0)[:2]
    prompts = {0: {first: truth[0] == first}, LATER: {second: truth[LATER] == second}}
    results = list(client.stream(frames, "stcn", prompts=prompts))
    assert [r.frame_index for r in results] == list(range(VIDEO_WORLD.frames))
    assert all(sorted(masks_of(r)) == [first] for r in results[:LATER])
    assert all(sorted(masks_of(r)) == [first, second] for r in results[LATER:])
    np.testing.assert_array_equal(masks_of(results[LATER])[second], truth[LATER] == second)
    np.testing.assert_array_equal(masks_of(results[0])[first], truth[0] == first)


# --- errors --------------------------------------------------------------------------------------
def test_an_unknown_model_is_not_found_over_rest_and_grpc(client, video_file, frames):
    with pytest.raises(NotFound) as rest:
        client.segment(video_file, model="nope")
    with pytest.raises(NotFound) as grpc_error:
        list(client.stream(frames[:2], model="nope"))
    for error in (rest.value, grpc_error.value):
        assert isinstance(error, VidserveError) and error.status == 404
        assert "'nope' is not served" in error.detail and error.request_id
    assert rest.value.title == "Unknown model" and grpc_error.value.grpc_code == "NOT_FOUND"


def test_bad_input_is_refused_as_bad_input(client, video_file, frames):
    with pytest.raises(BadInput) as threshold:
        client.segment(video_file, score_threshold=3.0)
    assert threshold.value.status == 400 and "score_threshold" in threshold.value.detail
    with pytest.raises(BadInput) as no_prompt:
        client.segment(video_file, "stcn")
    assert no_prompt.value.status == 400
    with pytest.raises(BadInput) as not_video:
        client.segment(b"not a video")
    assert not_video.value.status in (415, 422)
    with pytest.raises(BadInput) as not_image:
        list(client.stream([frames[0], b"nope"]))
    assert not_image.value.grpc_code == "INVALID_ARGUMENT"
    assert "not an encoded image" in not_image.value.detail
    square = square_mask(frames)
    with pytest.raises(ValueError, match=r"prompts for frames \[5\]"):
        list(client.stream(frames[:2], "stcn", prompts={0: {1: square}, 5: {2: square}}))
    with pytest.raises(ValueError, match="outside 1..255"):
        client.segment(video_file, "stcn", prompt={0: square})
    with pytest.raises(TypeError, match=r"\(H, W, 3\) uint8"):
        list(client.stream([frames[0], "frame.png"]))


def square_mask(frames: np.ndarray) -> np.ndarray:
    """A prompt mask of the video's size: a square in the middle."""
    mask = np.zeros(frames.shape[1:3], bool)
    mask[100:140, 140:180] = True
    return mask


# --- asyncio -------------------------------------------------------------------------------------
def test_async_client_segments_and_streams(server, video_file, frames, raw):
    async def run():
        async with AsyncClient(server.url, grpc_target=server.grpc_target) as client:
            result = await client.segment(video_file.read_bytes())
            encoded = [png(frame) for frame in frames]  # as a camera sends: encoded images
            events = [event async for event in client.stream(encoded, "masktrack")]
            with pytest.raises(NotFound):
                await client.segment(video_file, "nope")
            return result, events

    result, events = asyncio.run(run())
    assert_same_answer(result.to_dict(), raw)
    assert [e.frame_index for e in events] == list(range(VIDEO_WORLD.frames))
    assert_same_frames(
        [{**e.to_dict(), "time": None} for e in events],
        [{**f, "time": None} for f in raw["frames"]],
    )


# --- jobs ----------------------------------------------------------------------------------------
def test_jobs_submit_wait_and_cancel(client, video_file, raw):
    pytest.importorskip("service.gateway.jobs_api", reason="the service has no /v1/jobs yet")
    job = client.submit(video_file, "masktrack")
    assert job.status == "queued" and job.url == f"/v1/jobs/{job.id}"
    result = client.wait(job, timeout=120, poll_s=0.2)
    assert_same_answer(result.to_dict(), raw)
    done = client.job(job.id)
    assert done.status == "done" and done.progress == 1.0 and done.finished
    assert client.cancel(job) is None  # a finished job: deleted
    with pytest.raises(NotFound):
        client.job(job)
    with pytest.raises(NotFound):
        client.submit(video_file, "nope")


def test_a_cancelled_job_raises_its_error(client, video_file):
    pytest.importorskip("service.gateway.jobs_api", reason="the service has no /v1/jobs yet")
    job = client.submit(video_file, "masktrack")
    cancelled = client.cancel(job)
    if cancelled is None:  # it had finished already: deleted
        with pytest.raises(NotFound):
            client.wait(job)
    else:
        assert cancelled.status == "failed"
        with pytest.raises(VidserveError) as raised:
            client.wait(job)
        assert raised.value.status == 499 and raised.value.title == "Cancelled"
        client.cancel(job)


# --- conversions ---------------------------------------------------------------------------------
def test_ytvis_results_are_the_servers(client, raw):
    classes = classes_of(client, "masktrack")
    result = SegmentResult.from_dict(raw, classes)
    expected = server_ytvis_results(SegmentResponse.model_validate(raw), classes, video_id=7)
    assert result.to_ytvis(video_id=7) == expected
    assert len(expected) == len(raw["tracks"]) > 0


def test_davis_pngs_are_the_servers(client, video_file, truth, tmp_path):
    ids = object_ids(truth, 0)
    result = client.segment(video_file, "stcn", prompt={i: truth[0] == i for i in ids})
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    assert result.write_davis(mine) == VIDEO_WORLD.frames
    server_write_davis(SegmentResponse.model_validate(result.to_dict()), theirs)
    names = sorted(p.name for p in theirs.iterdir())
    assert sorted(p.name for p in mine.iterdir()) == names and names[0] == "00000.png"
    for name in names:
        with Image.open(mine / name) as a, Image.open(theirs / name) as b:
            assert a.mode == b.mode == "P" and a.size == b.size
            np.testing.assert_array_equal(np.array(a), np.array(b))
            assert a.getpalette() == b.getpalette() == davis_palette()
    with Image.open(mine / "00000.png") as first:
        expected = np.where(np.isin(truth[0], ids), truth[0], 0)
        np.testing.assert_array_equal(np.array(first), expected)


def test_frames_become_supervision_detections(client, raw):
    classes = classes_of(client, "masktrack")
    frame = SegmentResult.from_dict(raw, classes).frames[0]
    detections = frame.to_detections()
    objects = raw["frames"][0]["objects"]
    assert len(detections) == len(objects) > 0
    np.testing.assert_allclose(detections.xyxy, [o["box"] for o in objects], rtol=1e-6)
    np.testing.assert_array_equal(
        detections.mask, np.stack([decode_rle(o["mask"]).astype(bool) for o in objects])
    )
    assert detections.class_id.tolist() == [classes.index(o["category"]) for o in objects]
    assert detections.tracker_id.tolist() == [o["track_id"] for o in objects]
    np.testing.assert_allclose(detections.confidence, [o["score"] for o in objects], rtol=1e-6)
    assert detections.data["class_name"].tolist() == [o["category"] for o in objects]
    with pytest.raises(ValueError, match="pass classes="):
        SegmentResult.from_dict(raw).frames[0].to_detections()


def test_without_supervision_the_error_names_the_extra(raw, monkeypatch):
    monkeypatch.setitem(sys.modules, "supervision", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"vidserve-client\[supervision\]"):
        SegmentResult.from_dict(raw, ["disc"]).frames[0].to_detections()
