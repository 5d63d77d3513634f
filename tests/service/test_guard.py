"""What a request passes before any work, against a real `vidserve serve`: API keys (REST and
gRPC), request ids (echoed and in the log), and the limits found before the body or a frame is
read: a declared Content-Length over the limit, a video whose header says it is too long, and a
client that sends its body too slowly."""

import asyncio
import re
import socket
import time

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.gateway.grpc_gen import vidserve_pb2 as pb
from service.gateway.grpc_gen import vidserve_pb2_grpc as pb_grpc
from tests.service.conftest import MASKTRACK_ONLY, Server

KEY = "s3cret-key"
OTHER_KEY = "another-key"
MAX_UPLOAD = 1024 * 1024
MAX_FRAMES = 5  # the test video has 10
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    log_path = tmp_path_factory.mktemp("logs") / "server.log"
    with open(log_path, "w") as log:
        srv = Server(
            env={
                "VIDSERVE_API_KEYS": f"{KEY}, {OTHER_KEY}",
                "VIDSERVE_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
                "VIDSERVE_MAX_VIDEO_FRAMES": str(MAX_FRAMES),
                "VIDSERVE_BODY_TIMEOUT_S": "1",
                "VIDSERVE_BODY_DEADLINE_S": "3",
                **MASKTRACK_ONLY,
            },
            log=log,
        )
        srv.log_path = log_path
        yield srv
        srv.stop()


def segment(server, video: bytes, headers=None, data=None, timeout=60) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/segment",
        files={"video": ("v.mp4", video, "video/mp4")},
        data=data or {},
        headers=headers or {},
        timeout=timeout,
    )


def frames_total(server) -> float:
    text = server.metric("vidserve_frames_total")
    return sum(float(line.split()[-1]) for line in text.splitlines() if "{" in line)


# --- API keys -----------------------------------------------------------------------------------
def test_a_request_without_a_key_is_refused_before_any_work(guarded, video_file):
    before = frames_total(guarded)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}):
        answer = segment(guarded, video_file.read_bytes(), headers)
        assert answer.status_code == 401, headers
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert answer.json()["status"] == 401
    assert httpx.get(f"{guarded.url}/v1/models").status_code == 401
    assert frames_total(guarded) == before


def test_either_key_in_either_header_is_let_in(guarded):
    for headers in (AUTH, {"X-API-Key": OTHER_KEY}, {"authorization": f"bearer {OTHER_KEY}"}):
        assert httpx.get(f"{guarded.url}/v1/models", headers=headers).status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"])
def test_probes_metrics_and_docs_stay_open(guarded, path):
    assert httpx.get(f"{guarded.url}{path}").status_code == 200


def test_grpc_needs_the_key_but_health_does_not(guarded):
    async def run():
        async with grpc.aio.insecure_channel(guarded.grpc_target) as channel:
            stub = pb_grpc.VideoSegmentationStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ListModels(pb.ListModelsRequest())
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as wrong:
                await stub.ListModels(
                    pb.ListModelsRequest(), metadata=(("authorization", "Bearer nope"),)
                )
            assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # Refused before the handler reads a message (the client has sent none yet).
            streamed = stub.StreamFrames()
            assert await streamed.code() == grpc.StatusCode.UNAUTHENTICATED

            for metadata in ((("authorization", f"Bearer {KEY}"),), (("x-api-key", OTHER_KEY),)):
                listed = await stub.ListModels(pb.ListModelsRequest(), metadata=metadata)
                assert listed.models
            health = health_pb2_grpc.HealthStub(channel)
            answer = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING

    asyncio.run(run())


# --- request ids --------------------------------------------------------------------------------
def test_the_request_id_is_echoed_or_made_and_in_the_log(guarded, video_file):
    given = segment(
        guarded,
        video_file.read_bytes(),
        {**AUTH, "X-Request-ID": "client-id-42"},
        {"max_frames": "3"},
    )
    assert given.status_code == 200
    assert given.headers["x-request-id"] == "client-id-42"
    made = httpx.get(f"{guarded.url}/v1/models", headers=AUTH).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    for insane in ("x" * 200, "has space", 'quote"d'):
        echoed = httpx.get(
            f"{guarded.url}/v1/models", headers={**AUTH, "X-Request-ID": insane}
        ).headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", echoed), insane
    refused = httpx.get(f"{guarded.url}/v1/models", headers={"X-Request-ID": "refused-1"})
    assert refused.status_code == 401 and refused.headers["x-request-id"] == "refused-1"
    time.sleep(0.5)
    lines = [line for line in guarded.log_path.read_text().splitlines() if "client-id-42" in line]
    assert any("POST /v1/segment" in line for line in lines), lines  # the access log
    assert any(re.search(r"session \S+ opened: model", line) for line in lines), lines
    # The worker's lines of the session carry it too (it came with the session's messages).
    worker_lines = [line for line in lines if "service.worker.worker" in line]
    assert any(re.search(r"session \S+ on masktrack ", line) for line in worker_lines), lines
    assert any(re.search(r"session \S+ ended", line) for line in worker_lines), lines


