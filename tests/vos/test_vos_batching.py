"""Many sessions' frames in batched passes give what one session at a time gives: the key
encoder (encode_key_batch) and the rest of a round (step_round: memory readout, decoder, value
encoder), whose sessions commit their own frames afterwards."""

import pytest
import torch
from vos_fixtures import box_mask, random_frames, tiny_model

from models.vos import (
    SessionSettings,
    VosSession,
    encode_key_batch,
    prepare_for_inference,
    step_round,
)

HEIGHT, WIDTH, FRAMES = 48, 64, 4


def open_sessions(model):
    """Three sessions with different objects and prompts, over different videos."""
    sessions = [VosSession(model) for _ in range(3)]
    sessions[0].add_prompt(0, {1: box_mask(HEIGHT, WIDTH, 4, 4, 16)})
    sessions[1].add_prompt(0, {1: box_mask(HEIGHT, WIDTH, 20, 30, 16)})
    sessions[1].add_prompt(2, {2: box_mask(HEIGHT, WIDTH, 0, 40, 12)})
    sessions[2].add_prompt(1, {4: box_mask(HEIGHT, WIDTH, 10, 10, 20)})
    videos = [random_frames(FRAMES, HEIGHT, WIDTH, seed=seed) for seed in range(3)]
    return sessions, videos


def run_one_at_a_time(model):
    sessions, videos = open_sessions(model)
    return [
        [session.step(frame) for frame in video]
        for session, video in zip(sessions, videos, strict=True)
    ]


def run_batched(model):
    """As a batching worker does: one key-encoder pass for the frames of all sessions."""
    sessions, videos = open_sessions(model)
    outputs = [[] for _ in sessions]
    for t in range(FRAMES):
        prepared = [
            session.prepare(video[t]) for session, video in zip(sessions, videos, strict=True)
        ]
        features = encode_key_batch(model, prepared)
        for number, session in enumerate(sessions):
            outputs[number].append(session.step(prepared[number], features[number]))
    return outputs


def assert_same_results(alone, batched) -> None:
    """Per session, per frame: the same objects, probabilities within 1e-5, the same masks."""
    for session_alone, session_batched in zip(alone, batched, strict=True):
        for frame_alone, frame_batched in zip(session_alone, session_batched, strict=True):
            assert list(frame_alone) == list(frame_batched)
            for object_id, result in frame_alone.items():
                other = frame_batched[object_id]
                assert torch.allclose(result.prob, other.prob, atol=1e-5, rtol=0)
                assert torch.equal(result.mask, other.mask)


def test_batched_key_encoding_gives_the_same_results():
    model = tiny_model()
    alone, batched = run_one_at_a_time(model), run_batched(model)
    assert_same_results(alone, batched)
    assert [list(frame) for frame in alone[2]] == [[], [4], [4], [4]]


def test_frames_of_different_sizes_are_grouped_by_size():
    model = tiny_model()
    sessions = [VosSession(model) for _ in range(3)]
    sizes = [(32, 32), (48, 64), (32, 32)]
    prepared = [
        session.prepare(random_frames(1, *size)[0])
        for session, size in zip(sessions, sizes, strict=True)
    ]
    features = encode_key_batch(model, prepared)
    assert [tuple(f.key.shape[-2:]) for f in features] == [(2, 2), (3, 4), (2, 2)]
    single = model.encode_keys(prepared[1].image)
    assert torch.allclose(features[1].f4, single.f4, atol=1e-5)


def test_channels_last_inference_gives_the_same_results():
    model = tiny_model()
    reference = run_one_at_a_time(model)
    fast = prepare_for_inference(copy_of(model))
    for session_ref, session_fast in zip(reference, run_one_at_a_time(fast), strict=True):
        for frame_ref, frame_fast in zip(session_ref, session_fast, strict=True):
            for object_id, result in frame_ref.items():
                assert torch.allclose(result.prob, frame_fast[object_id].prob, atol=1e-5)


def copy_of(model):
    """A separate model with the same weights (prepare_for_inference changes it in place)."""
    copy = type(model)(model.config)
    copy.load_state_dict(model.state_dict())
    return copy.eval()


# Sessions that differ in all that a round pads, masks or groups: memory lengths (budgets of
# 2 and 16 frames, mem_every 1, 2 and 3, so some frames memorise and some do not), object
# counts (1 to 3, an object joining later, so that one session reads two groups of memory
# frames), prompts on different frames, a session with nothing to segment for its first
# frames, frame sizes (48x64 and 32x32) and top_k (memories of 1 to 16 frames of 12 positions
# each against a top_k of 20: padding that took any weight would show).
ROUND_SESSIONS = [
    (SessionSettings(mem_every=1), (HEIGHT, WIDTH), {0: {1: (4, 4, 16), 2: (24, 30, 14)}}),
    (SessionSettings(mem_every=2, max_memory_frames=2), (HEIGHT, WIDTH), {0: {3: (10, 8, 20)}}),
    (
        SessionSettings(mem_every=3),
        (HEIGHT, WIDTH),
        {1: {1: (0, 0, 12)}, 3: {5: (30, 40, 12), 6: (8, 44, 10)}},
    ),
    (SessionSettings(mem_every=1, top_k=5), (HEIGHT, WIDTH), {0: {2: (16, 16, 16)}}),
    (SessionSettings(mem_every=2), (32, 32), {0: {1: (2, 2, 12), 2: (16, 16, 12)}}),
]
ROUND_FRAMES = 7


