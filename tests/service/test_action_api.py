"""The action pipeline served for real (the shared `vidserve serve` on the shipped checkpoints:
masktrack -> the shipped SlowFast-ACRN head): listed with its stages and actions; REST JSON,
NDJSON and mp4; a gRPC stream's FRAME and ACTIONS events on the stream's own clock; bad options
refused with the field named, and the server still answering after them."""

import json

import av
import cv2
import grpc
import httpx
import numpy as np
import pytest

from models.data.synthetic.export import generate_video
from models.data.synthetic.world import WorldConfig
from models.data.video import write_mp4
from service.gateway.grpc_convert import event_from_proto
from service.gateway.grpc_gen import vidserve_pb2 as pb
from service.gateway.grpc_gen import vidserve_pb2_grpc as pb_grpc
from service.schemas import ActionsResult, FrameResult, SegmentResponse
from tests.action.serving_fixtures import ACTION_NAMES, BANK_NAME, NAME

WORLD = WorldConfig(width=320, height=240, frames=12, fps=8, max_objects=2)


@pytest.fixture(scope="module")
def action_server(server):
    """The shared `vidserve serve` (tests/conftest.py): the shipped checkpoints serve the
    pipeline `slowfast-acrn` (masktrack -> the shipped action head)."""
    return server


@pytest.fixture(scope="module")
def action_video(tmp_path_factory):
    video = generate_video(WORLD, 31, 0)
    path = tmp_path_factory.mktemp("videos") / "actors.mp4"
    write_mp4(path, video.frames, WORLD.fps)
    return path, video.frames


def post(server, path, data=None, headers=None) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/segment",
        data={"model": NAME, **(data or {})},
        files={"video": (path.name, path.read_bytes(), "video/mp4")},
        headers=headers or {},
        timeout=300,
    )


def test_listed_with_its_stages_and_actions(action_server):
    models = {m["name"]: m for m in httpx.get(f"{action_server.url}/v1/models").json()["models"]}
    action = models[NAME]
    assert action["task"] == "action"
    assert [s["name"] for s in action["stages"]] == ["masktrack", NAME]
    assert action["stages"][0]["version"] == models["masktrack"]["version"]
    assert action["actions"] == ACTION_NAMES
    assert action["classes"] == models["masktrack"]["classes"]
    assert models["masktrack"]["actions"] == []


def test_rest_json_labels_the_tracks_at_whole_seconds(action_server, action_video):
    path, _ = action_video
    response = post(action_server, path)
    assert response.status_code == 200, response.text
    answer = SegmentResponse.model_validate(response.json())
    assert [s.name for s in answer.stages] == ["masktrack", NAME]
    assert len(answer.frames) == WORLD.frames  # every frame's masks, actions or not
    # 12 frames at 8 fps: key frames at 0 s and 1 s (frame 8, answered at the end, padded).
    assert [a.key_frame for a in answer.actions] == [0, 8]
    assert [a.time for a in answer.actions] == [0.0, 1.0]
    for result in answer.actions:
        frame = answer.frames[result.key_frame]
        tracked = {o.track_id: o for o in frame.objects}
        assert result.tracks and {t.track_id for t in result.tracks} <= set(tracked)
        for track in result.tracks:
            assert sorted(a.label for a in track.actions) == sorted(ACTION_NAMES)
            assert tracked[track.track_id].actions == track.actions  # merged into the object
    unlabelled = [o for f in answer.frames if f.frame_index not in (0, 8) for o in f.objects]
    assert unlabelled and not any(o.actions for o in unlabelled)


def test_ndjson_sends_actions_as_events(action_server, action_video):
    path, _ = action_video
    response = post(
        action_server, path, {"action_stride": "0.5"}, {"Accept": "application/x-ndjson"}
    )
    assert response.status_code == 200, response.text
    events = [json.loads(line) for line in response.text.splitlines()]
    keys = [e["actions"]["key_frame"] for e in events if "actions" in e]
    assert keys == [0, 4, 8]
    frames = [e["frame"]["frame_index"] for e in events if "frame" in e]
    assert frames == list(range(WORLD.frames))


def test_the_mp4_shows_the_labels(action_server, action_video):
    path, frames = action_video
    response = post(action_server, path, headers={"Accept": "video/mp4"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "video/mp4"
    out = path.with_name("rendered.mp4")
    out.write_bytes(response.content)
    with av.open(str(out)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == WORLD.frames
    # Frames after a key frame carry its labels too: they differ from the plain frame there.
    assert np.abs(decoded[3].astype(int) - frames[3].astype(int)).mean() > 1


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"action_stride": "0"}, "action_stride"),
        ({"action_stride": "soon"}, "action_stride"),
        ({"action_categories": "person"}, "action_categories"),
        ({"action_min_score": "2"}, "action_min_score"),
        ({"model": "masktrack", "action_stride": "1"}, "action_stride"),
        ({"action_bank_window": "1"}, "action_bank_window"),  # this model has no bank
        ({"model": BANK_NAME, "action_bank_window": "60"}, "action_bank_window"),  # too long
        ({"model": BANK_NAME, "action_bank_window": "-1"}, "action_bank_window"),
    ],
)
def test_bad_action_options_are_400(action_server, action_video, data, field):
    path, _ = action_video
    response = post(action_server, path, data)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert field in response.json()["detail"]


