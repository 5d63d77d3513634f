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

A read has two halves: `MemoryBank.reads` says what a read takes from one memory (no copy),
and `read_batch` runs the reads of many sessions in one pass, their memories padded to the
longest and masked (a batching worker reads all the sessions of a round together).
"""

from __future__ import annotations

from collections.abc import Sequence
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
        """Readout (K, value_dim, N) for the query key (key_dim, N) and each of `object_ids`:
        read_batch over this bank's reads alone."""
        reads = self.reads(object_ids)
        queries = query_key.expand(len(reads), -1, -1)
        readouts: dict[int, Tensor] = {}
        for read, readout in zip(reads, read_batch(queries, reads, top_k), strict=True):
            readouts.update(zip(read.object_ids, readout, strict=True))
        return torch.stack([readouts[object_id] for object_id in object_ids])

    def reads(self, object_ids: list[int]) -> list[MemoryRead]:
        """What reading `object_ids` takes: one MemoryRead per group of objects that are in the
        same memory frames (views of the frames' tensors: nothing is copied or changed)."""
        return [
            MemoryRead(
                group,
                tuple(self.frames[i].key for i in frame_numbers),
                tuple(self._values_of(self.frames[i], group) for i in frame_numbers),
            )
            for group, frame_numbers in self._groups(object_ids).items()
        ]

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
    """The memory frames that hold the values of a group of objects, as one read takes them."""

    object_ids: tuple[int, ...]
    keys: tuple[Tensor, ...]  # per frame: (key_dim, hw)
    values: tuple[Tensor, ...]  # per frame: (len(object_ids), value_dim, hw)

    @property
    def positions(self) -> int:
        return sum(key.shape[1] for key in self.keys)


# On a CPU, reads go through read_batch in chunks whose affinity stays within this many bytes:
# a read's affinity, top-k and weighted sum then run while the affinity is in cache. Measured on
# 2 cores, 4 full memories (320x240, 16 frames: 5.8 MB of affinity each): 89 ms in one pass,
# 60 ms one read a pass. On a GPU every read of a round goes in one pass.
CPU_READ_CHUNK_BYTES = 4 << 20


def read_batch(query_keys: Tensor, reads: Sequence[MemoryRead], top_k: int | None) -> list[Tensor]:
    """The readouts (len(read.object_ids), value_dim, N) of G reads, each against its own query
    key: query_keys (G, key_dim, N), one per read (the reads of one session share its query;
    those of different sessions come from different memories).

    Reads go in batched passes (see _read_chunk), in chunks on a CPU (CPU_READ_CHUNK_BYTES).
    A read's result is what it would give alone, up to float rounding.
    """
    if query_keys.device.type != "cpu":
        return _read_chunk(query_keys, reads, top_k)
    readouts: list[Tensor] = []
    queries = query_keys.shape[-1] * query_keys.element_size()
    start = 0
    while start < len(reads):
        end = start + 1
        while (
            end < len(reads)
            and (end + 1 - start) * queries * max(read.positions for read in reads[start : end + 1])
            <= CPU_READ_CHUNK_BYTES
        ):
            end += 1
        readouts += _read_chunk(query_keys[start:end], reads[start:end], top_k)
        start = end
    return readouts


def _read_chunk(query_keys: Tensor, reads: Sequence[MemoryRead], top_k: int | None) -> list[Tensor]:
    """One batched pass over reads. Memories of different lengths are padded to the longest,
    and objects to the most any read has: padded memory positions get an affinity of -inf
    before the top-k, so they are never among a query's top k and take no weight in its
    softmax."""
    longest = max(read.positions for read in reads)
    most = max(len(read.object_ids) for read in reads)
    key, value = reads[0].keys[0], reads[0].values[0]
    # Filled below, padding included (zeros: padded values meet a weight of 0, never a NaN).
    keys = key.new_empty((len(reads), key.shape[0], longest))
    values = value.new_empty((len(reads), most, value.shape[1], longest))
    padded = torch.zeros((len(reads), longest), dtype=torch.bool, device=key.device)
    for number, read in enumerate(reads):
        start = 0
        for frame_key, frame_values in zip(read.keys, read.values, strict=True):
            end = start + frame_key.shape[1]
            keys[number, :, start:end] = frame_key
            values[number, : len(read.object_ids), :, start:end] = frame_values
            start = end
        keys[number, :, start:] = 0
        values[number, : len(read.object_ids), :, start:] = 0
        values[number, len(read.object_ids) :] = 0
        padded[number, start:] = True
    affinity = l2_affinity(keys, query_keys)  # (G, M, N)
    if any(read.positions < longest for read in reads):
        affinity.masked_fill_(padded[:, :, None], float("-inf"))
    weights = topk_softmax(affinity, top_k)
    # Objects' values flattened into rows, so that one (M, N) weight matrix a read serves all
    # its objects without being copied for each (a broadcast matmul would copy it).
    readouts = read_memory(values.flatten(1, 2), weights).view(*values.shape[:3], -1)
    return [readouts[number, : len(read.object_ids)] for number, read in enumerate(reads)]


def _tensor_bytes(tensor: Tensor) -> int:
    return tensor.numel() * tensor.element_size()
