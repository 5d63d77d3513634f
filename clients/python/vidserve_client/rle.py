"""COCO run-length encoding in numpy: the compressed string form of pycocotools (maskApi.c
rleToString / rleFrString), so that masks travel as the service sends them, without pycocotools.

A mask is read column by column (Fortran order); `counts` alternates runs of 0s and 1s, starting
with 0s. Each run is written as the difference to the run two before it (from the fourth run on),
in groups of 5 bits with a continuation bit, each group offset by 48 to be a printable character.
"""

import numpy as np

_OFFSET = 48  # '0'


def encode(mask: np.ndarray) -> dict:
    """A binary (H, W) mask -> {"size": [h, w], "counts": "<compressed RLE>"}."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask is (height, width), not of shape {mask.shape}")
    height, width = mask.shape
    return {"size": [int(height), int(width)], "counts": _counts_to_string(_runs(mask))}


def decode(rle: dict) -> np.ndarray:
    """{"size": [h, w], "counts": str (compressed) or list (uncompressed)} -> (H, W) bool mask."""
    height, width = _size(rle)
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    runs = _counts_from_string(counts) if isinstance(counts, str) else list(counts)
    if sum(runs) != height * width or any(run < 0 for run in runs):
        raise ValueError(f"RLE counts do not add up to {height}x{width} pixels")
    values = np.arange(len(runs)) % 2 == 1  # runs alternate 0s and 1s, starting with 0s
    flat = np.repeat(values, runs)
    return flat.reshape((height, width), order="F")


def _size(rle: dict) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in rle["size"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"an RLE is {{'size': [h, w], 'counts': ...}}, not {rle!r:.80}") from None
    if height < 0 or width < 0:
        raise ValueError(f"RLE size {[height, width]} is negative")
    return height, width


def _runs(mask: np.ndarray) -> list[int]:
    """Lengths of the alternating runs of 0s and 1s in column-major order, 0s first."""
    flat = mask.ravel(order="F").astype(bool)
    if flat.size == 0:
        return [0]
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat[0] else runs


def _counts_to_string(runs: list[int]) -> str:
    """maskApi.c rleToString."""
    chars = []
    for i, run in enumerate(runs):
        x = run - runs[i - 2] if i > 2 else run
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift: a negative x ends at -1
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            chars.append(chr(c + _OFFSET))
    return "".join(chars)


def _counts_from_string(text: str) -> list[int]:
    """maskApi.c rleFrString."""
    runs: list[int] = []
    p = 0
    while p < len(text):
        x = k = 0
        more = True
        while more:
            if p >= len(text):
                raise ValueError("RLE counts end in the middle of a number")
            c = ord(text[p]) - _OFFSET
            if not 0 <= c < 64:
                raise ValueError(f"character {text[p]!r} is not in COCO RLE counts")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)  # sign extension
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs
