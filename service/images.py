"""Still images: their size read from the header, decoding within limits, and the frame encoding
that crosses Redis.

`decode_image` reads the width and height from the header first (`image_size`: PNG IHDR, JPEG
SOFn, WebP VP8/VP8L/VP8X, BMP) and refuses an image over the limits before the decoder allocates
anything: a 600-byte JPEG whose header claims 16000x16000 costs microseconds, not 768 MB. Only
those four formats are decoded. Pixels are taken in their stored orientation (an EXIF
orientation tag is ignored), so the decoded array always has the header's size.

`encode_frame` is how a decoded RGB frame crosses Redis (see service/queue/redis_streams.py for
the measurements behind the choice): lossless WebP at its fastest setting, so that a worker gets
exactly the pixels the gateway decoded.
"""

import io
import struct

import cv2
import numpy as np
from PIL import Image

# WebP's own limit on a side; larger frames (far over any served limit) go as PNG.
WEBP_MAX_SIDE = 16383


class ImageError(ValueError):
    """An image the service refuses: `status` 400 (not an image, corrupt) or 413 (too large)."""

    def __init__(self, status: int, title: str, message: str):
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message


# --- the header --------------------------------------------------------------------------------
def image_format(data: bytes) -> str | None:
    """'png', 'jpeg', 'webp' or 'bmp' from the leading bytes; None for anything else."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:2] == b"BM":
        return "bmp"
    return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as the header states it; None for an unknown format or a header that is
    cut short or malformed. Reads only the header: constant work whatever the image claims."""
    try:
        reader = _SIZE_READERS.get(image_format(data) or "")
        return reader(data) if reader is not None else None
    except (struct.error, IndexError):
        return None


def _png_size(data: bytes) -> tuple[int, int] | None:
    # Signature (8), then the first chunk must be IHDR: length (4), type (4), width, height.
    if data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


# Start-of-frame markers: baseline, extended, progressive, lossless; Huffman or arithmetic.
# C4 (DHT), C8 (JPG extension) and CC (DAC) share the range but are not frames.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# Markers without a length field.
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD9)}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos, end = 2, len(data)
    while pos < end:
        if data[pos] != 0xFF:
            return None  # segments must follow one another
        while pos < end and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= end:
            return None
        marker = data[pos]
        pos += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # end of image, or scan data before any frame header
            return None
        (length,) = struct.unpack(">H", data[pos : pos + 2])
        if length < 2:
            return None
        if marker in _JPEG_SOF:
            # length (2), precision (1), height (2), width (2)
            height, width = struct.unpack(">HH", data[pos + 3 : pos + 7])
            return width, height
        pos += length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    body = data[20:]
    if chunk == b"VP8 ":
        # Frame tag (3 bytes), start code 9D 01 2A, then 14-bit width and height (2 scale bits).
        if body[3:6] != b"\x9d\x01\x2a":
            return None
        width, height = struct.unpack("<HH", body[6:10])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        # Signature 0x2F, then 14 bits width - 1 and 14 bits height - 1 (little-endian bits).
        if body[0] != 0x2F:
            return None
        (bits,) = struct.unpack("<I", body[1:5])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        # Flags (1), reserved (3), canvas width - 1 (24 bits), canvas height - 1 (24 bits).
        if len(body) < 10:
            return None
        width = int.from_bytes(body[4:7], "little") + 1
        height = int.from_bytes(body[7:10], "little") + 1
        return width, height
    return None


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    # File header (14), then the DIB header: its size (4), then width and height.
    (header,) = struct.unpack("<I", data[14:18])
    if header == 12:  # BITMAPCOREHEADER: unsigned 16-bit
        return struct.unpack("<HH", data[18:22])
    if header < 16:
        return None
    width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)  # a negative height is a top-down bitmap


_SIZE_READERS = {"png": _png_size, "jpeg": _jpeg_size, "webp": _webp_size, "bmp": _bmp_size}


def is_animated(data: bytes) -> bool:
    """An animated PNG (an acTL chunk before the first IDAT) or WebP (the VP8X animation flag),
    from the header alone. The decoder would silently give such a file's first frame."""
    kind = image_format(data)
    if kind == "webp":
        return data[12:16] == b"VP8X" and len(data) > 20 and bool(data[20] & 0x02)
    if kind != "png":
        return False
    pos = 8
    while pos + 8 <= len(data):  # chunks: length (4), type (4), data, CRC (4)
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        chunk = data[pos + 4 : pos + 8]
        if chunk == b"acTL":
            return True
        if chunk in (b"IDAT", b"IEND"):
            return False
        pos += 12 + length
    return False


# --- decoding ------------------------------------------------------------------------------------
def decode_image(data: bytes, max_width: int, max_height: int, what: str = "frame") -> np.ndarray:
    """JPEG, PNG, WebP or BMP bytes -> (H, W, 3) uint8 RGB, refused (ImageError) when it is not
    one of those, does not decode, or its header states a size over max_width x max_height.
    `what` names the image in the messages ("frame 12")."""
    kind = image_format(data)
    if kind is None:
        raise ImageError(
            400, "Not an image", f"{what} is not an encoded image (JPEG, PNG, WebP or BMP)"
        )
    size = image_size(data)
    if size is None or min(size) < 1:
        raise ImageError(400, "Not an image", f"{what}: the {kind.upper()} header is malformed")
    width, height = size
    if width > max_width or height > max_height:
        raise ImageError(
            413,
            "Image too large",
            f"{what} is {width}x{height}, over the limit {max_width}x{max_height}",
        )
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:
        image = None
    if image is None:
        raise ImageError(
            400, "Undecodable image", f"{what} does not decode as {kind.upper()} (corrupt or cut)"
        )
    if image.shape[:2] != (height, width):
        raise ImageError(
            400,
            "Undecodable image",
            f"{what} decodes to {image.shape[1]}x{image.shape[0]}, its header says "
            f"{width}x{height}",
        )
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


# --- encoding ------------------------------------------------------------------------------------
def encode_frame(image: np.ndarray) -> bytes:
    """An (H, W, 3) uint8 RGB frame as lossless WebP (fastest method): `decode_image` gives back
    exactly these pixels."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"a frame is (H, W, 3) RGB, not {image.shape}")
    if max(image.shape[:2]) > WEBP_MAX_SIDE:
        ok, data = cv2.imencode(
            ".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1]
        )
        if not ok:
            raise ValueError("the frame could not be encoded")
        return data.tobytes()
    out = io.BytesIO()
    Image.fromarray(image).save(out, "WEBP", lossless=True, method=0, quality=0)
    return out.getvalue()
