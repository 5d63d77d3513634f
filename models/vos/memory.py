"""The memory of one VOS session, bounded.

STCN's memory grows by a frame every `mem_every` frames for as long as the video lasts; on a
stream that never ends, so would the worker's memory. Here the memory has a budget (frames
and/or bytes) and a policy that keeps it within the budget:
- prompted frames are pinned: they hold the only ground truth, and every object's first mask;
- other memory frames are dropped oldest first once the budget is exceeded (recent frames are
  the ones that look most like the next frame);
- a prompted frame that would not fit beside the pinned ones is refused (MemoryBudgetError),
  since keeping it would break the budget and dropping it would lose a prompt silently.

Objects can join on any prompt, so frames memorised before an object existed hold no value for
it. Each object reads only the frames that hold its value: objects with the same frames form a
group that shares one top-k softmax (usually all objects are in one group, as in STCN).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from models.vos.ops import in_groups, l2_affinity, read_memory_topk


class MemoryBudgetError(ValueError):
    """A prompted frame that the session's memory budget cannot hold."""


@dataclass(frozen=True)
class MemoryBudget:
    """At most max_frames memory frames and max_bytes bytes of keys and values (None: no limit
    of that kind)."""

    max_frames: int | None = 16
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")
        if self.max_bytes is not None and self.max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {self.max_bytes}")

    def allows(self, frame_count: int, byte_count: int) -> bool:
        frames_ok = self.max_frames is None or frame_count <= self.max_frames
        bytes_ok = self.max_bytes is None or byte_count <= self.max_bytes
        return frames_ok and bytes_ok


@dataclass
class MemoryFrame:
    frame_index: int
    key: Tensor  # (key_dim, hw)
    values: Tensor  # (len(object_ids), value_dim, hw)
    object_ids: tuple[int, ...]
    pinned: bool  # a prompted frame: never dropped

    @property
    def nbytes(self) -> int:
        return _tensor_bytes(self.key) + _tensor_bytes(self.values)


def memory_frame_bytes(
    key_dim: int, value_dim: int, positions: int, objects: int, dtype: torch.dtype
) -> int:
    """What a memory frame of `objects` objects and `positions` (h x w) positions will take."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return (key_dim + objects * value_dim) * positions * itemsize


class MemoryBank:
    def __init__(self, budget: MemoryBudget | None = None):
        self.budget = budget or MemoryBudget()
        self.frames: list[MemoryFrame] = []

    def __len__(self) -> int:
        return len(self.frames)

    def nbytes(self) -> int:
        return sum(frame.nbytes for frame in self.frames)

    def pinned_usage(self) -> tuple[int, int]:
        """(frames, bytes) taken by the pinned frames."""
        pinned = [frame for frame in self.frames if frame.pinned]
        return len(pinned), sum(frame.nbytes for frame in pinned)

    def add(self, frame: MemoryFrame) -> bool:
        """Adds a frame, then drops unpinned frames, oldest first, until the budget holds.

        Returns whether `frame` itself stayed (an unpinned frame does not when the pinned ones
        leave it no room). A pinned frame that cannot fit is refused with MemoryBudgetError.
        """
        if frame.pinned:
            pinned_frames, pinned_bytes = self.pinned_usage()
            if not self.budget.allows(pinned_frames + 1, pinned_bytes + frame.nbytes):
                raise MemoryBudgetError(
                    f"prompted frame {frame.frame_index} ({frame.nbytes} bytes) does not fit in "
                    f"the memory budget beside {pinned_frames} prompted frames "
                    f"({pinned_bytes} bytes); budget: {self.budget}"
                )
        self.frames.append(frame)
        self._evict()
        return any(kept is frame for kept in self.frames)

    def _evict(self) -> None:
        # Always ends: add() only lets in pinned frames that fit beside the other pinned ones.
        while not self.budget.allows(len(self.frames), self.nbytes()):
            oldest_unpinned = next(index for index, f in enumerate(self.frames) if not f.pinned)
            del self.frames[oldest_unpinned]

    def read(self, query_key: Tensor, object_ids: list[int], top_k: int | None) -> Tensor:
        """Readout (K, value_dim, N) for the query key (key_dim, N) and each of `object_ids`:
        read_memories with a batch of one."""
        [readout] = read_memories([MemoryRead(self, query_key, tuple(object_ids), top_k)])
        return readout

    def starts(self) -> list[int]:
        """Where each frame's positions start in the concatenated memory, and the total."""
        starts = [0]
        for frame in self.frames:
            starts.append(starts[-1] + frame.key.shape[1])
        return starts

    def _groups(self, object_ids: list[int]) -> dict[tuple[int, ...], tuple[int, ...]]:
        """Objects that are in the same memory frames -> the numbers of those frames."""
        frames_of: dict[int, tuple[int, ...]] = {
            object_id: tuple(i for i, f in enumerate(self.frames) if object_id in f.object_ids)
            for object_id in object_ids
        }
        missing = [object_id for object_id, frames in frames_of.items() if not frames]
        if missing:
            raise KeyError(f"objects {missing} have no value in memory")
        groups: dict[tuple[int, ...], list[int]] = {}
        for object_id, frames in frames_of.items():
            groups.setdefault(frames, []).append(object_id)
        return {tuple(group): frames for frames, group in groups.items()}

    @staticmethod
    def _values_of(frame: MemoryFrame, object_ids: tuple[int, ...]) -> Tensor:
        if object_ids == frame.object_ids:
            return frame.values
        rows = [frame.object_ids.index(object_id) for object_id in object_ids]
        return frame.values[rows]

    def clear(self) -> None:
        self.frames.clear()


