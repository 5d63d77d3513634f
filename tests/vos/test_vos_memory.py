"""The memory stays within its budget, keeps prompted frames, and reads each object's frames."""

import pytest
import torch
from vos_fixtures import box_mask, random_frames, tiny_model

from models.vos import (
    MemoryBank,
    MemoryBudget,
    MemoryBudgetError,
    PromptBudgetError,
    SessionSettings,
    VosSession,
)
from models.vos.memory import MemoryFrame, memory_frame_bytes

KEY_DIM, VALUE_DIM, POSITIONS = 4, 3, 2


def memory_frame(index: int, object_ids=(1,), pinned=False, key=None, value=0.0) -> MemoryFrame:
    key = torch.zeros(KEY_DIM, POSITIONS) if key is None else key
    values = torch.full((len(object_ids), VALUE_DIM, POSITIONS), value)
    return MemoryFrame(index, key, values, tuple(object_ids), pinned)


def indices(bank: MemoryBank) -> list[int]:
    return [frame.frame_index for frame in bank.frames]


def test_frame_bytes_are_keys_plus_values_per_object():
    frame = memory_frame(0, object_ids=(1, 2))
    assert frame.nbytes == (KEY_DIM + 2 * VALUE_DIM) * POSITIONS * 4
    assert frame.nbytes == memory_frame_bytes(KEY_DIM, VALUE_DIM, POSITIONS, 2, torch.float32)


def test_oldest_unpinned_frames_go_first():
    bank = MemoryBank(MemoryBudget(max_frames=3))
    bank.add(memory_frame(0, pinned=True))
    for index in (5, 10, 15, 20):
        assert bank.add(memory_frame(index))
    assert indices(bank) == [0, 15, 20]


def test_byte_budget_holds_and_a_frame_that_cannot_fit_is_not_kept():
    one_frame = memory_frame(0).nbytes
    bank = MemoryBank(MemoryBudget(max_frames=None, max_bytes=2 * one_frame))
    bank.add(memory_frame(0, pinned=True))
    bank.add(memory_frame(5, pinned=True))
    assert not bank.add(memory_frame(10))  # no room beside two prompted frames
    assert indices(bank) == [0, 5]
    assert bank.nbytes() <= 2 * one_frame


def test_a_prompted_frame_over_budget_is_refused():
    bank = MemoryBank(MemoryBudget(max_frames=2))
    bank.add(memory_frame(0, pinned=True))
    bank.add(memory_frame(3))
    bank.add(memory_frame(5, pinned=True))  # drops frame 3
    with pytest.raises(MemoryBudgetError):
        bank.add(memory_frame(8, pinned=True))
    assert indices(bank) == [0, 5]


def test_an_object_reads_only_the_frames_that_hold_its_value():
    # Frame 0 knows object 1 only; frame 5 knows objects 1 and 2. The query matches frame 0's
    # key best, yet object 2 must read frame 5 (its only frame) while object 1 reads frame 0.
    near, far = torch.zeros(KEY_DIM, 1), torch.full((KEY_DIM, 1), 3.0)
    bank = MemoryBank(MemoryBudget(max_frames=None))
    bank.frames.append(MemoryFrame(0, near, torch.full((1, VALUE_DIM, 1), 1.0), (1,), True))
    values = torch.stack([torch.full((VALUE_DIM, 1), 2.0), torch.full((VALUE_DIM, 1), 7.0)])
    bank.frames.append(MemoryFrame(5, far, values, (1, 2), True))
    readout = bank.read(torch.zeros(KEY_DIM, 1), [1, 2], top_k=1)
    assert readout.shape == (2, VALUE_DIM, 1)
    assert readout[0].flatten().tolist() == [1.0] * VALUE_DIM
    assert readout[1].flatten().tolist() == [7.0] * VALUE_DIM


@pytest.mark.parametrize(
    ("max_frames", "max_bytes_in_frames", "kept"),
    [(4, None, [0, 291, 294, 297]), (None, 3, [0, 294, 297])],
    ids=["frame-budget", "byte-budget"],
)
def test_memory_is_flat_over_a_long_stream(max_frames, max_bytes_in_frames, kept):
    model = tiny_model()
    config = model.config
    # 32 x 32 frames: 2 x 2 positions at stride 16, one object.
    frame_bytes = memory_frame_bytes(config.key_dim, config.value_dim, 4, 1, torch.float32)
    max_bytes = None if max_bytes_in_frames is None else max_bytes_in_frames * frame_bytes
    settings = SessionSettings(
        mem_every=3, max_memory_frames=max_frames, max_memory_bytes=max_bytes
    )
    session = VosSession(model, settings)
    session.add_prompt(0, {1: box_mask(32, 32, 8, 8, 12)})
    budget = max_bytes or max_frames * frame_bytes
    for frame in random_frames(300, 32, 32, seed=1):
        assert list(session.step(frame)) == [1]
        assert session.memory_bytes() <= budget
        assert session.memory.frames[0].frame_index == 0 and session.memory.frames[0].pinned
    assert indices(session.memory) == kept


def test_a_prompt_the_budget_cannot_hold_is_refused_before_anything_changes():
    session = VosSession(tiny_model(), SessionSettings(max_memory_frames=2))
    session.add_prompt(0, {1: box_mask(32, 32, 0, 0, 8)})
    session.add_prompt(4, {2: box_mask(32, 32, 16, 16, 8)})
    with pytest.raises(PromptBudgetError):
        session.add_prompt(9, {3: box_mask(32, 32, 8, 8, 8)})
    for frame in random_frames(12, 32, 32):
        session.step(frame)
    assert session.object_ids == [1, 2]