def test_the_model_with_a_feature_bank_is_served_with_its_window(action_server, action_video):
    models = {m["name"]: m for m in httpx.get(f"{action_server.url}/v1/models").json()["models"]}
    assert [s["name"] for s in models[BANK_NAME]["stages"]] == ["masktrack", BANK_NAME]
    path, _ = action_video
    with_bank = post(action_server, path, {"model": BANK_NAME, "action_stride": "0.25"})
    without = post(
        action_server,
        path,
        {"model": BANK_NAME, "action_stride": "0.25", "action_bank_window": "0"},
    )
    assert with_bank.status_code == 200 and without.status_code == 200, with_bank.text
    scored = [SegmentResponse.model_validate(r.json()).actions for r in (with_bank, without)]
    assert [a.key_frame for a in scored[0]] == [0, 2, 4, 6, 8, 10]
    first = [[t.actions for t in a.tracks] for a in scored[0]]
    second = [[t.actions for t in a.tracks] for a in scored[1]]
    # Key frame 0 has no past, so the bank changes nothing there; later ones read it.
    assert first[0] == second[0] and first[1:] != second[1:]


def test_a_video_shorter_than_the_window_gets_actions(action_server, tmp_path):
    video = generate_video(WorldConfig(width=320, height=240, frames=3, fps=8), 31, 0)
    path = tmp_path / "short.mp4"
    write_mp4(path, video.frames, 8)
    answer = post(action_server, path).json()
    assert [a["key_frame"] for a in answer["actions"]] == [0]


def stream_requests(frames, config: pb.SessionConfig):
    yield pb.StreamRequest(config=config)
    for frame in frames:
        ok, png = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        yield pb.StreamRequest(frame=pb.ImageFrame(image=png.tobytes()))


def test_grpc_stream_actions_on_the_streams_clock(action_server, action_video):
    """Frames without `time` at the config's 16 fps: key frames every 0.5 s are frames 0 and 8,
    each answered once the frame 7 model frames (14 stream frames) after it is in; FRAME events
    never wait for them."""
    _, frames = action_video
    config = pb.SessionConfig(model=NAME, fps=16.0, action_stride=0.5)
    with grpc.insecure_channel(action_server.grpc_target) as channel:
        stub = pb_grpc.VideoSegmentationStub(channel)
        messages = list(stub.StreamFrames(stream_requests(frames, config), timeout=300))
        listed = stub.ListModels(pb.ListModelsRequest())
    events = [event_from_proto(m) for m in messages]
    order = [
        (type(e).__name__, getattr(e, "frame_index", getattr(e, "key_frame", None))) for e in events
    ]
    assert [k for kind, k in order if kind == "FrameResult"] == list(range(WORLD.frames))
    actions = [e for e in events if isinstance(e, ActionsResult)]
    assert [(a.key_frame, a.time) for a in actions] == [(0, 0.0), (8, 0.5)]
    # 12 frames reach 0.6875 s: neither look-ahead (0.875 s) is reached before the stream ends,
    # so both come after the last frame's masks.
    assert order.index(("ActionsResult", 0)) > order.index(("FrameResult", WORLD.frames - 1))
    assert list(next(m for m in listed.models if m.name == NAME).actions) == ACTION_NAMES
    assert all(isinstance(e, FrameResult | ActionsResult) for e in events)


def test_grpc_actions_arrive_before_the_stream_ends_when_the_look_ahead_is_reached(
    action_server, action_video
):
    _, frames = action_video
    config = pb.SessionConfig(model=NAME, fps=8.0)
    with grpc.insecure_channel(action_server.grpc_target) as channel:
        stub = pb_grpc.VideoSegmentationStub(channel)
        events = [
            event_from_proto(m)
            for m in stub.StreamFrames(stream_requests(frames, config), timeout=300)
        ]
    kinds = [
        (type(e).__name__, getattr(e, "frame_index", getattr(e, "key_frame", None))) for e in events
    ]
    # Key frame 0's clip ends at frame 7: its actions come after frame 7's masks, before 8's.
    assert kinds.index(("FrameResult", 7)) < kinds.index(("ActionsResult", 0))
    assert kinds.index(("ActionsResult", 0)) < kinds.index(("FrameResult", 8))


@pytest.mark.parametrize(
    "config",
    [
        pb.SessionConfig(model=NAME, action_stride=0.0),
        pb.SessionConfig(model=NAME, action_categories="person"),
        pb.SessionConfig(model=NAME, fps=0.0),
        pb.SessionConfig(model="masktrack", action_min_score=0.5),
        pb.SessionConfig(model=BANK_NAME, action_bank_window=60.0),
    ],
)
def test_grpc_bad_action_options_are_invalid_argument(action_server, action_video, config):
    _, frames = action_video
    with grpc.insecure_channel(action_server.grpc_target) as channel:
        stub = pb_grpc.VideoSegmentationStub(channel)
        with pytest.raises(grpc.RpcError) as error:
            list(stub.StreamFrames(stream_requests(frames[:2], config), timeout=120))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The server still answers a good stream after it.
    ok = pb.SessionConfig(model=NAME, fps=8.0)
    with grpc.insecure_channel(action_server.grpc_target) as channel:
        stub = pb_grpc.VideoSegmentationStub(channel)
        assert len(list(stub.StreamFrames(stream_requests(frames[:2], ok), timeout=120))) >= 2