@dataclass(frozen=True)
class MemoryRead:
    """What one session reads: its memory, its query key (key_dim, N), the objects to read
    (at least one) and how many memory positions each query position keeps (None: all)."""

    bank: MemoryBank
    query: Tensor
    object_ids: tuple[int, ...]
    top_k: int | None


def read_memories(reads: Sequence[MemoryRead]) -> list[Tensor]:
    """Readouts (K, value_dim, N) of many sessions' memories, in batched passes (one per query
    size and top_k): the affinity of every query to its own memory, the top-k softmax and the
    weighted sum of values. Reads the memories, changes none."""
    return in_groups(
        [(tuple(read.query.shape), read.top_k) for read in reads],
        lambda positions: _read_padded([reads[position] for position in positions]),
    )


def _read_padded(reads: Sequence[MemoryRead]) -> list[Tensor]:
    """One batched read of memories of any lengths and object counts, queries of one size.

    Keys and values are padded to the longest memory and the most objects. Every read splits
    into its groups (objects that share memory frames); each group is one row of the batch, and
    the memory positions outside its frames (padding, or frames from before its objects joined)
    get affinity -inf: weight 0 in the softmax, as if they were not there.
    """
    first = reads[0].query
    entries = [
        (number, group, frame_numbers)
        for number, read in enumerate(reads)
        for group, frame_numbers in read.bank._groups(list(read.object_ids)).items()
    ]
    starts = [read.bank.starts() for read in reads]
    length = max(read_starts[-1] for read_starts in starts)
    keys = first.new_zeros((len(reads), first.shape[0], length))
    for number, read in enumerate(reads):
        for frame, start in zip(read.bank.frames, starts[number], strict=False):
            keys[number, :, start : start + frame.key.shape[1]] = frame.key
    affinity = l2_affinity(keys, torch.stack([read.query for read in reads]))  # (B, M, N)
    if len(entries) != len(reads):  # some read has several groups: a row per group
        affinity = affinity[torch.tensor([number for number, _, _ in entries])]
    value_dim = reads[0].bank.frames[0].values.shape[1]
    most_objects = max(len(group) for _, group, _ in entries)
    values = first.new_zeros((len(entries), length, most_objects, value_dim))
    valid = torch.zeros((len(entries), length), dtype=torch.bool, device=first.device)
    for row, (number, group, frame_numbers) in enumerate(entries):
        bank = reads[number].bank
        for frame_number in frame_numbers:
            start, end = starts[number][frame_number], starts[number][frame_number + 1]
            frame_values = MemoryBank._values_of(bank.frames[frame_number], group)
            values[row, start:end, : len(group)] = frame_values.permute(2, 0, 1)
            valid[row, start:end] = True
    if not bool(valid.all()):
        affinity.masked_fill_(~valid.unsqueeze(-1), float("-inf"))
    readout = read_memory_topk(values.flatten(2), affinity, reads[0].top_k)
    readout = readout.reshape(len(entries), most_objects, value_dim, -1)
    by_object: list[dict[int, Tensor]] = [{} for _ in reads]
    for row, (number, group, _) in enumerate(entries):
        by_object[number].update(zip(group, readout[row], strict=False))
    return [
        torch.stack([objects[object_id] for object_id in read.object_ids])
        for objects, read in zip(by_object, reads, strict=True)
    ]


def _tensor_bytes(tensor: Tensor) -> int:
    return tensor.numel() * tensor.element_size()
