"""Validation of COCO RLE masks before they reach pycocotools.

pycocotools trusts its input: an RLE whose runs do not add up to height x width is given a wrong
area without complaint, and decoding one can fail deep inside C. Every mask an evaluator reads goes
through `checked_rle`, so that a bad entry gets a message that names it.
"""

from collections.abc import Callable

import numpy as np
from pycocotools import mask as mask_utils

from models.eval.errors import EvalInputError


def checked_rles(
    segs: list, sizes: list[tuple[int, int]], where: Callable[[int], str], size_name: str = "video"
) -> list[dict]:
    """Valid RLEs of the given (height, width) sizes, in pycocotools' form (bytes counts).

    `segs[i]` may have str, bytes or uncompressed list counts. A bad one raises EvalInputError
    whose message starts with `where(i)` ("result #2 frame 5") and names the problem; `size_name`
    says what the expected size belongs to ("video", "image"). All compressed counts are checked
    in one vectorised pass, which keeps large result files fast.
    """
    out: list[dict] = []
    strings: list[bytes] = []
    string_items: list[int] = []
    for i, (seg, size) in enumerate(zip(segs, sizes, strict=True)):
        rle = _checked_shape(seg, size, where, i, size_name)
        out.append(rle)
        if isinstance(rle["counts"], bytes):
            strings.append(rle["counts"])
            string_items.append(i)
    totals = run_totals(strings)
    for i, total in zip(string_items, totals, strict=True):
        height, width = out[i]["size"]
        if total != height * width:
            raise EvalInputError(
                f"{where(i)}: malformed RLE (counts do not describe a {height}x{width} mask)"
            )
    return out


def checked_rle(seg, size: tuple[int, int], where: str, size_name: str = "video") -> dict:
    """`checked_rles` for one mask."""
    return checked_rles([seg], [size], lambda _: where, size_name)[0]


def empty_rle(height: int, width: int) -> dict:
    return mask_utils.encode(np.zeros((height, width), dtype=np.uint8, order="F"))


def _checked_shape(seg, size, where: Callable[[int], str], i: int, size_name: str) -> dict:
    """Checks the size and the counts' type; list counts are checked and compressed here."""
    if not isinstance(seg, dict) or "size" not in seg or "counts" not in seg:
        raise EvalInputError(f"{where(i)}: segmentation is not an RLE with 'size' and 'counts'")
    got = _rle_size(seg["size"], where(i))
    expected = [int(size[0]), int(size[1])]
    if got != expected:
        raise EvalInputError(f"{where(i)}: RLE size {got} != {size_name} size {expected}")
    counts = seg["counts"]
    if isinstance(counts, list):
        runs = _list_runs(counts)
        if runs is None or runs.sum() != got[0] * got[1]:
            raise EvalInputError(f"{where(i)}: malformed RLE (runs do not cover {got[0]}x{got[1]})")
        return mask_utils.frPyObjects({"size": got, "counts": runs.tolist()}, *got)
    if isinstance(counts, str):
        counts = counts.encode() if counts.isascii() else b"\x00"  # \x00 never decodes
    if not isinstance(counts, bytes):
        raise EvalInputError(f"{where(i)}: RLE counts must be a string or a list of run lengths")
    return {"size": got, "counts": counts}


def _rle_size(size, where: str) -> list[int]:
    ok = (
        isinstance(size, list | tuple)
        and len(size) == 2
        and all(isinstance(v, int | np.integer) and v > 0 for v in size)
    )
    if not ok:
        raise EvalInputError(f"{where}: RLE size {size!r} is not [height, width]")
    return [int(size[0]), int(size[1])]


def _list_runs(counts: list) -> np.ndarray | None:
    if not all(isinstance(c, int | np.integer) and not isinstance(c, bool) for c in counts):
        return None
    runs = np.asarray(counts, dtype=np.int64)
    return runs if (runs >= 0).all() else None


def run_totals(strings: list[bytes], chunk_chars: int = 1 << 16) -> np.ndarray:
    """Sum of the run lengths of each compressed RLE string, -1 where a string is malformed.
    Strings are decoded in chunks of about `chunk_chars` characters: arrays that stay in the CPU
    cache make this several times faster than one pass over everything."""
    totals = []
    begin = 0
    while begin < len(strings):
        end, chars = begin, 0
        while end < len(strings) and (chars < chunk_chars or end == begin):
            chars += len(strings[end])
            end += 1
        runs, string_of_run, bad = _decode_all(strings[begin:end])
        chunk = np.bincount(string_of_run, weights=runs, minlength=end - begin).astype(np.int64)
        chunk[bad] = -1
        totals.append(chunk)
        begin = end
    return np.concatenate(totals) if totals else np.zeros(0, dtype=np.int64)


def decode_counts(counts: bytes) -> np.ndarray | None:
    """Run lengths of one compressed RLE string, or None if it is malformed."""
    runs, _, bad = _decode_all([counts])
    return None if bad[0] else runs


def _decode_all(strings: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode many compressed RLE strings at once: (runs, string index of each run, bad flags).

    The format (pycocotools' rleToString): each number is written in 5-bit groups, low bits
    first, as the characters 48 + group; bit 0x20 of a group says "more groups follow", bit 0x10
    of the last group is the sign. From the third number of a string on, each is stored as the
    difference to the number two places before it.
    """
    count = len(strings)
    lengths = np.fromiter(map(len, strings), dtype=np.int64, count=count)
    groups = np.frombuffer(b"".join(strings), dtype=np.uint8).astype(np.int64) - 48
    string_of_group = np.repeat(np.arange(count), lengths)
    bad = np.zeros(count, dtype=bool)
    bad[string_of_group[(groups < 0) | (groups > 63)]] = True
    more = (groups & 0x20) != 0
    last_groups = np.cumsum(lengths)[lengths > 0] - 1
    bad[string_of_group[last_groups[more[last_groups]]]] = True  # last number cut off
    more[last_groups] = False  # so that no number runs on into the next string
    ends = np.flatnonzero(~more)
    if ends.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), bad
    starts = np.concatenate(([0], ends[:-1] + 1))
    position = np.arange(groups.size) - np.repeat(starts, ends - starts + 1)
    bad[string_of_group[position > 11]] = True  # over 60 bits: no real run is that long
    position = np.minimum(position, 11)
    values = np.add.reduceat((groups & 0x1F) << (5 * position), starts)
    negative = (groups[ends] & 0x10) != 0
    values[negative] -= np.int64(1) << (5 * (position[ends][negative] + 1))
    string_of_number = string_of_group[ends]
    runs = _undo_deltas(values, string_of_number, count)
    bad[string_of_number[runs < 0]] = True
    return runs, string_of_number, bad


def _undo_deltas(values: np.ndarray, string_of_number: np.ndarray, count: int) -> np.ndarray:
    """Runs from stored numbers: cumulative sums along the odd-indexed numbers and along the
    even-indexed ones from the third on, restarted at each string (the first stands alone)."""
    first = np.searchsorted(string_of_number, np.arange(count))[string_of_number]
    index = np.arange(values.size) - first
    odd = index % 2 == 1
    even = (index % 2 == 0) & (index > 0)
    runs = values.copy()
    for chain in (odd, even):
        total = np.cumsum(np.where(chain, values, 0))
        runs[chain] = (total - total[first])[chain]  # total[first]: the earlier strings' sum
    return runs
