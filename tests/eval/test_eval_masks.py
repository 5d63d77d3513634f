"""The RLE checks: our decoder of compressed counts against masks encoded by pycocotools."""

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from models.eval.errors import EvalInputError
from models.eval.masks import checked_rle, checked_rles, decode_counts, run_totals


def runs_of(mask: np.ndarray) -> list[int]:
    """Column-major run lengths, starting with a (possibly empty) run of zeros."""
    flat = mask.flatten(order="F")
    edges = np.concatenate(([0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]))
    runs = np.diff(edges).tolist()
    return [0, *runs] if flat[0] else runs


def random_masks(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for k in range(count):
        height, width = (int(v) for v in rng.integers(1, 120, 2))
        if k % 3 == 0:  # one block: long runs, several characters per number
            mask = np.zeros((height, width), dtype=np.uint8)
            mask[rng.integers(0, height) :, rng.integers(0, width) :] = 1
        else:  # noise: many short runs, negative deltas
            mask = (rng.random((height, width)) < rng.random()).astype(np.uint8)
        yield mask


def test_decoded_counts_equal_the_runs_of_the_mask():
    for mask in random_masks(200):
        rle = mask_utils.encode(np.asfortranarray(mask))
        assert decode_counts(rle["counts"]).tolist() == runs_of(mask)


def test_batched_totals_across_chunk_boundaries():
    masks = list(random_masks(60, seed=1))
    strings = [mask_utils.encode(np.asfortranarray(m))["counts"] for m in masks]
    strings[7] = b"0000"  # four zero runs: well formed, but they cover nothing
    strings[20] = strings[20][:-1] + b"o"  # last character says "more follows": cut off
    expected = [m.size for m in masks]
    expected[7], expected[20] = 0, -1
    for chunk in (1, 50, 1 << 16):  # one string per chunk, a few, all at once
        assert run_totals(strings, chunk_chars=chunk).tolist() == expected


@pytest.mark.parametrize(
    "counts",
    [
        "0000",  # runs of 0: nothing covered
        "P1370000",  # too short for 10 x 10
        "P13700000l1",  # too long for 10 x 10
        "P137\x7f",  # a character outside the alphabet
        "P137é",  # not ASCII
        "P1o",  # cut off in the middle of a number
        "",
        [50, 40],  # uncompressed, 90 of 100 pixels
        [50, -10, 60],  # a negative run
        [50, 50.0],  # not integers
    ],
)
def test_malformed_counts_are_refused(counts):
    with pytest.raises(EvalInputError, match=r"^entry 3: malformed RLE"):
        checked_rle({"size": [10, 10], "counts": counts}, (10, 10), "entry 3")


def test_good_counts_in_every_form_are_accepted():
    mask = np.zeros((10, 10), dtype=np.uint8, order="F")
    mask[2:5, 3:7] = 1
    rle = mask_utils.encode(mask)
    forms = [
        rle,
        {"size": [10, 10], "counts": rle["counts"].decode()},
        {"size": (10, 10), "counts": runs_of(mask)},
    ]
    for checked in checked_rles(forms, [(10, 10)] * 3, lambda i: f"#{i}"):
        assert isinstance(checked["counts"], bytes)
        assert int(mask_utils.area(checked)) == 12


@pytest.mark.parametrize(
    ("seg", "message"),
    [
        ({"size": [10, 12], "counts": "PQ3"}, "x: RLE size [10, 12] != image size [10, 10]"),
        ({"size": [10], "counts": "PQ3"}, "x: RLE size [10] is not [height, width]"),
        ({"counts": "PQ3"}, "x: segmentation is not an RLE"),
        ({"size": [10, 10], "counts": 5}, "x: RLE counts must be a string or a list"),
    ],
)
def test_shape_problems_are_named(seg, message):
    with pytest.raises(EvalInputError, match="^" + message.replace("[", r"\[").replace("]", r"\]")):
        checked_rle(seg, (10, 10), "x", size_name="image")
