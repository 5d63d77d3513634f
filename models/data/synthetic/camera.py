"""What a real camera does to a drawn frame in the wide world: lighting, motion blur, JPEG
artefacts. Each changes pixels only; the ground truth stays the drawing (as annotators outline an
object on a blurred, dark or blocky frame where it is, not where its smear reaches)."""

import cv2
import numpy as np

from models.data.synthetic.world import Look


def apply_light_and_blur(frame: np.ndarray, look: Look, t: int) -> np.ndarray:
    """Light first, then blur: the blur smears what the sensor received."""
    lit = frame.astype(np.float32) * (look.gain[t] * look.cast[t]).astype(np.float32)
    frame = np.clip(lit, 0, 255).astype(np.uint8)
    if look.blur_length >= 1.5:
        frame = cv2.filter2D(frame, -1, blur_kernel(look.blur_length, look.blur_angle))
    return frame


def blur_kernel(length: float, angle: float) -> np.ndarray:
    """A normalised line of `length` pixels through the kernel's centre at `angle`."""
    size = int(np.ceil(length)) | 1  # odd, so the line is centred
    kernel = np.zeros((size, size), np.float32)
    c = size // 2
    dx, dy = np.cos(angle) * (length - 1) / 2, np.sin(angle) * (length - 1) / 2
    # Sub-pixel end points (shift=4): a short line at any angle keeps its length.
    ends = np.round(np.array([[c - dx, c - dy], [c + dx, c + dy]]) * 16).astype(np.int32)
    cv2.line(kernel, tuple(ends[0]), tuple(ends[1]), 1.0, 1, cv2.LINE_AA, shift=4)
    return kernel / kernel.sum()


def jpeg_roundtrip(frame: np.ndarray, quality: int) -> np.ndarray:
    """The frame as a JPEG of `quality` decodes: blocks, ringing and smeared chroma."""
    ok, data = cv2.imencode(".jpg", frame[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok, "JPEG encoding failed"
    return np.ascontiguousarray(cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1])
