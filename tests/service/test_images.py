"""service/images.py: sizes from headers, decoding within limits, the frame encoding."""

import io
import struct
import time
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

import service.images as images
from service.images import ImageError, decode_image, encode_frame, image_size


def picture(width: int = 40, height: int = 30, seed: int = 0) -> np.ndarray:
    """An RGB image with edges and noise (something a codec has to work on)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image[: height // 2, : width // 2] = (200, 30, 40)
    return image


def encoded(image: np.ndarray, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, fmt, **options)
    return out.getvalue()


def jpeg_bomb(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header claims width x height."""
    data = bytearray(encoded(picture(16, 8), "JPEG", quality=50))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def png_bomb(width: int, height: int) -> bytes:
    """A real small PNG whose IHDR claims width x height (CRC fixed, so it looks valid)."""
    data = bytearray(encoded(picture(16, 8), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.fixture
def no_decoder(monkeypatch):
    """Fail the test if the decoder is reached at all."""

    def refuse(*args, **kwargs):
        raise AssertionError("the decoder ran on an image the header check should refuse")

    monkeypatch.setattr(images.cv2, "imdecode", refuse)


# --- image_size ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fmt", "options"),
    [
        ("PNG", {}),
        ("JPEG", {"quality": 90}),
        ("JPEG", {"quality": 90, "progressive": True}),
        ("WEBP", {"lossless": True}),  # VP8L
        ("WEBP", {"quality": 60}),  # VP8
        ("BMP", {}),
    ],
)
def test_image_size_reads_the_header(fmt, options):
    assert image_size(encoded(picture(37, 21), fmt, **options)) == (37, 21)


def test_image_size_of_extended_webp_and_core_bmp():
    exif = Image.Exif()
    exif[0x010E] = "a frame"  # ImageDescription: metadata needs the extended (VP8X) layout
    webp = encoded(picture(33, 17), "WEBP", quality=70, exif=exif)
    assert webp[12:16] == b"VP8X" and image_size(webp) == (33, 17)
    # An OS/2 bitmap: 12-byte core header with 16-bit width and height.
    core = b"BM" + bytes(12) + struct.pack("<IHHHH", 12, 300, 200, 1, 24)
    assert image_size(core) == (300, 200)


def test_image_size_of_what_is_not_an_image():
    assert image_size(b"") is None
    assert image_size(b"hello, this is text and not an image at all") is None
    assert image_size(b"GIF89a" + bytes(20)) is None  # a format not served
    assert image_size(b"\x89PNG\r\n\x1a\n") is None  # cut before IHDR
    assert image_size(b"\xff\xd8\xff\xe0\x00\x10JFIF") is None  # cut before any frame header
    assert image_size(jpeg_bomb(16000, 16000)) == (16000, 16000)


# --- decode_image ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fmt", "options"), [("PNG", {}), ("WEBP", {"lossless": True}), ("BMP", {})]
)
def test_lossless_formats_decode_to_the_same_pixels(fmt, options):
    image = picture(41, 23)
    decoded = decode_image(encoded(image, fmt, **options), 1920, 1080)
    assert decoded.dtype == np.uint8 and decoded.shape == (23, 41, 3)
    np.testing.assert_array_equal(decoded, image)


def test_jpeg_decodes_to_rgb():
    image = np.zeros((24, 32, 3), np.uint8)
    image[..., 0] = 220  # red: a BGR mix-up would show as blue
    decoded = decode_image(encoded(image, "JPEG", quality=95), 1920, 1080)
    assert decoded.shape == (24, 32, 3)
    assert decoded[..., 0].min() > 200 and decoded[..., 2].max() < 30


def test_grayscale_and_alpha_come_back_as_rgb():
    gray = encoded(picture(20, 10)[..., 0], "PNG")
    assert decode_image(gray, 100, 100).shape == (10, 20, 3)
    rgba = encoded(np.dstack([picture(20, 10), np.zeros((10, 20), np.uint8)]), "PNG")
    assert decode_image(rgba, 100, 100).shape == (10, 20, 3)


