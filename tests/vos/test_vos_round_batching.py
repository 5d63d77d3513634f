"""A round of many STCN sessions in batched passes (readout, decoder, value encoder) gives what
each session alone gives, and a failed batch retried frame by frame commits each frame once."""

import threading
from types import SimpleNamespace

import pytest
import torch
from vos_fixtures import box_mask, random_frames, tiny_config

from models.data.rle import decode_rle, encode_mask
from models.vos import STCN, SessionSettings, segment_batch
from service.worker.runner import WorkItem
from service.worker.runners.vos import SessionsForward, VosRunner
from service.worker.scheduler import Scheduler

FRAMES = 9
SIZE, OTHER_SIZE = (48, 64), (32, 32)
# Session k: its frame size and {frame: {object id: (top, left, size)}}. Prompts on different
# frames give memories of different lengths (and memorising on different frames); session 1
# gains an object on frame 3, so frames before it hold no value for that object (two read
# groups); session 3 has frames of another size (its own pass).
SESSIONS = [
    (SIZE, {0: {1: (4, 4, 16)}}),
    (SIZE, {0: {1: (20, 30, 16)}, 3: {2: (0, 40, 12)}}),
    (SIZE, {2: {1: (10, 10, 20), 2: (30, 2, 14), 5: (2, 44, 10)}}),
    (OTHER_SIZE, {1: {7: (8, 8, 12), 8: (20, 16, 10)}}),
]
PROB_TOLERANCE = 1e-4


@pytest.fixture(params=[None, 2], ids=["one-pass", "passes-of-two"])
def runner(request):
    """A runner whose forward takes all sessions of a round in one pass (what an accelerator
    does), or at most two per pass."""
    torch.manual_seed(0)
    model = STCN(tiny_config()).eval()
    settings = SessionSettings(mem_every=2, max_memory_frames=4)
    return VosRunner(model, SimpleNamespace(version="v1"), "stcn", settings, request.param)


def session_items(runner):
    """Per session, its states and its frames as WorkItems (prompts as the worker gets them)."""
    items = []
    for number, (size, prompts) in enumerate(SESSIONS):
        state = runner.open_session({})
        frames = random_frames(FRAMES, *size, seed=number)
        items.append(
            [
                WorkItem(f"s{number}", t, t / 8, frames[t], state, rle_prompt(size, prompts.get(t)))
                for t in range(FRAMES)
            ]
        )
    return items


def rle_prompt(size, boxes):
    if boxes is None:
        return None
    return {oid: encode_mask(box_mask(*size, *box)) for oid, box in boxes.items()}


def run_round(runner, items):
    """The worker's two phases: one forward over the items, then each item's step."""
    prepared = runner.forward.run([item.viewing(runner.forward_view(item.state)) for item in items])
    return prepared, [runner.step(item, ready) for item, ready in zip(items, prepared, strict=True)]


def run_batched(runner):
    """Every round one batch of all sessions: (prepared, outputs) per session per frame."""
    sessions = session_items(runner)
    got = [[] for _ in sessions]
    memory_lengths = []
    for t in range(FRAMES):
        memory_lengths.append([len(items[t].state.memory) for items in sessions])
        prepared, outputs = run_round(runner, [items[t] for items in sessions])
        for number, answer in enumerate(zip(prepared, outputs, strict=True)):
            got[number].append(answer)
    return got, memory_lengths, [items[0].state for items in sessions]


def run_alone(runner):
    """Each session on its own, a frame at a time (batches of one): as run_batched."""
    sessions = session_items(runner)
    got = []
    for items in sessions:
        rounds = [run_round(runner, [item]) for item in items]
        got.append([(prepared, outputs) for [prepared], [outputs] in rounds])
    return got, [items[0].state for items in sessions]


def test_a_batched_round_gives_what_each_session_gives_alone(runner):
    batched, memory_lengths, sessions = run_batched(runner)
    alone, sessions_alone = run_alone(runner)
    # The batches mixed memories of different lengths and sessions of 1, 2 and 3 objects.
    from_memory_rounds = [
        t for t in range(FRAMES) if sum(s[t][0].segmentation is not None for s in batched) >= 3
    ]
    assert from_memory_rounds
    assert any(len(set(memory_lengths[t])) >= 3 for t in from_memory_rounds)
    assert [len(session.object_ids) for session in sessions] == [1, 2, 3, 2]
    largest_gap = 0.0
    for session_batched, session_alone in zip(batched, alone, strict=True):
        for (ready, [output]), (ready_alone, [output_alone]) in zip(
            session_batched, session_alone, strict=True
        ):
            assert (ready.segmentation is None) == (ready_alone.segmentation is None)
            if ready.segmentation is not None:
                segmentation, reference = ready.segmentation, ready_alone.segmentation
                assert segmentation.object_ids == reference.object_ids
                gap = (segmentation.probs - reference.probs).abs().max().item()
                largest_gap = max(largest_gap, gap)
                assert (segmentation.values is None) == (reference.values is None)
            assert_same_masks(output, output_alone, ready)
    assert largest_gap <= PROB_TOLERANCE
    assert_same_memory(sessions, sessions_alone)


