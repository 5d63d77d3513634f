"""gRPC against a real `vidserve serve` process over a real channel."""

import asyncio
import re
import struct
from pathlib import Path

import cv2
import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from models.data.video import read_video
from service.gateway.grpc_convert import frame_from_proto as from_proto
from service.gateway.grpc_gen import vidserve_pb2 as pb
from service.gateway.grpc_gen import vidserve_pb2_grpc as pb_grpc
from tests.service.test_rest import LOW, assert_same_frames, post

THRESHOLD = float(LOW["score_threshold"])


def png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image[..., ::-1])[1].tobytes()


def stream_requests(frames, model="", first=None):
    yield first or pb.StreamRequest(config=pb.SessionConfig(model=model, score_threshold=THRESHOLD))
    for index, frame in enumerate(frames):
        yield pb.StreamRequest(
            frame=pb.ImageFrame(image=png(frame), frame_index=index, time=index / 8)
        )


async def run_stream(target, frames, **kwargs) -> list[dict]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.VideoSegmentationStub(channel)
        results = []
        async for message in stub.StreamFrames(stream_requests(frames, **kwargs)):
            results.append(from_proto(message).model_dump(mode="json"))
        return results


def test_stream_gives_the_rest_results(server, video_file):
    frames, _ = read_video(video_file)
    rest = post(server, video_file.read_bytes(), LOW).json()["frames"]
    streamed = asyncio.run(run_stream(server.grpc_target, frames))
    for frame in rest:  # the stream's times are the client's; compare the rest
        frame["time"] = None
    for frame in streamed:
        frame["time"] = None
    assert_same_frames(streamed, rest)


def batch_sizes_above_one(server) -> float:
    """How many forward passes so far took more than one frame (from the histogram)."""
    text = server.metric("vidserve_batch_size")
    count = float(re.search(r"vidserve_batch_size_count (\S+)", text).group(1))
    ones = float(re.search(r'vidserve_batch_size_bucket\{le="1.0"\} (\S+)', text).group(1))
    return count - ones


def test_ten_streams_are_batched_and_each_gets_its_own_results(
    server, video_file, other_video_file
):
    videos = [read_video(video_file)[0][:6], read_video(other_video_file)[0][:6]]
    alone = [asyncio.run(run_stream(server.grpc_target, v)) for v in videos]
    before = batch_sizes_above_one(server)

    async def ten():
        return await asyncio.gather(
            *(run_stream(server.grpc_target, videos[k % 2]) for k in range(10))
        )

    together = asyncio.run(ten())
    assert batch_sizes_above_one(server) > before, "no forward pass took frames of two streams"
    for k, results in enumerate(together):
        assert [r["frame_index"] for r in results] == list(range(6))
        assert_same_frames(results, alone[k % 2])


def test_segment_video_in_chunks(server, video_file):
    data = video_file.read_bytes()

    def chunks():
        yield pb.VideoChunk(
            config=pb.VideoConfig(session=pb.SessionConfig(score_threshold=THRESHOLD), max_frames=4)
        )
        for start in range(0, len(data), 16 * 1024):
            yield pb.VideoChunk(data=data[start : start + 16 * 1024])

    with grpc.insecure_channel(server.grpc_target) as channel:
        response = pb_grpc.VideoSegmentationStub(channel).SegmentVideo(chunks())
    rest = post(server, data, {**LOW, "max_frames": "4"}).json()
    assert (response.width, response.height, len(response.frames)) == (320, 240, 4)
    assert_same_frames(
        [from_proto(f).model_dump(mode="json") for f in response.frames], rest["frames"]
    )


def test_list_models_health_and_reflection(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        models = pb_grpc.VideoSegmentationStub(channel).ListModels(pb.ListModelsRequest())
        assert "masktrack" in [m.name for m in models.models]
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="vidserve.v1.VideoSegmentation")
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        answer = next(
            reflect.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
        )
        names = [s.name for s in answer.list_services_response.service]
        assert "vidserve.v1.VideoSegmentation" in names and "grpc.health.v1.Health" in names