def test_grpc_sends_the_request_id_back(guarded, video_file):
    async def run():
        async with grpc.aio.insecure_channel(guarded.grpc_target) as channel:
            stub = pb_grpc.VideoSegmentationStub(channel)
            metadata = (("authorization", f"Bearer {KEY}"), ("x-request-id", "grpc-id-7"))
            call = stub.ListModels(pb.ListModelsRequest(), metadata=metadata)
            await call
            assert ("x-request-id", "grpc-id-7") in tuple(await call.initial_metadata())
            assert ("x-request-id", "grpc-id-7") in tuple(await call.trailing_metadata())

            async def frames():
                yield pb.StreamRequest(config=pb.SessionConfig())

            stream = stub.StreamFrames(frames(), metadata=metadata[:1])
            async for _ in stream:
                pass
            initial = dict(await stream.initial_metadata())
            assert initial["vidserve-session"] == "accepted"
            assert re.fullmatch(r"[0-9a-f]{32}", initial["x-request-id"])

            refused = stub.ListModels(pb.ListModelsRequest(), metadata=metadata[1:])
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await refused
            assert ("x-request-id", "grpc-id-7") in tuple(error.value.trailing_metadata())

    asyncio.run(run())


# --- limits before the body or a frame is read --------------------------------------------------
def raw_request(server, head: bytes, body_parts=(), pause: float = 0.0, read_timeout=30) -> bytes:
    """Send a request by hand (headers, then body parts with pauses) and read the answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=read_timeout) as sock:
        sock.sendall(head)
        for part in body_parts:
            time.sleep(pause)
            try:
                sock.sendall(part)
            except OSError:  # the server answered and closed: read what it said
                break
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and answer.endswith(b"}"):
                break
        return answer


def head(length: int, extra: str = "") -> bytes:
    return (
        "POST /v1/segment HTTP/1.1\r\n"
        "Host: 127.0.0.1\r\n"
        f"Authorization: Bearer {KEY}\r\n"
        "Content-Type: multipart/form-data; boundary=XyZ\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


# The start of a multipart body: the video field's part, its bytes to follow.
VIDEO_PART = (
    b'--XyZ\r\nContent-Disposition: form-data; name="video"; filename="v.mp4"\r\n'
    b"Content-Type: video/mp4\r\n\r\n"
)


def test_an_oversize_content_length_is_refused_before_the_body_is_read(guarded):
    started = time.monotonic()
    answer = raw_request(guarded, head(50 * MAX_UPLOAD))  # headers only: no body is ever sent
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"application/problem+json" in answer
    assert time.monotonic() - started < 5


def test_a_chunked_body_over_the_limit_is_refused(guarded):
    part = VIDEO_PART
    chunk = b"x" * 65536
    body = b"%x\r\n" % len(part) + part + b"\r\n"
    body += (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * (MAX_UPLOAD // len(chunk) + 40)
    request = head(0).replace(b"Content-Length: 0\r\n", b"Transfer-Encoding: chunked\r\n")
    answer = raw_request(guarded, request, [body])
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_a_video_over_the_frame_limit_is_refused_with_no_frame_computed(guarded, video_file):
    before = frames_total(guarded)
    answer = segment(guarded, video_file.read_bytes(), AUTH)
    assert answer.status_code == 413, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert "10 frames" in answer.json()["detail"]
    assert frames_total(guarded) == before
    # The limit is on the frames processed: a stride or max_frames that brings it under passes.
    assert segment(guarded, video_file.read_bytes(), AUTH, {"frame_stride": "2"}).status_code == 200
    assert segment(guarded, video_file.read_bytes(), AUTH, {"max_frames": "3"}).status_code == 200


def test_segment_video_over_grpc_refuses_a_long_video_before_decoding(guarded, video_file):
    async def run():
        async with grpc.aio.insecure_channel(guarded.grpc_target) as channel:
            stub = pb_grpc.VideoSegmentationStub(channel)

            async def messages():
                yield pb.VideoChunk(config=pb.VideoConfig(session=pb.SessionConfig()))
                yield pb.VideoChunk(data=video_file.read_bytes())

            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stub.SegmentVideo(messages(), metadata=(("x-api-key", KEY),))
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "Video too long" in error.value.details()

    before = frames_total(guarded)
    asyncio.run(run())
    assert frames_total(guarded) == before


def test_a_client_that_stalls_mid_body_gets_408(guarded):
    started = time.monotonic()
    # 100 bytes of the video, then nothing: the body stalls.
    answer = raw_request(guarded, head(100_000) + VIDEO_PART, [b"x" * 100])
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"application/problem+json" in answer
    assert time.monotonic() - started < 10


def test_a_client_that_trickles_its_body_gets_408_at_the_deadline(guarded):
    started = time.monotonic()
    # One byte every 0.3 s: never idle for the 1 s chunk timeout, but over the 3 s deadline.
    answer = raw_request(guarded, head(100_000) + VIDEO_PART, [b"x"] * 60, pause=0.3)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - started < 10
    assert httpx.get(f"{guarded.url}/v1/models", headers=AUTH).status_code == 200


def mkv(path, frames: int, fps: int = 8):
    """A Matroska video: its header gives a duration, no frame count."""
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(frames):
            image = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            container.mux(stream.encode(image))
        container.mux(stream.encode())
    return path


def test_the_header_length_check_uses_the_duration_when_no_count_is_stored(tmp_path):
    from service.gateway.video_input import InputError, VideoLimits, probe_video

    path = mkv(tmp_path / "long.mkv", 45)
    with pytest.raises(InputError) as refused:
        probe_video(path, VideoLimits(40, 1000, 1000))
    assert refused.value.status == 413 and "about" in refused.value.detail
    # An estimate refuses only what is clearly over; the decoder finds the rest.
    assert probe_video(path, VideoLimits(44, 1000, 1000)).width == 64
    assert probe_video(path, VideoLimits(40, 1000, 1000), stride=2).width == 64
    assert probe_video(path, VideoLimits(40, 1000, 1000), max_frames=10).width == 64