def assert_same_masks(output, reference, ready):
    """Equal masks, but where two classes' probabilities tie (within the tolerance)."""
    assert [o.track_id for o in output.objects] == [o.track_id for o in reference.objects]
    if ready.segmentation is None:  # segmented in the step, the same way in both runs
        tied = None
    else:
        probs = unpadded(ready.segmentation.probs, ready.frame)
        ranked = torch.cat([(1 - probs.sum(0, keepdim=True)).clamp_min(0), probs]).sort(0).values
        tied = (ranked[-1] - ranked[-2] <= PROB_TOLERANCE).numpy()
    for obj, obj_reference in zip(output.objects, reference.objects, strict=True):
        mask = decode_rle(obj.mask.model_dump()).astype(bool)
        mask_reference = decode_rle(obj_reference.mask.model_dump()).astype(bool)
        differ = mask != mask_reference
        assert not differ.any() if tied is None else not (differ & ~tied).any()


def unpadded(probs, frame):
    left, _, top, _ = frame.padding
    height, width = frame.working_size
    return probs[:, top : top + height, left : left + width]


def assert_same_memory(sessions, sessions_alone):
    """The memories the batched rounds committed are those committed one at a time."""
    for session, session_alone in zip(sessions, sessions_alone, strict=True):
        frames, frames_alone = session.memory.frames, session_alone.memory.frames
        assert [(f.frame_index, f.object_ids, f.pinned) for f in frames] == [
            (f.frame_index, f.object_ids, f.pinned) for f in frames_alone
        ]
        for frame, frame_alone in zip(frames, frames_alone, strict=True):
            assert torch.allclose(frame.key, frame_alone.key, atol=1e-5, rtol=0)
            assert torch.allclose(frame.values, frame_alone.values, atol=1e-4, rtol=0)


class FailingOnBatches(SessionsForward):
    """The real forward, except that a batch of several frames fails: the worker's retry path
    (each frame's forward again, alone) then serves every frame."""

    failed_batches = 0

    def run(self, items):
        if len(items) > 1:
            self.failed_batches += 1
            raise RuntimeError("a batch that fails on purpose")
        return super().run(items)


def run_through_scheduler(runner, sessions):
    """All frames of all sessions queued at once; {(session, frame): [results]}."""
    done, finished = {}, threading.Event()
    expected = sum(len(items) for items in sessions)

    def on_done(_runner, item, result):
        done.setdefault((item.session_id, item.index), []).append(result)
        if sum(len(results) for results in done.values()) == expected:
            finished.set()

    scheduler = Scheduler(max_batch_size=8, max_wait_ms=50, on_done=on_done)
    scheduler.add_runner(runner)
    scheduler.session_opened(runner, len(sessions))
    try:
        for t in range(FRAMES):
            for items in sessions:
                scheduler.submit(runner, items[t])
        assert finished.wait(120)
    finally:
        scheduler.stop()
    return done


def test_a_failed_batch_retried_frame_by_frame_commits_each_frame_once(runner):
    reference, _ = run_alone(runner)
    runner.forward = FailingOnBatches(runner.model, "stcn", runner.forward.sessions_per_pass)
    sessions = session_items(runner)
    done = run_through_scheduler(runner, sessions)
    assert runner.forward.failed_batches > 0
    for number, items in enumerate(sessions):
        session = items[0].state
        assert session.next_frame_index == FRAMES
        memorised = [frame.frame_index for frame in session.memory.frames]
        assert len(set(memorised)) == len(memorised)
        for t in range(FRAMES):
            [result] = done[(f"s{number}", t)]  # one answer per frame, never an error
            [output] = result
            [reference_output] = reference[number][t][1]
            assert [o.mask for o in output.objects] == [o.mask for o in reference_output.objects]


def test_a_segmentation_commits_once(runner):
    items = session_items(runner)[0]
    run_round(runner, [items[0]])  # the prompt
    run_round(runner, [items[1]])  # a frame from memory
    session = items[0].state
    [ready] = runner.forward.run([items[2]])
    [segmentation] = segment_batch([session], [ready.frame], [ready.features])
    session.commit(ready.frame, ready.features, segmentation)
    memory = [frame.frame_index for frame in session.memory.frames]
    with pytest.raises(ValueError, match="cannot be committed"):
        session.commit(ready.frame, ready.features, segmentation)
    assert session.next_frame_index == 3
    assert [frame.frame_index for frame in session.memory.frames] == memory
    assert torch.equal(ready.segmentation.probs, segmentation.probs)
