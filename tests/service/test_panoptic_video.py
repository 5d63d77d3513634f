"""Video panoptic (`<name>-video`) through a real `vidserve serve` on the tiny random MaskFormer of
test_panoptic_serving: the things carry track ids from the VIS tracker, stuff none; a static
scene keeps its ids; the per-frame name carries none; prompts are refused. And the step from a
frame's things to the tracker's detections (boxes from masks)."""

import json

import grpc
import httpx
import numpy as np
import pytest
import torch

from models.data.rle import encode_mask
from models.panoptic.inference import PanopticSegment, segment_frames
from service.gateway.grpc_convert import frame_from_proto
from service.gateway.grpc_gen import vidserve_pb2 as pb
from service.gateway.grpc_gen import vidserve_pb2_grpc as pb_grpc
from service.worker.runners.panoptic import thing_detections
from tests.service.conftest import VIDEO_WORLD
from tests.service.panoptic_fixtures import MODEL, THINGS, tiny_maskformer
from tests.service.test_grpc import png

VIDEO = f"{MODEL}-video"


def segment(server, video_file, model: str, data=None) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/segment",
        files={"video": ("v.mp4", video_file.read_bytes())},
        data={"model": model, **(data or {})},
        timeout=120,
    )


@pytest.fixture(scope="module")
def tracked(panoptic_server, video_file) -> dict:
    response = segment(panoptic_server, video_file, VIDEO)
    assert response.status_code == 200, response.text
    return response.json()


def test_both_names_are_listed_with_task_panoptic(panoptic_server):
    listed = httpx.get(f"{panoptic_server.url}/v1/models").json()["models"]
    assert sorted((m["name"], m["task"]) for m in listed) == [
        (MODEL, "panoptic"),
        (VIDEO, "panoptic"),
    ]


def test_things_carry_track_ids_and_stuff_none(tracked):
    assert [f["frame_index"] for f in tracked["frames"]] == list(range(VIDEO_WORLD.frames))
    things = [s for f in tracked["frames"] for s in f["segments"] if s["isthing"]]
    stuff = [s for f in tracked["frames"] for s in f["segments"] if not s["isthing"]]
    assert things and stuff, "the tiny model should answer things and stuff"
    assert all(isinstance(s["track_id"], int) for s in things)
    assert all(s["track_id"] is None for s in stuff)
    for frame in tracked["frames"]:  # one thing per track on a frame
        ids = [s["track_id"] for s in frame["segments"] if s["isthing"]]
        assert len(ids) == len(set(ids)), frame["frame_index"]
    # The video's track summaries are those of the tracked things.
    summaries = {t["track_id"]: t for t in tracked["tracks"]}
    assert set(summaries) == {s["track_id"] for s in things}
    for track_id, summary in summaries.items():
        frames = [
            f["frame_index"]
            for f in tracked["frames"]
            for s in f["segments"]
            if s["track_id"] == track_id
        ]
        assert (summary["first_frame"], summary["num_frames"]) == (frames[0], len(frames))
        assert summary["category"] in THINGS


def test_the_per_frame_name_answers_the_same_segments_without_track_ids(
    panoptic_server, video_file, tracked
):
    # the video name's default threshold (VideoPanopticRunner), asked of the per-frame name
    response = segment(panoptic_server, video_file, MODEL, {"score_threshold": "0.8"})
    assert response.status_code == 200, response.text
    plain = response.json()
    assert plain["tracks"] == []
    for frame, tracked_frame in zip(plain["frames"], tracked["frames"], strict=True):
        assert all(s["track_id"] is None for s in frame["segments"])
        # One forward serves both (batches may differ in size: compare what cannot drift).
        assert [(s["id"], s["category"], s["isthing"]) for s in frame["segments"]] == [
            (s["id"], s["category"], s["isthing"]) for s in tracked_frame["segments"]
        ]


