"""Memory is flat over a 2,000-frame synthetic stream: the session's memory never leaves its
budget, the prompted frame stays, and the unbounded memory (STCN's own) would have grown."""

import numpy as np
import torch
from vos_fixtures import synthetic_video, tiny_model, visible_ids

from models.vos import SessionSettings, VosSession
from models.vos.memory import memory_frame_bytes

STREAM_FRAMES = 2000
MEM_EVERY = 5
MAX_FRAMES = 8


def ping_pong(frames: np.ndarray, count: int):
    """`count` frames of a rendered video played forwards, backwards, forwards...: a stream as
    long as wanted from a short video."""
    cycle = np.concatenate([frames, frames[-2:0:-1]])
    for t in range(count):
        yield cycle[t % len(cycle)]


def test_memory_stays_within_its_budget_over_2000_frames():
    video = synthetic_video(width=64, height=48, frames=20, seed=3)
    first = video.object_map[0]
    objects = {i: first == i for i in visible_ids(first)}
    config = tiny_model().config
    frame_bytes = memory_frame_bytes(
        config.key_dim, config.value_dim, (48 // 16) * (64 // 16), len(objects), torch.float32
    )
    budget = MAX_FRAMES * frame_bytes
    session = VosSession(
        tiny_model(), SessionSettings(mem_every=MEM_EVERY, max_memory_frames=MAX_FRAMES)
    )
    session.add_prompt(0, objects)
    peak = 0
    for frame in ping_pong(video.frames, STREAM_FRAMES):
        results = session.step(frame)
        assert sorted(results) == sorted(objects)
        peak = max(peak, session.memory_bytes())
        assert session.memory_bytes() <= budget
    assert session.memory_bytes() == peak == budget  # full, and flat
    assert session.memory.frames[0].frame_index == 0 and session.memory.frames[0].pinned
    # STCN's unbounded memory would hold frame 0 and every 5th frame after it.
    unbounded = (1 + (STREAM_FRAMES - 1) // MEM_EVERY) * frame_bytes
    assert unbounded > 40 * budget