def round_sessions(model):
    sessions, videos = [], []
    for seed, (settings, size, prompts) in enumerate(ROUND_SESSIONS):
        session = VosSession(model, settings)
        for frame_index, boxes in prompts.items():
            if frame_index == 0:  # the later prompts come with their frames, as in the worker
                session.add_prompt(0, {i: box_mask(*size, *box) for i, box in boxes.items()})
        sessions.append(session)
        videos.append(random_frames(ROUND_FRAMES, *size, seed=10 + seed))
    return sessions, videos


def later_prompt(number, t):
    _, size, prompts = ROUND_SESSIONS[number]
    boxes = prompts.get(t) if t > 0 else None
    return {i: box_mask(*size, *box) for i, box in boxes.items()} if boxes else None


def memory_of(session):
    return [
        (frame.frame_index, frame.object_ids, frame.pinned, frame.key, frame.values)
        for frame in session.memory.frames
    ]


def state_of(session):
    return (session.next_frame_index, session.object_ids, len(session.memory), session.input_size)


def run_sessions_alone(model):
    sessions, videos = round_sessions(model)
    outputs = []
    for number, (session, video) in enumerate(zip(sessions, videos, strict=True)):
        results = []
        for t, frame in enumerate(video):
            prompt = later_prompt(number, t)
            if prompt:
                session.add_prompt(t, prompt)
            results.append(session.step(frame))
        outputs.append(results)
    return sessions, outputs


def run_sessions_in_rounds(model):
    sessions, videos = round_sessions(model)
    outputs = [[] for _ in sessions]
    for t in range(ROUND_FRAMES):
        prepared = [
            session.prepare(video[t]) for session, video in zip(sessions, videos, strict=True)
        ]
        prompts = [later_prompt(number, t) for number in range(len(sessions))]
        wanted = [
            n for n, session in enumerate(sessions) if prompts[n] or session.needs_key_features()
        ]
        features = dict(
            zip(wanted, encode_key_batch(model, [prepared[n] for n in wanted]), strict=True)
        )
        plans = [
            session.plan(prepared[n], features.get(n), prompts[n])
            for n, session in enumerate(sessions)
        ]
        before = [(state_of(s), memory_of(s), dict(s._prompts)) for s in sessions]
        steps = step_round(model, plans)
        # The round reads the sessions and changes none of them.
        for session, (state, memory, prompts_held) in zip(sessions, before, strict=True):
            assert state_of(session) == state and dict(session._prompts) == prompts_held
            assert all(
                a is b
                for old, new in zip(memory, memory_of(session), strict=True)
                for a, b in zip(old, new, strict=True)
            )
        for number, (session, step) in enumerate(zip(sessions, steps, strict=True)):
            outputs[number].append(session.commit(step))
    return sessions, outputs


def test_a_round_of_sessions_gives_what_each_session_alone_gives():
    model = tiny_model()
    alone_sessions, alone = run_sessions_alone(model)
    round_sessions_, in_rounds = run_sessions_in_rounds(model)
    assert_same_results(alone, in_rounds)
    for session_alone, session_round in zip(alone_sessions, round_sessions_, strict=True):
        assert state_of(session_alone) == state_of(session_round)
        assert session_alone._last_prompt_index == session_round._last_prompt_index
        for frame_alone, frame_round in zip(
            memory_of(session_alone), memory_of(session_round), strict=True
        ):
            assert frame_alone[:3] == frame_round[:3]
            for alone_tensor, round_tensor in zip(frame_alone[3:], frame_round[3:], strict=True):
                # Keys and values reach ~60: the same up to float32 rounding at that scale.
                tolerance = 2e-6 * float(alone_tensor.abs().max())
                assert torch.allclose(alone_tensor, round_tensor, atol=tolerance, rtol=0)
    # What the sessions went through: the cases above did happen.
    assert [list(frame) for frame in alone[2]] == [
        [],
        [1],
        [1],
        [1, 5, 6],
        [1, 5, 6],
        [1, 5, 6],
        [1, 5, 6],
    ]
    assert [len(session.memory) for session in alone_sessions] == [7, 2, 3, 7, 4]
    assert [frame[0] for frame in memory_of(alone_sessions[1])] == [0, 6]
    assert len(alone_sessions[2].memory.reads([1, 5, 6])) == 2


def test_a_step_computed_from_an_older_state_is_refused_and_changes_nothing():
    model = tiny_model()
    session = VosSession(model)
    session.add_prompt(0, {1: box_mask(HEIGHT, WIDTH, 4, 4, 16)})
    frames = random_frames(2, HEIGHT, WIDTH)
    [stale] = step_round(model, [session.plan(frames[0])])
    session.add_prompt(1, {2: box_mask(HEIGHT, WIDTH, 20, 20, 16)})  # the state moved on
    with pytest.raises(ValueError, match="another state"):
        session.commit(stale)
    assert state_of(session) == (0, [], 0, (HEIGHT, WIDTH))
    [fresh] = step_round(model, [session.plan(frames[0])])
    assert list(session.commit(fresh)) == [1]
    with pytest.raises(ValueError, match="another state"):
        session.commit(fresh)  # twice: the second would be frame 1
    assert state_of(session) == (1, [1], 1, (HEIGHT, WIDTH))
