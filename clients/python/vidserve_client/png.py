"""A small PNG encoder (zlib + struct, no imaging library): RGB frames to stream, and DAVIS
palette masks (object ids) to write.

Rows are written with PNG's "Up" filter (each row minus the one above, computed in numpy): for
camera frames it compresses well at zlib's fastest level.
"""

import struct
import zlib

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_RGB, _PALETTE = 2, 3  # PNG colour types
_UP = 2  # PNG filter type


def encode_rgb(image: np.ndarray, level: int = 1) -> bytes:
    """An (H, W, 3) uint8 RGB image as PNG bytes."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"a frame is an (H, W, 3) uint8 RGB array, not {image.dtype} of shape {image.shape}"
        )
    return _png(image.reshape(image.shape[0], -1), image.shape[1], _RGB, level=level)


def encode_palette(ids: np.ndarray, palette: list[int], level: int = 6) -> bytes:
    """(H, W) indices 0..255 with a palette of [r, g, b, r, g, b, ...] as an indexed PNG."""
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.min(initial=0) < 0 or ids.max(initial=0) > 255:
        raise ValueError(f"a palette image is (H, W) with values 0..255, not shape {ids.shape}")
    if len(palette) % 3 or not 0 < len(palette) <= 768:
        raise ValueError("a palette is 1..256 colours of 3 bytes each")
    plte = bytes(palette)
    return _png(ids.astype(np.uint8), ids.shape[1], _PALETTE, plte=plte, level=level)


def davis_palette() -> list[int]:
    """The 256-colour palette of DAVIS (and PASCAL VOC) masks: the bits of the index spread over
    the high bits of R, G and B (the service writes its DAVIS PNGs with the same one)."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


def _png(rows: np.ndarray, width: int, colour: int, plte: bytes = b"", level: int = 6) -> bytes:
    """PNG of (H, bytes per row) uint8 rows, 8 bits per sample."""
    height = rows.shape[0]
    filtered = rows.copy()
    filtered[1:] -= rows[:-1]  # Up filter; uint8 wraps modulo 256 as PNG wants
    lines = np.empty((height, rows.shape[1] + 1), np.uint8)
    lines[:, 0] = _UP
    lines[:, 1:] = filtered
    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    chunks = [_chunk(b"IHDR", header)]
    if plte:
        chunks.append(_chunk(b"PLTE", plte))
    chunks.append(_chunk(b"IDAT", zlib.compress(lines.tobytes(), level)))
    chunks.append(_chunk(b"IEND", b""))
    return _SIGNATURE + b"".join(chunks)


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)
