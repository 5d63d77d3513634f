"""Offered four times what the service admits: the excess is refused, every accepted request
completes, and the server's memory stays bounded."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from models.data.video import read_video
from service.gateway.grpc_gen import vidserve_pb2 as pb
from service.gateway.grpc_gen import vidserve_pb2_grpc as pb_grpc
from tests.service.conftest import MASKTRACK_ONLY, Server
from tests.service.test_grpc import png
from tests.service.test_rest import post

CAPACITY = 2  # sessions: 16 frames in flight, windows of 8
STORMS = 5
RSS_MARGIN = 256 * 1024 * 1024


@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    log = open(tmp_path_factory.mktemp("logs") / "server.log", "w")  # noqa: SIM115
    server = Server(
        env={
            "VIDSERVE_MAX_FRAMES_IN_FLIGHT": "16",
            "VIDSERVE_SESSION_WINDOW": "8",
            "VIDSERVE_RETRY_AFTER_S": "2",
            **MASKTRACK_ONLY,
        },
        log=log,
    )
    yield server
    server.stop()
    log.close()


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def test_rest_excess_gets_429_and_accepted_requests_complete(small_server, video_file):
    data = video_file.read_bytes()
    rss = []
    for _ in range(STORMS):
        with ThreadPoolExecutor(4 * CAPACITY) as pool:
            answers = list(
                pool.map(
                    lambda _: post(small_server, data, {"max_frames": "8"}), range(4 * CAPACITY)
                )
            )
        statuses = sorted(r.status_code for r in answers)
        assert set(statuses) <= {200, 429} and statuses.count(200) >= 1
        assert statuses.count(429) >= 1, "four times the capacity must be refused in part"
        for response in answers:
            if response.status_code == 429:
                assert response.headers["Retry-After"] == "2"
                assert response.headers["content-type"] == "application/problem+json"
            else:
                assert len(response.json()["frames"]) == 8
        rss.append(rss_bytes(small_server.process.pid))
    # Bounded: the later storms need little more memory than the first two left behind. The
    # margin allows for the allocator: with the 320x240 detector, RSS moved in one step of
    # 115 MB between two storms on CI, and by -30..+65 MB from storm to storm here, without a
    # trend. The 480x360 detector's activations are 2.25x as large and so are its steps: one
    # CI run climbed 176 MB from storm 2 to 5 (1178 -> 1354 MB, flat over the last two), and 12
    # storms here went 1167 -> 1243 by the 6th and then stayed within 1249-1253 MB. A leak that
    # grows by more than ~85 MB a storm fails within the last three.
    assert max(rss[2:]) < rss[1] + RSS_MARGIN, [r // 2**20 for r in rss]


def test_grpc_excess_gets_resource_exhausted(small_server, video_file):
    frames, _ = read_video(video_file, max_frames=6)

    async def one_stream():
        async with grpc.aio.insecure_channel(small_server.grpc_target) as channel:
            call = pb_grpc.VideoSegmentationStub(channel).StreamFrames()
            await call.write(pb.StreamRequest(config=pb.SessionConfig()))
            try:
                metadata = dict(await call.initial_metadata() or ())
                if "vidserve-session" not in metadata:  # refused before admission
                    trailing = dict(await call.trailing_metadata() or ())
                    return await call.code(), trailing.get("retry-after")
                for frame in frames:
                    await call.write(pb.StreamRequest(frame=pb.ImageFrame(image=png(frame))))
                await call.done_writing()
                results = [r async for r in call]
                return "ok", len(results)
            except grpc.aio.AioRpcError as e:
                return e.code(), dict(e.trailing_metadata() or ()).get("retry-after")

    async def storm():
        return await asyncio.gather(*(one_stream() for _ in range(4 * CAPACITY)))

    outcomes = asyncio.run(storm())
    accepted = [o for o in outcomes if o[0] == "ok"]
    refused = [o for o in outcomes if o[0] != "ok"]
    assert accepted and all(n == len(frames) for _, n in accepted)
    assert refused and all(o == (grpc.StatusCode.RESOURCE_EXHAUSTED, "2") for o in refused)
