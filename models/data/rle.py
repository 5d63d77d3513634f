"""COCO run-length encoding, with `counts` as str so that RLEs go straight into JSON."""

import re

import numpy as np
from pycocotools import mask as mask_utils

# Compressed counts are LEB128-like groups of 6 bits offset by 48: characters '0' (48) to 'o' (111).
_COMPRESSED_COUNTS = re.compile(r"[0-o]*")


def encode_mask(mask: np.ndarray) -> dict:
    """Binary (H, W) mask -> compressed COCO RLE {"size": [h, w], "counts": str}."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode()}


def to_compressed(rle: dict) -> dict:
    """Any COCO RLE (compressed, bytes counts, or uncompressed list counts) -> pycocotools' form.

    Checks what is cheap to check (types, size, the alphabet of compressed counts, the total of
    uncompressed runs) and raises ValueError, without decoding the mask.
    """
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError("an RLE is a dict with 'size' and 'counts'")
    size = rle["size"]
    if not (
        isinstance(size, list | tuple)
        and len(size) == 2
        and all(isinstance(v, int) and v >= 0 for v in size)
    ):
        raise ValueError(f"RLE size {size!r} is not [height, width]")
    h, w = size
    counts = rle["counts"]
    if isinstance(counts, list):
        if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != h * w:
            raise ValueError(f"uncompressed RLE counts do not add up to {h}x{w} pixels")
        return mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    if isinstance(counts, bytes):
        counts = counts.decode("ascii", errors="replace")
    if not isinstance(counts, str) or not _COMPRESSED_COUNTS.fullmatch(counts):
        raise ValueError(f"RLE counts of type {type(counts).__name__} are not COCO counts")
    return {"size": [h, w], "counts": counts.encode()}


def decode_rle(rle: dict) -> np.ndarray:
    """COCO RLE (any form) -> (H, W) uint8 mask of 0/1."""
    return mask_utils.decode(to_compressed(rle))


def mask_box_xyxy(mask: np.ndarray) -> list[float] | None:
    """Tight box [x1, y1, x2, y2] (x2, y2 exclusive) of a binary mask, None if it is empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
