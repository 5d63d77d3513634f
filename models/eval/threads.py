"""Running per-image work on all cores."""

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor


def map_in_threads(function: Callable, items: Iterable) -> Iterator:
    """`function` over `items` in a thread pool, results in item order (so that sums come out
    the same on every run). Worth it where the work releases the GIL: PNG decoding, numpy and
    OpenCV operations on whole frames. An exception reaches the caller at its item."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        yield from pool.map(function, items)
