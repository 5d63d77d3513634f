"""A clip-level model with a look-ahead of 16 frames behind a session window of 8, served for real
(in-process and through Redis), over REST JSON, NDJSON and gRPC: every key frame's result and
actions arrive, late and sparse, and none is dropped at close."""

import json
import os
import subprocess
import sys
import time

import cv2
import grpc
import httpx
import pytest

from models.data.synthetic.export import generate_video
from models.data.synthetic.world import WorldConfig
from models.data.video import write_mp4
from service.gateway.grpc_convert import event_from_proto
from service.gateway.grpc_gen import vidserve_pb2 as pb
from service.gateway.grpc_gen import vidserve_pb2_grpc as pb_grpc
from service.gateway.video_input import VideoLimits, iter_frames, probe_video
from service.schemas import ActionsResult, FrameResult, TrackSummary
from service.settings import SHIPPED_CHECKPOINTS
from tests.service.clip_plugin import HALF, KEY_EVERY
from tests.service.conftest import ROOT, Server

PLUGIN_ENV = {"VIDSERVE_PLUGINS": "tests.service.clip_plugin", "VIDSERVE_SESSION_WINDOW": "8"}
WORLD = WorldConfig(width=160, height=120, frames=30, fps=8, max_objects=2)
FRAMES = 30


@pytest.fixture(scope="module")
def clip_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("videos") / "clip.mp4"
    write_mp4(path, generate_video(WORLD, 77, 0).frames, WORLD.fps)
    probe = probe_video(path, VideoLimits(100, 1000, 1000))
    decoded = [
        f.image for f in iter_frames(path, probe, VideoLimits(100, 1000, 1000), 1, 100, False)
    ]
    assert len(decoded) == FRAMES
    return path, decoded


def expected(decoded) -> dict[int, tuple[float, int]]:
    means = [float(f.mean()) / 255.0 for f in decoded]
    out = {}
    for key in range(0, len(means), KEY_EVERY):
        window = [m for i, m in enumerate(means) if key - HALF <= i <= key + HALF]
        out[key] = (sum(window) / len(window), len(window))
    return out


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    log = open(tmp_path_factory.mktemp("logs") / "clip-server.log", "w")  # noqa: SIM115
    server = Server(env=PLUGIN_ENV, log=log)
    yield server
    server.stop()
    log.close()


@pytest.fixture(scope="module")
def through_redis(tmp_path_factory, redis_server):
    url = redis_server.url(5)
    log = open(tmp_path_factory.mktemp("logs") / "clip-redis.log", "w")  # noqa: SIM115
    worker = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "worker", "--redis-url", url]
        + ["--store", str(SHIPPED_CHECKPOINTS)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **PLUGIN_ENV},
    )
    gateway = None
    try:
        gateway = Server(extra_args=["--redis-url", url], env=PLUGIN_ENV, log=log)
        deadline = time.monotonic() + 120
        while "clip-mean" not in httpx.get(f"{gateway.url}/v1/models").text:
            assert time.monotonic() < deadline, "the worker did not come up"
            time.sleep(0.3)
        yield gateway
    finally:
        worker.kill()
        worker.wait()
        if gateway is not None:
            gateway.stop()
        log.close()


# Frames cross Redis losslessly encoded (service.queue.redis_streams): the same means either way.
TOLERANCE = {"embedded": 1e-6, "redis": 1e-6}


@pytest.fixture(params=["embedded", "redis"])
def served(request):
    return request.param, request.getfixturevalue(
        "embedded" if request.param == "embedded" else "through_redis"
    )


def check_key_frames(frames: dict[int, FrameResult], actions: dict[int, ActionsResult], want, tol):
    assert sorted(frames) == sorted(want), "a key frame's result is missing (or extra)"
    assert sorted(actions) == sorted(want), "a key frame's actions are missing (or extra)"
    for key, (value, count) in want.items():
        assert frames[key].objects[0].score == pytest.approx(value, abs=tol)
        [label] = actions[key].tracks[0].actions
        assert label.label == f"mean@{count}" and label.key_frame == key
        assert label.score == pytest.approx(value, abs=tol)


def test_rest_json_and_ndjson(served, clip_video):
    kind, server = served
    path, decoded = clip_video
    want = expected(decoded)
    files = {"video": ("clip.mp4", path.read_bytes(), "video/mp4")}
    answer = httpx.post(
        f"{server.url}/v1/segment", data={"model": "clip-mean"}, files=files, timeout=120
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    frames = {f["frame_index"]: FrameResult.model_validate(f) for f in body["frames"]}
    # JSON merges each key frame's actions into that frame's objects.
    merged = {
        k: ActionsResult(
            key_frame=k,
            time=f.time,
            tracks=[{"track_id": o.track_id, "actions": o.actions} for o in f.objects],
            model=f.model,
            model_version=f.model_version,
        )
        for k, f in frames.items()
    }
    check_key_frames(frames, merged, want, TOLERANCE[kind])

    lines = httpx.post(
        f"{server.url}/v1/segment",
        data={"model": "clip-mean"},
        files=files,
        headers={"Accept": "application/x-ndjson"},
        timeout=120,
    ).text.splitlines()
    parsed = [json.loads(line) for line in lines]
    assert "summary" in parsed[-1]
    frames = {e["frame"]["frame_index"]: FrameResult(**e["frame"]) for e in parsed if "frame" in e}
    actions = {
        e["actions"]["key_frame"]: ActionsResult(**e["actions"]) for e in parsed if "actions" in e
    }
    check_key_frames(frames, actions, want, TOLERANCE[kind])


def test_grpc_stream_events(served, clip_video):
    kind, server = served
    _, decoded = clip_video
    want = expected(decoded)

    def requests():
        yield pb.StreamRequest(config=pb.SessionConfig(model="clip-mean", summary=True))
        for frame in decoded:
            ok, png = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            yield pb.StreamRequest(frame=pb.ImageFrame(image=png.tobytes()))

    with grpc.insecure_channel(server.grpc_target) as channel:
        events = [
            event_from_proto(m)
            for m in pb_grpc.VideoSegmentationStub(channel).StreamFrames(requests(), timeout=120)
        ]
    frames = {e.frame_index: e for e in events if isinstance(e, FrameResult)}
    actions = {e.key_frame: e for e in events if isinstance(e, ActionsResult)}
    check_key_frames(frames, actions, want, TOLERANCE[kind])
    summary = events[-1]
    assert isinstance(summary, list) and all(isinstance(t, TrackSummary) for t in summary)
    assert [t.num_frames for t in summary] == [len(want)]
