"""Results as DAVIS 2017 files: one palette PNG a frame, pixel value = object id (track id).

REST answers them zipped (`Accept: application/zip`), `vidserve segment --davis-out DIR` writes
them into a folder; both name a frame's PNG by its index in the video (00000.png, ...), as the
DAVIS evaluation expects (`<predictions>/<video>/<frame>.png`: write into a folder named like the
video).
"""

import io
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from models.data.davis import write_palette_png
from models.data.rle import decode_rle
from service.schemas import FrameResult, SegmentResponse

ZIP = "application/zip"


def png_name(frame_index: int) -> str:
    return f"{frame_index:05d}.png"


def id_map(frame: FrameResult, height: int, width: int) -> np.ndarray:
    """(H, W) uint8 object ids of one frame's objects, 0 where there is none."""
    ids = np.zeros((height, width), dtype=np.uint8)
    for obj in frame.objects:
        if obj.track_id is None or not 1 <= obj.track_id <= 255:
            raise ValueError(f"object id {obj.track_id} cannot be written to a DAVIS PNG (1..255)")
        ids[decode_rle(obj.mask.model_dump()).astype(bool)] = obj.track_id
    return ids


def write_davis_pngs(frames: Iterable[FrameResult], height: int, width: int, folder: Path) -> int:
    """One palette PNG per frame into `folder` (created); returns how many were written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for frame in frames:
        write_palette_png(folder / png_name(frame.frame_index), id_map(frame, height, width))
        count += 1
    return count


def write_davis(response: SegmentResponse, folder: Path) -> int:
    """The response's frames as palette PNGs into `folder` (write_davis_pngs)."""
    return write_davis_pngs(response.frames, response.height, response.width, folder)


def davis_zip(frames: Iterable[FrameResult], height: int, width: int) -> bytes:
    """The PNGs of write_davis_pngs in a zip (stored: PNGs are compressed already), written in
    memory."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for frame in frames:
            with archive.open(png_name(frame.frame_index), "w") as png:
                write_palette_png(png, id_map(frame, height, width))
    return buffer.getvalue()
