"""The worker through the in-process transport, with the shipped model: session bounds, idle
expiry, errors, ordering and version pinning."""

import asyncio
import threading

import pytest

from models.data.synthetic.export import generate_video
from models.data.synthetic.world import WorldConfig
from service.queue.inprocess import InProcessTransport
from service.queue.messages import ErrorCode, Frame
from service.settings import SHIPPED_CHECKPOINTS
from service.worker.runners import load_runner_from_store
from service.worker.worker import Worker, WorkerConfig

FRAMES = generate_video(WorldConfig(width=160, height=120, frames=6), 11, 0).frames


@pytest.fixture(scope="module")
def runner():
    return load_runner_from_store(SHIPPED_CHECKPOINTS, "masktrack", "cpu")


@pytest.fixture
def worker(runner):
    transport = InProcessTransport()
    worker = Worker(
        transport,
        WorkerConfig(max_batch_size=4, max_wait_ms=20, max_sessions=2, session_idle_s=0.5),
    )
    transport.attach(worker)
    worker.install(runner)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    yield transport, worker
    worker.stop()
    thread.join(timeout=10)


async def next_reply(handle, timeout=30):
    return await asyncio.wait_for(handle.replies.get(), timeout)


def send(transport, handle, index, image=None):
    return transport.send(
        handle,
        Frame(
            handle.session_id,
            index,
            index / 8.0,
            FRAMES[index] if image is None else image,
            model="masktrack",
        ),
    )


def test_session_bound_unknown_model_and_bad_options(worker):
    transport, _ = worker

    async def scenario():
        first = await transport.open("masktrack", {})
        second = await transport.open("masktrack", {})
        third = await transport.open("masktrack", {})
        full = await next_reply(third)
        assert full.error_code == ErrorCode.RESOURCE_EXHAUSTED and full.closed
        await transport.close(first)
        assert (await next_reply(first)).closed  # a free place again
        bad = await transport.open("masktrack", {"score_threshold": "high"})
        reply = await next_reply(bad)
        assert reply.error_code == ErrorCode.INVALID_ARGUMENT and "score_threshold" in reply.error
        await transport.close(second)
        assert (await next_reply(second)).closed

    asyncio.run(scenario())


def test_idle_session_expires_with_an_explicit_error(worker):
    transport, w = worker

    async def scenario():
        handle = await transport.open("masktrack", {})
        await send(transport, handle, 0)
        assert (await next_reply(handle)).index == 0
        ended = await next_reply(handle, timeout=10)  # idle for 0.5 s: swept within ~1.5 s
        assert ended.closed and ended.error_code == ErrorCode.STATE_LOST
        assert "expired" in ended.error
        assert w.session_count() == 0
        await send(transport, handle, 1)  # for a session that is gone: must not upset the worker
        assert w.session_count() == 0

    asyncio.run(scenario())


def test_frames_of_a_session_stay_in_order_with_a_bad_frame_among_them(worker):
    transport, _ = worker

    async def scenario():
        a = await transport.open("masktrack", {"score_threshold": 0.05})
        b = await transport.open("masktrack", {"score_threshold": 0.05})
        for index in range(6):
            await send(transport, a, index)
            image = FRAMES[index][:60] if index == 3 else None  # b's frame 3 changes size
            await send(transport, b, index, image)
        got_a = [await next_reply(a) for _ in range(6)]
        got_b = [await next_reply(b) for _ in range(6)]
        assert [r.index for r in got_a] == list(range(6))
        assert all(r.error_code is None for r in got_a)
        assert [r.index for r in got_b] == list(range(6))
        assert got_b[3].error_code == ErrorCode.INVALID_ARGUMENT and "differs" in got_b[3].error
        assert [r.error_code for r in got_b[:3] + got_b[4:]] == [None] * 5
        for handle in (a, b):
            await transport.close(handle)

    asyncio.run(scenario())


def test_new_version_takes_new_sessions_only(worker, runner):
    transport, w = worker
    from dataclasses import replace

    from service.worker.runners.vis import VisRunner

    class Manifest:
        class_names = list(runner.classes)
        version = "v-next"

    newer = VisRunner(runner.forward, Manifest, "masktrack")
    assert newer.info == replace(runner.info, version="v-next")

    async def scenario():
        old = await transport.open("masktrack", {})
        await send(transport, old, 0)
        assert (await next_reply(old)).model_version == runner.info.version
        w.install(newer)
        new = await transport.open("masktrack", {})
        await send(transport, old, 1)
        await send(transport, new, 0)
        assert (await next_reply(old)).model_version == runner.info.version
        assert (await next_reply(new)).model_version == "v-next"
        for handle in (old, new):
            await transport.close(handle)
            assert (await next_reply(handle)).closed

    asyncio.run(scenario())
    assert w.queue_depth() == 0
