"""The client's own pieces, without a server: COCO RLE against pycocotools, the PNG encoder
against Pillow, errors from problem+json and gRPC statuses, the retry policy, and the generated
gRPC code being that of the proto."""

import io
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask
from vidserve_client import BadInput, Busy, NotFound, Retry, Unauthenticated, Unavailable
from vidserve_client import rle as client_rle
from vidserve_client.errors import VidserveError, from_http, grpc_error
from vidserve_client.png import davis_palette, encode_palette, encode_rgb

from models.data.davis import davis_palette as server_davis_palette

ROOT = Path(__file__).resolve().parents[2]
SHAPES = [(1, 1), (3, 5), (7, 1), (1, 9), (31, 17), (240, 320), (0, 0), (0, 5)]


def masks(rng):
    """Random masks of odd sizes, empty and full ones, blobs and single pixels."""
    for shape in SHAPES:
        yield np.zeros(shape, bool)
        yield np.ones(shape, bool)
        for density in (0.05, 0.5, 0.95):
            yield rng.random(shape) < density
        if 0 not in shape:
            blob = np.zeros(shape, bool)
            blob[shape[0] // 3 : shape[0] // 3 * 2 + 1, shape[1] // 4 :] = True
            yield blob
            dot = np.zeros(shape, bool)
            dot[-1, -1] = True
            yield dot


def test_rle_is_pycocotools_rle():
    rng = np.random.default_rng(1)
    for mask in masks(rng):
        theirs = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        mine = client_rle.encode(mask)
        assert mine == {"size": list(mask.shape), "counts": theirs["counts"].decode()}
        np.testing.assert_array_equal(client_rle.decode(mine), mask)
        np.testing.assert_array_equal(
            client_rle.decode({"size": theirs["size"], "counts": theirs["counts"]}),
            coco_mask.decode(theirs).astype(bool),
        )


def test_rle_of_long_runs_is_pycocotools_rle():
    """Runs longer than 2**15 and differences of both signs: the multi-character numbers."""
    mask = np.zeros((700, 900), bool)
    mask[:, 300:] = True
    mask[10:20, 5:7] = False
    theirs = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()
    assert client_rle.encode(mask)["counts"] == theirs
    np.testing.assert_array_equal(client_rle.decode({"size": [700, 900], "counts": theirs}), mask)


def test_rle_refuses_what_is_not_rle():
    with pytest.raises(ValueError, match="add up"):
        client_rle.decode({"size": [4, 4], "counts": "3"})
    with pytest.raises(ValueError, match="not in COCO RLE"):
        client_rle.decode({"size": [4, 4], "counts": "0~"})
    with pytest.raises(ValueError, match=r"\[h, w\]"):
        client_rle.decode({"counts": "0"})
    with pytest.raises(ValueError, match="height, width"):
        client_rle.encode(np.zeros((2, 2, 2), bool))


def test_png_frames_and_palettes_read_back_as_written():
    rng = np.random.default_rng(2)
    for height, width in [(1, 1), (5, 7), (240, 320)]:
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        with Image.open(io.BytesIO(encode_rgb(image))) as read:
            assert read.mode == "RGB"
            np.testing.assert_array_equal(np.array(read), image)
        ids = rng.integers(0, 256, (height, width)).astype(np.uint8)
        with Image.open(io.BytesIO(encode_palette(ids, davis_palette()))) as read:
            assert read.mode == "P" and read.getpalette() == server_davis_palette()
            np.testing.assert_array_equal(np.array(read), ids)
    with pytest.raises(ValueError, match="uint8 RGB"):
        encode_rgb(np.zeros((4, 4), np.uint8))


@pytest.mark.parametrize(
    "status, kind",
    [
        (400, BadInput),
        (401, Unauthenticated),
        (404, NotFound),
        (406, BadInput),
        (413, BadInput),
        (415, BadInput),
        (422, BadInput),
        (429, Busy),
        (503, Unavailable),
        (408, VidserveError),
        (500, VidserveError),
    ],
)
def test_http_problems_become_their_error(status, kind):
    body = b'{"type": "about:blank", "title": "T", "status": %d, "detail": "D"}' % status
    headers = {"x-request-id": "abc", "retry-after": "3"}
    error = from_http(status, headers, body)
    assert type(error) is kind
    assert (error.status, error.title, error.detail, error.request_id) == (status, "T", "D", "abc")
    if kind is Busy:
        assert error.retry_after == 3.0


def test_a_body_that_is_not_a_problem_keeps_its_text():
    error = from_http(502, {}, b"<html>bad gateway</html>", "Bad Gateway")
    assert (error.title, error.detail) == ("Bad Gateway", "<html>bad gateway</html>")


@pytest.mark.parametrize(
    "code, kind, status",
    [
        (grpc.StatusCode.INVALID_ARGUMENT, BadInput, 400),
        (grpc.StatusCode.NOT_FOUND, NotFound, 404),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, Busy, 429),
        (grpc.StatusCode.UNAVAILABLE, Unavailable, 503),
        (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated, 401),
        (grpc.StatusCode.INTERNAL, VidserveError, 500),
    ],
)
def test_grpc_statuses_become_their_error(code, kind, status):
    error = grpc_error(code, "why", (("retry-after", "2"), ("x-request-id", "r1")))
    assert type(error) is kind and error.status == status and error.grpc_code == code.name
    assert (error.detail, error.request_id) == ("why", "r1")
    if kind is Busy:
        assert error.retry_after == 2.0


def test_retry_waits_for_busy_and_backs_off_when_unavailable():
    retry = Retry(attempts=4, max_wait_s=5, backoff_s=0.5)
    busy = Busy(429, "Busy", retry_after=2.0)
    unavailable = Unavailable(503, "No worker")
    assert retry.wait_before_next(busy, attempt=1, waited_s=0) == 2.0
    assert retry.wait_before_next(busy, attempt=3, waited_s=2) == 2.0
    assert retry.wait_before_next(busy, attempt=4, waited_s=0) is None  # attempts used up
    assert retry.wait_before_next(busy, attempt=2, waited_s=4) is None  # over max_wait_s
    assert [retry.wait_before_next(unavailable, k, 0) for k in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert retry.wait_before_next(NotFound(404, "Unknown model"), 1, 0) is None
    assert Retry(attempts=1).wait_before_next(busy, 1, 0) is None


def test_the_generated_grpc_code_is_that_of_the_proto():
    check = subprocess.run(
        [sys.executable, str(ROOT / "clients" / "python" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    source = (ROOT / "clients/python/vidserve_client/_proto/vidserve_pb2_grpc.py").read_text()
    assert "from . import vidserve_pb2" in source and "service.gateway" not in source
