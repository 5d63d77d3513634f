"""A client that goes away mid-video cancels the frames not yet sent to the worker."""

import asyncio
import re
import socket
import time

import grpc
import httpx
import pytest

from models.data.synthetic.export import generate_video
from models.data.synthetic.world import WorldConfig
from models.data.video import read_video, write_mp4
from service.gateway.grpc_gen import vidserve_pb2 as pb
from service.gateway.grpc_gen import vidserve_pb2_grpc as pb_grpc
from tests.service.test_grpc import png

FRAMES = 40
WINDOW = 8  # VIDSERVE_SESSION_WINDOW's default: at most this many frames are with the worker


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    world = WorldConfig(width=320, height=240, frames=FRAMES, fps=8)
    path = tmp_path_factory.mktemp("videos") / "long.mp4"
    write_mp4(path, generate_video(world, 7, 0).frames, world.fps)
    return path


def frames_answered(server) -> float:
    text = server.metric('vidserve_frames_total{model="masktrack"}')
    match = re.search(r" (\S+)$", text)
    return float(match.group(1)) if match else 0.0


def settle(server, timeout=20.0) -> float:
    """The answered-frames count once it stops moving."""
    last, deadline = frames_answered(server), time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = frames_answered(server)
        if now == last:
            return now
        last = now
    return last


def test_rest_stream_closed_early_stops_the_session(server, long_video):
    before = settle(server)
    with httpx.stream(
        "POST",
        f"{server.url}/v1/segment",
        timeout=120,
        files={"video": ("v.mp4", long_video.read_bytes())},
        headers={"Accept": "application/x-ndjson"},
    ) as response:
        lines = response.iter_lines()
        assert '"frame"' in next(lines)
    done = settle(server) - before
    assert done < FRAMES - WINDOW, f"{done} of {FRAMES} frames were still processed"


def test_grpc_stream_cancelled_stops_the_session(server, long_video):
    frames, _ = read_video(long_video)
    before = settle(server)

    async def cancel_after_two():
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            call = pb_grpc.VideoSegmentationStub(channel).StreamFrames()
            await call.write(pb.StreamRequest(config=pb.SessionConfig()))

            async def send():
                for frame in frames:
                    await call.write(pb.StreamRequest(frame=pb.ImageFrame(image=png(frame))))

            sender = asyncio.create_task(send())
            for _ in range(2):
                await call.read()
            call.cancel()
            sender.cancel()

    asyncio.run(cancel_after_two())
    done = settle(server) - before
    assert done < FRAMES - WINDOW, f"{done} of {FRAMES} frames were still processed"


def test_rest_json_client_hanging_up_stops_the_session(server, long_video):
    """A client waiting for the whole JSON answer hangs up a few frames in: its session stops
    (what is answered after it left is at most what was already with the worker, a window)."""
    before = settle(server)
    request = httpx.Request(
        "POST", f"{server.url}/v1/segment", files={"video": ("v.mp4", long_video.read_bytes())}
    )
    head = f"POST /v1/segment HTTP/1.1\r\nHost: {server.url[7:]}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in request.headers.items() if k.lower() != "host"
    )
    with socket.create_connection(("127.0.0.1", server.port)) as client:
        client.sendall(head.encode() + b"\r\n" + request.read())
        deadline = time.monotonic() + 60
        while frames_answered(server) - before < 4:  # the session is under way
            assert time.monotonic() < deadline, "no frame was answered"
            time.sleep(0.02)
        at_hangup = frames_answered(server) - before
    done = settle(server) - before
    assert done <= at_hangup + WINDOW + 1, f"{done} of {FRAMES} frames were still processed"
    assert done < FRAMES - WINDOW
