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

from dataclasses import dataclass

import torch
from torch import Tensor

from models.vos.ops import l2_affinity, read_memory, topk_softmax


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
        """Readout (K, value_dim, N) for the query key (key_dim, N) and each of `object_ids`."""
        keys = torch.cat([frame.key for frame in self.frames], dim=1)
        affinity = l2_affinity(keys, query_key)
        readouts: dict[int, Tensor] = {}
        for group, frame_numbers in self._groups(object_ids).items():
            weights = topk_softmax(self._rows_of(affinity, frame_numbers), top_k)
            values = torch.cat([self._values_of(self.frames[i], group) for i in frame_numbers], 2)
            readouts.update(zip(group, read_memory(values, weights), strict=True))
        return torch.stack([readouts[object_id] for object_id in object_ids])

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

    def _rows_of(self, affinity: Tensor, frame_numbers: tuple[int, ...]) -> Tensor:
        """The affinity rows (memory positions) of those frames."""
        if len(frame_numbers) == len(self.frames):
            return affinity
        starts = [0]
        for frame in self.frames:
            starts.append(starts[-1] + frame.key.shape[1])
        return torch.cat([affinity[starts[i] : starts[i + 1]] for i in frame_numbers])

    @staticmethod
    def _values_of(frame: MemoryFrame, object_ids: tuple[int, ...]) -> Tensor:
        if object_ids == frame.object_ids:
            return frame.values
        rows = [frame.object_ids.index(object_id) for object_id in object_ids]
        return frame.values[rows]

    def clear(self) -> None:
        self.frames.clear()


def _tensor_bytes(tensor: Tensor) -> int:
    return tensor.numel() * tensor.element_size()