def test_the_video_name_leaves_out_segments_under_0_8_unless_asked(
    panoptic_server, video_file, tracked
):
    plain = segment(panoptic_server, video_file, MODEL).json()
    scores = [s["score"] for f in plain["frames"] for s in f["segments"]]
    assert min(scores) < 0.8 <= max(scores), "the tiny model should score on both sides of 0.8"
    assert all(s["score"] >= 0.8 for f in tracked["frames"] for s in f["segments"])
    every = segment(panoptic_server, video_file, VIDEO, {"score_threshold": "0"}).json()
    for frame, plain_frame in zip(every["frames"], plain["frames"], strict=True):
        assert [(s["id"], s["category"]) for s in frame["segments"]] == [
            (s["id"], s["category"]) for s in plain_frame["segments"]
        ]


def test_a_static_scene_keeps_every_things_id(panoptic_server, video_file):
    """The same frame six times (PNG over a gRPC stream: no codec noise): every thing keeps the
    id it got on the first frame."""
    from models.data.video import read_video

    frames, _ = read_video(video_file)
    answers = stream(panoptic_server, [frames[3]] * 6)
    first = {s.id: s.track_id for s in answers[0].segments if s.isthing}
    assert first, "the tiny model should answer things on this frame"
    assert sorted(first.values()) == list(range(len(first)))
    for answer in answers[1:]:
        assert {s.id: s.track_id for s in answer.segments if s.isthing} == first
    assert all(s.track_id is None for a in answers for s in a.segments if not s.isthing)


def stream(server, frames: list[np.ndarray]) -> list:
    def requests():
        yield pb.StreamRequest(config=pb.SessionConfig(model=VIDEO))
        for index, frame in enumerate(frames):
            yield pb.StreamRequest(frame=pb.ImageFrame(image=png(frame), frame_index=index))

    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.VideoSegmentationStub(channel)
        return [frame_from_proto(m) for m in stub.StreamFrames(requests(), timeout=60)]


def test_a_prompt_is_refused(panoptic_server, video_file):
    mask = encode_mask(np.ones((240, 320), dtype=bool))
    data = {"prompt_rle": json.dumps({"1": mask})}
    response = segment(panoptic_server, video_file, VIDEO, data)
    assert response.status_code == 400, response.text
    assert "takes no prompt" in response.json()["detail"]


def test_things_become_detections_boxed_around_their_masks():
    ids = torch.zeros((8, 10), dtype=torch.int32)
    ids[2:5, 3:7] = 1  # a thing: rows 2..4, columns 3..6
    ids[6, 9] = 2  # a one-pixel thing
    ids[0, :] = 3  # stuff: not given
    unit = torch.tensor([0.6, 0.8])
    things = [
        PanopticSegment(1, 4, True, 0.9, 12, embedding=unit),
        PanopticSegment(2, 0, True, 0.7, 1, embedding=None),
    ]
    detections = thing_detections(ids, things, temperature=4.0)
    assert detections.boxes.tolist() == [[3.0, 2.0, 7.0, 5.0], [9.0, 6.0, 10.0, 7.0]]
    assert detections.labels.tolist() == [4, 0]
    assert detections.scores.tolist() == pytest.approx([0.9, 0.7])
    assert torch.equal(detections.masks[0], ids == 1) and torch.equal(detections.masks[1], ids == 2)
    # Scaled by sqrt(4): dot products are 4 x the cosine; a segment without one gets zeros.
    torch.testing.assert_close(detections.embeddings, torch.tensor([[1.2, 1.6], [0.0, 0.0]]))
    assert detections.image_size == (8, 10)
    empty = thing_detections(ids, [])
    assert len(empty) == 0 and empty.masks.shape == (0, 8, 10)


def test_segments_carry_unit_query_embeddings():
    model, config = tiny_maskformer()
    frame = np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    (prediction,) = segment_frames(model, [frame])
    assert prediction.segments
    for s in prediction.segments:
        assert s.embedding.shape == (config.hidden_dim,)
        assert float(s.embedding.norm()) == pytest.approx(1.0, abs=1e-5)
