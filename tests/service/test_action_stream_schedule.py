"""benchmarks/action_stream.py times each key frame from the frame that completes its clip: its
key frames, their last needed frames and the look-ahead must be the action head's own. Checked
against a real ActionHead stepped through a stream (frames without tracked objects: the head
schedules and retires key frames without running its model)."""

import numpy as np
import pytest

from benchmarks.action_stream import (
    Clock,
    key_frames,
    last_needed_frame,
    manifest_clock,
    ping_pong,
)
from models.action.config import ActionConfig
from models.action.model import build_action_model
from models.checkpoints.checkpoint import save_checkpoint
from service.worker.runner import WorkItem
from service.worker.runners.action import ActionHead

TRAINING_FPS = 8.0


@pytest.fixture(scope="module")
def small_model():
    return build_action_model(ActionConfig.small(num_classes=3))


def head_schedule(head: ActionHead, times: list[float]) -> tuple[list[int], dict[int, int]]:
    """Step the head through frames at `times`: the key frames it picks, and for each the frame
    at which it left the pending list (was answered)."""
    state = head.open_session({})
    image = np.zeros((24, 32, 3), np.uint8)
    keys, answered_at = [], {}
    for index, t in enumerate(times):
        before = {k.index for k in state.pending}
        head.step(state, WorkItem("s", index, t, image, state), upstream=[])
        after = {k.index for k in state.pending}
        keys += sorted(after - before)  # the look-ahead is positive: a new key frame waits
        for key in before - after:
            answered_at[key] = index
    return keys, answered_at


@pytest.mark.parametrize("fps", [8.0, 5.0, 30.0, 100.0])
def test_key_frames_and_last_needed_frames_are_the_heads(small_model, fps):
    head = ActionHead(small_model, "slowfast-acrn", "v1", ["a", "b"], TRAINING_FPS, ["person"])
    clock = Clock(head.look_ahead_s, TRAINING_FPS)
    times = [i / fps for i in range(int(5 * fps))]
    keys, answered_at = head_schedule(head, times)
    assert keys == key_frames(times)
    for key in keys:
        assert answered_at.get(key) == last_needed_frame(times, key, clock)


def test_look_ahead_comes_from_the_manifest(small_model, tmp_path):
    save_checkpoint(
        small_model,
        tmp_path / "action" / "slowfast-acrn" / "v1",
        family="action",
        architecture=small_model.config.to_dict(),
        class_names=["a", "b"],
        version="v1",
        training={"fps": TRAINING_FPS},
    )
    head = ActionHead(small_model, "slowfast-acrn", "v1", ["a", "b"], TRAINING_FPS, ["person"])
    assert manifest_clock(tmp_path) == Clock(pytest.approx(head.look_ahead_s), TRAINING_FPS)


def test_the_clip_plays_forwards_then_backwards():
    assert [ping_pong(i, 4) for i in range(10)] == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert [ping_pong(i, 1) for i in range(3)] == [0, 0, 0]
