"""Key features of many sessions' frames in one forward pass give what one at a time gives."""

import torch
from vos_fixtures import box_mask, random_frames, tiny_model

from models.vos import VosSession, encode_key_batch, prepare_for_inference

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


def test_batched_key_encoding_gives_the_same_results():
    model = tiny_model()
    alone, batched = run_one_at_a_time(model), run_batched(model)
    for session_alone, session_batched in zip(alone, batched, strict=True):
        for frame_alone, frame_batched in zip(session_alone, session_batched, strict=True):
            assert list(frame_alone) == list(frame_batched)
            for object_id, result in frame_alone.items():
                other = frame_batched[object_id]
                assert torch.allclose(result.prob, other.prob, atol=1e-5, rtol=0)
                assert torch.equal(result.mask, other.mask)
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
