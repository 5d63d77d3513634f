"""The worker contract with real runners in a real worker (in-process transport): clip windows
answered late and sparsely, a failing batch retried without a frame entering a clip twice, a
pipeline sharing the detector's batches."""

import asyncio
import threading

import pytest

from models.checkpoints.store import CheckpointStore
from models.data.synthetic.export import generate_video
from models.data.synthetic.world import WorldConfig
from service.queue.inprocess import InProcessTransport
from service.queue.messages import Frame, ReplyKind
from service.settings import SHIPPED_CHECKPOINTS
from service.worker.pipeline import PipelineRunner
from service.worker.runners import load_runners
from service.worker.worker import Worker, WorkerConfig
from tests.service.clip_plugin import HALF, KEY_EVERY, AreaHead, ClipMeanRunner, area_label

FRAMES = generate_video(WorldConfig(width=160, height=120, frames=24, max_objects=3), 5, 0).frames


@pytest.fixture(scope="module")
def vis_runners():
    # The newest shipped version, as the worker serves it (the store keeps earlier ones).
    version = CheckpointStore(SHIPPED_CHECKPOINTS).latest("vis", "masktrack")
    return load_runners(version, "masktrack", "cpu")


def start_worker(*runners, **config):
    transport = InProcessTransport()
    worker = Worker(transport, WorkerConfig(**{"max_batch_size": 8, "max_wait_ms": 30, **config}))
    transport.attach(worker)
    for runner in runners:
        worker.install(runner)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return transport, worker, thread


async def replies_until_end(handle, timeout=60):
    got = []
    while True:
        reply = await asyncio.wait_for(handle.replies.get(), timeout)
        got.append(reply)
        if reply.closed:
            return got


def expected_key_frames(means: list[float]) -> dict[int, tuple[float, int]]:
    out = {}
    for key in range(0, len(means), KEY_EVERY):
        window = [m for i, m in enumerate(means) if key - HALF <= i <= key + HALF]
        out[key] = (sum(window) / len(window), len(window))
    return out


def test_clip_runner_answers_every_key_frame_late_and_a_failed_batch_buffers_nothing_twice():
    runner = ClipMeanRunner()
    transport, worker, thread = start_worker(runner)
    means = [float(f.mean()) / 255.0 for f in FRAMES]

    async def scenario():
        # Two sessions whose batches fail on purpose when they hold more than one frame; all
        # frames are queued at once, so batches of several frames form and fail.
        handles = [await transport.open("clip-mean", {"fail_batches": 1.0}) for _ in range(2)]
        for index, frame in enumerate(FRAMES):
            for handle in handles:
                await transport.send(
                    handle, Frame(handle.session_id, index, index / 8, frame, model="clip-mean")
                )
        for handle in handles:
            await transport.close(handle)
        return [await replies_until_end(h) for h in handles]

    try:
        answers = asyncio.run(scenario())
    finally:
        worker.stop()
        thread.join(timeout=10)
    assert runner.forward.failed_batches > 0  # the retry path ran
    expected = expected_key_frames(means)
    for replies in answers:
        assert replies[-1].closed and replies[-1].error_code is None
        taken = sorted(r.index for r in replies if r.taken)
        assert taken == list(range(len(FRAMES)))  # one taken reply per frame
        frames = {r.index: r for r in replies if r.kind == ReplyKind.FRAME}
        actions = {r.index: r for r in replies if r.kind == ReplyKind.ACTIONS}
        assert sorted(frames) == sorted(actions) == sorted(expected)  # none dropped at close
        for key, (value, count) in expected.items():
            assert frames[key].objects[0].score == pytest.approx(value)
            [label] = actions[key].tracks[0].actions
            # The window holds each frame once, though its batch failed and was retried.
            assert label.label == f"mean@{count}" and label.key_frame == key


def test_pipeline_shares_detector_batches_with_plain_tracking_sessions(vis_runners):
    tracking = next(r for r in vis_runners if r.info.name == "masktrack")
    pipeline = PipelineRunner("masktrack-areas", "action", tracking, [AreaHead()])
    assert pipeline.info.stage_list() == [
        ("masktrack", tracking.info.version),
        ("areas", "test-1"),
    ]
    transport, worker, thread = start_worker(*vis_runners, pipeline)

    async def scenario():
        plain = await transport.open("masktrack", {"score_threshold": 0.3})
        piped = await transport.open("masktrack-areas", {"score_threshold": 0.3})
        for index, frame in enumerate(FRAMES[:8]):
            for handle in (plain, piped):
                await transport.send(
                    handle, Frame(handle.session_id, index, index / 8, frame, model=handle.model)
                )
        for handle in (plain, piped):
            await transport.close(handle)
        return plain, piped, await replies_until_end(plain), await replies_until_end(piped)

    try:
        plain, piped, plain_replies, piped_replies = asyncio.run(scenario())
    finally:
        worker.stop()
        thread.join(timeout=10)
    shared = [
        b
        for b in tracking.forward.recent_batches
        if plain.session_id in b and piped.session_id in b
    ]
    assert shared, "no detector pass held frames of both sessions"
    plain_frames = {r.index: r for r in plain_replies if r.kind == ReplyKind.FRAME}
    piped_frames = {r.index: r for r in piped_replies if r.kind == ReplyKind.FRAME}
    piped_actions = {r.index: r for r in piped_replies if r.kind == ReplyKind.ACTIONS}
    assert sorted(plain_frames) == sorted(piped_frames) == sorted(piped_actions) == list(range(8))
    objects_seen = 0
    for index in range(8):
        # The same detections, the same tracker: the same objects, whichever model asked.
        mine = [o.model_dump() for o in piped_frames[index].objects]
        assert mine == [o.model_dump() for o in plain_frames[index].objects]
        labels = {t.track_id: t.actions[0] for t in piped_actions[index].tracks}
        for obj in piped_frames[index].objects:
            assert labels[obj.track_id] == area_label(obj, index)
        objects_seen += len(mine)
        assert piped_frames[index].stages == pipeline.info.stage_list()
        assert plain_frames[index].stages == [("masktrack", tracking.info.version)]
    assert objects_seen > 0


class ThresholdedAreaHead(AreaHead):
    first_stage_defaults = {"score_threshold": 0.3}


def test_a_later_stage_sets_the_first_stages_defaults_and_a_request_overrides_them(vis_runners):
    tracking = next(r for r in vis_runners if r.info.name == "masktrack")
    pipeline = PipelineRunner("masktrack-areas", "action", tracking, [ThresholdedAreaHead()])
    served_default = tracking.open_session({}).score_threshold
    assert served_default > 0.3  # the shipped checkpoint's calibrated one
    assert pipeline.open_session({}).first.score_threshold == 0.3
    assert pipeline.open_session({"score_threshold": "0.9"}).first.score_threshold == 0.9
    assert tracking.open_session({}).score_threshold == served_default  # its own sessions keep it