def call_stream(server, requests):
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.VideoSegmentationStub(channel)
        return list(stub.StreamFrames(iter(requests), timeout=60))


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real 8x8 JPEG (a few hundred bytes) whose frame header claims another size."""
    data = bytearray(cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    sof = data.index(b"\xff\xc0")  # baseline frame header: length, precision, height, width
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def test_an_image_bomb_costs_nothing_and_delays_no_one(server, video_file):
    """A JPEG of a few hundred bytes claiming 16000x16000 is refused from its header: the
    server's memory does not move, and a stream beside it goes on."""
    frames, _ = read_video(video_file, max_frames=6)
    bomb = jpeg_claiming(16000, 16000)
    assert len(bomb) < 1000
    config = pb.StreamRequest(config=pb.SessionConfig())
    before = rss_bytes(server.process.pid)
    for _ in range(5):
        with pytest.raises(grpc.RpcError) as raised:
            call_stream(server, [config, pb.StreamRequest(frame=pb.ImageFrame(image=bomb))])
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rss_bytes(server.process.pid) - before < 50 * 1024 * 1024
    results = call_stream(server, [config] + [frame_request(f, i) for i, f in enumerate(frames)])
    assert [r.frame_index for r in results] == list(range(6))


def frame_request(image: np.ndarray, index: int):
    return pb.StreamRequest(frame=pb.ImageFrame(image=png(image), frame_index=index))


@pytest.mark.parametrize(
    "case, code, words",
    [
        ("first_not_config", grpc.StatusCode.INVALID_ARGUMENT, "first message"),
        ("not_an_image", grpc.StatusCode.INVALID_ARGUMENT, "not an encoded image"),
        ("size_changes", grpc.StatusCode.INVALID_ARGUMENT, "the first was 320x240"),
        ("second_config", grpc.StatusCode.INVALID_ARGUMENT, "only the first message"),
        ("unknown_model", grpc.StatusCode.NOT_FOUND, "not served"),
        ("bad_threshold", grpc.StatusCode.INVALID_ARGUMENT, "score_threshold"),
        ("index_repeated", grpc.StatusCode.INVALID_ARGUMENT, "indices must increase"),
        ("index_going_back", grpc.StatusCode.INVALID_ARGUMENT, "frame_index 0 follows 1"),
        ("jpeg_claiming_16000x16000", grpc.StatusCode.INVALID_ARGUMENT, "16000x16000"),
    ],
)
def test_bad_stream_input(server, video_file, case, code, words):
    frames, _ = read_video(video_file, max_frames=3)
    config = pb.StreamRequest(config=pb.SessionConfig())
    cases = {
        "first_not_config": [frame_request(frames[0], 0)],
        "not_an_image": [
            config,
            frame_request(frames[0], 0),
            pb.StreamRequest(frame=pb.ImageFrame(image=b"nope", frame_index=1)),
        ],
        "size_changes": [
            config,
            frame_request(frames[0], 0),
            frame_request(frames[1][:120, :160], 1),
        ],
        "second_config": [config, frame_request(frames[0], 0), config],
        "unknown_model": [pb.StreamRequest(config=pb.SessionConfig(model="nope"))],
        "bad_threshold": [pb.StreamRequest(config=pb.SessionConfig(score_threshold=3.0))],
        "index_repeated": [config, frame_request(frames[0], 0), frame_request(frames[1], 0)],
        "index_going_back": [config, frame_request(frames[0], 1), frame_request(frames[1], 0)],
        "jpeg_claiming_16000x16000": [
            config,
            pb.StreamRequest(frame=pb.ImageFrame(image=jpeg_claiming(16000, 16000))),
        ],
    }
    with pytest.raises(grpc.RpcError) as raised:
        call_stream(server, cases[case])
    assert raised.value.code() == code
    assert words in raised.value.details()


def test_bad_streams_leave_the_service_working(server, video_file):
    frames, _ = read_video(video_file, max_frames=2)
    for _ in range(3):
        with pytest.raises(grpc.RpcError):
            call_stream(
                server,
                [
                    pb.StreamRequest(config=pb.SessionConfig()),
                    pb.StreamRequest(frame=pb.ImageFrame(image=b"x")),
                ],
            )
    results = call_stream(
        server,
        [
            pb.StreamRequest(config=pb.SessionConfig()),
            frame_request(frames[0], 0),
            frame_request(frames[1], 1),
        ],
    )
    assert [r.frame_index for r in results] == [0, 1]
    assert httpx.get(f"{server.url}/readyz").status_code == 200
