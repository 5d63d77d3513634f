"""Admission refusals through the client: a `vidserve serve` that admits one session at a time
(VIDSERVE_MAX_FRAMES_IN_FLIGHT = the session window), one stream held open in it, and every other
call refused Busy with the service's Retry-After; with Retry, the call waits and succeeds once the
held stream ends. The server also wants an API key: the client sends it over REST and gRPC, and a
client without it is refused Unauthenticated."""

import threading

import pytest
from vidserve_client import Busy, Client, FrameResult, Retry, Unauthenticated

from models.data.video import read_video
from tests.service.conftest import MASKTRACK_ONLY, Server

RETRY_AFTER_S = 1
KEY = "client-test-key"


@pytest.fixture(scope="module")
def one_session_server(tmp_path_factory):
    with open(tmp_path_factory.mktemp("logs") / "one_session.log", "w") as log:
        server = Server(
            env={
                "VIDSERVE_MAX_FRAMES_IN_FLIGHT": "8",
                "VIDSERVE_SESSION_WINDOW": "8",  # one session's window fills the gateway
                "VIDSERVE_RETRY_AFTER_S": str(RETRY_AFTER_S),
                "VIDSERVE_API_KEYS": KEY,
                **MASKTRACK_ONLY,
            },
            log=log,
        )
        yield server
        server.stop()


@pytest.fixture(scope="module")
def frames(video_file):
    return read_video(video_file, max_frames=4)[0]


def connect(server: Server, api_key: str | None = KEY, **options) -> Client:
    return Client(server.url, grpc_target=server.grpc_target, api_key=api_key, **options)


class HeldStream:
    """A stream that sends its first frame and then holds its session open until released:
    its result comes back in a thread, which ends when the stream does."""

    def __init__(self, client: Client, frames):
        self.release = threading.Event()
        self.results: list = []
        events = client.stream(self._frames(frames), "masktrack")
        self.results.append(next(events))  # admitted, and the session is open
        self.thread = threading.Thread(target=lambda: self.results.extend(events))
        self.thread.start()

    def _frames(self, frames):
        yield frames[0]
        self.release.wait(timeout=120)
        yield from frames[1:]

    def end(self) -> list:
        self.release.set()
        self.thread.join(timeout=120)
        return self.results


def test_a_full_service_answers_busy_with_retry_after(one_session_server, video_file, frames):
    server = one_session_server
    with connect(server) as client:
        held = HeldStream(client, frames)
        try:
            with pytest.raises(Busy) as rest:
                client.segment(video_file)
            with pytest.raises(Busy) as grpc_error:
                list(client.stream(frames, "masktrack"))
        finally:
            results = held.end()
    assert rest.value.status == 429 and rest.value.retry_after == RETRY_AFTER_S
    assert grpc_error.value.grpc_code == "RESOURCE_EXHAUSTED"
    assert grpc_error.value.retry_after == RETRY_AFTER_S
    assert [r.frame_index for r in results] == list(range(len(frames)))  # the held one is whole


@pytest.mark.parametrize("call", ["segment", "stream"])
def test_with_retry_a_refused_call_waits_and_succeeds(one_session_server, video_file, frames, call):
    server = one_session_server
    refusals, taken = [], []  # the frames taken from the stream's iterable, as it goes

    def one_shot():
        for index, frame in enumerate(frames):
            taken.append(index)
            yield frame

    with connect(server) as client:
        held = HeldStream(client, frames)

        def on_retry(error, wait_s):
            # Refused while the stream is held: now let it end, and see the retry get in.
            refusals.append((error, wait_s, list(taken)))
            held.release.set()

        retry = Retry(attempts=10, max_wait_s=60, on_retry=on_retry)
        with connect(server, retry=retry) as retrying:
            try:
                if call == "segment":
                    results = retrying.segment(video_file, max_frames=4).frames
                else:
                    results = list(retrying.stream(one_shot(), "masktrack"))
            finally:
                held.end()
    assert refusals and all(isinstance(error, Busy) for error, _, _ in refusals)
    assert all(wait_s == RETRY_AFTER_S for _, wait_s, _ in refusals)
    assert all(isinstance(r, FrameResult) for r in results)
    assert [r.frame_index for r in results] == list(range(len(frames)))
    # A refused stream took no frame: the retry sent them all (the service admits a stream
    # before the client takes its first frame).
    assert all(taken_then == [] for _, _, taken_then in refusals)


def test_retry_gives_up_after_its_attempts(one_session_server, video_file, frames):
    server = one_session_server
    refusals = []
    retry = Retry(attempts=2, max_wait_s=60, on_retry=lambda error, wait: refusals.append(error))
    with connect(server, retry=retry) as client:
        held = HeldStream(client, frames)
        try:
            with pytest.raises(Busy):
                client.segment(video_file)
        finally:
            held.end()
    assert len(refusals) == 1  # two attempts: one wait between them


@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_without_the_api_key_calls_are_unauthenticated(one_session_server, video_file, frames, key):
    server = one_session_server
    with connect(server, api_key=key) as client:
        with pytest.raises(Unauthenticated) as rest:
            client.segment(video_file)
        with pytest.raises(Unauthenticated) as grpc_error:
            list(client.stream(frames, "masktrack"))
        with pytest.raises(Unauthenticated):
            client.models()
    assert rest.value.status == 401 and grpc_error.value.grpc_code == "UNAUTHENTICATED"
    with connect(server) as client:
        assert "masktrack" in [m.name for m in client.models()]