@pytest.mark.parametrize("bomb", [jpeg_bomb, png_bomb])
def test_a_bomb_is_refused_from_its_header_at_once(bomb, no_decoder):
    data = bomb(16000, 16000)
    assert len(data) < 2000
    started = time.perf_counter()
    with pytest.raises(ImageError) as refused:
        decode_image(data, 1920, 1080, what="frame 3")
    assert time.perf_counter() - started < 0.01
    assert refused.value.status == 413
    assert str(refused.value) == "frame 3 is 16000x16000, over the limit 1920x1080"


def test_limits_are_inclusive():
    for width, height in [(64, 48), (63, 48), (64, 47)]:
        assert decode_image(encoded(picture(width, height), "PNG"), 64, 48).shape == (
            height,
            width,
            3,
        )
    for width, height in [(65, 48), (64, 49)]:
        with pytest.raises(ImageError) as refused:
            decode_image(encoded(picture(width, height), "PNG"), 64, 48)
        assert refused.value.status == 413
        assert f"{width}x{height}" in str(refused.value)


def test_a_header_within_the_limits_over_too_little_data_is_refused():
    with pytest.raises(ImageError) as refused:
        decode_image(png_bomb(1920, 1080), 1920, 1080)
    assert refused.value.status == 400
    assert "does not decode as PNG" in str(refused.value)


@pytest.mark.parametrize(
    ("fmt", "options"), [("PNG", {}), ("JPEG", {}), ("WEBP", {"lossless": True})]
)
def test_truncated_data_is_refused(fmt, options):
    data = encoded(picture(64, 48), fmt, **options)
    with pytest.raises(ImageError) as refused:
        decode_image(data[: len(data) // 2], 1920, 1080, what="frame 7")
    assert refused.value.status == 400
    assert str(refused.value).startswith("frame 7 ")


@pytest.mark.parametrize(
    "data", [b"", b"not an image", b"GIF89a" + bytes(64), bytes(range(256)) * 4]
)
def test_what_is_not_an_image_is_refused(data, no_decoder):
    with pytest.raises(ImageError) as refused:
        decode_image(data, 1920, 1080, what="frame 0")
    assert refused.value.status == 400
    assert isinstance(refused.value, ValueError)
    assert str(refused.value) == "frame 0 is not an encoded image (JPEG, PNG, WebP or BMP)"


def test_a_malformed_header_is_refused(no_decoder):
    zero = jpeg_bomb(0, 100)  # a JPEG whose height comes later (DNL): not served
    with pytest.raises(ImageError) as refused:
        decode_image(zero, 1920, 1080)
    assert refused.value.status == 400 and "header" in str(refused.value)


# --- encode_frame ---------------------------------------------------------------------------------
def test_encode_frame_round_trips_exactly():
    image = picture(320, 240, seed=3)
    data = encode_frame(image)
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    assert image_size(data) == (320, 240)
    np.testing.assert_array_equal(decode_image(data, 320, 240), image)


def test_encode_frame_takes_views_and_refuses_other_shapes():
    image = picture(64, 48)
    view = image[:, ::-1]  # not contiguous
    np.testing.assert_array_equal(decode_image(encode_frame(view), 64, 48), view)
    with pytest.raises(ValueError):
        encode_frame(image[..., 0])


def test_encode_frame_of_a_1280x720_frame_is_under_a_megabyte():
    # Smooth regions and texture, as a decoded video frame has.
    y, x = np.mgrid[0:720, 0:1280]
    image = np.dstack([(x // 5) % 256, (y // 3) % 256, (x + y) // 8 % 256]).astype(np.uint8)
    image[400:] = picture(1280, 320, seed=1) // 32 + 100
    data = encode_frame(image)
    assert len(data) < 1_000_000
    np.testing.assert_array_equal(
        cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), 1), cv2.COLOR_BGR2RGB), image
    )
