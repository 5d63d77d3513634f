"""Results as COCO panoptic files: per frame a PNG whose RGB encodes segment ids (id = R + 256 G +
256^2 B), and a JSON with `images`, `annotations` (the PNG's `file_name` and `segments_info`:
id, category_id, area, bbox [x, y, w, h], iscrowd 0) and `categories` (with `isthing`), as the
COCO panoptic API (and models.data.coco_panoptic, models.eval.panoptic) reads.

- segment ids are the response's (unique within a frame; a frame's segments never overlap), area
  and bbox are counted on the PNG, so the JSON and the PNG always agree;
- a frame's PNG is `<png_root>/<video>/<frame index:05d>.png`, `png_root` by default the folder
  named like the JSON (`panoptic_val.json` -> `panoptic_val/`), where the readers look;
- `image_id`: the frame index, or the id a {frame index: image id} mapping gives (frames it
  lacks are left out); category ids: the 1-based positions in the model's class list (things
  and stuff) unless a {name: id} mapping is given; `categories` lists those the segments use.

REST answers them zipped (`Accept: application/zip`, coco_panoptic_zip): `panoptic.json` and
`panoptic/<video>/<frame>.png`, so that the unpacked folder reads back as written.
"""

import io
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from models.data.coco_panoptic import (
    PanopticCategory,
    PanopticImage,
    segments_from_ids,
    write_coco_panoptic,
    write_panoptic_png,
)
from models.data.rle import decode_rle
from service.schemas import FrameResult, SegmentResponse
from service.writers.common import category_id, category_ids, image_id_of


def panoptic_ids(frame: FrameResult, height: int, width: int) -> np.ndarray:
    """(H, W) segment id per pixel of one frame, 0 (void) where no segment is."""
    ids = np.zeros((height, width), dtype=np.int64)
    for segment in frame.segments:
        if not 1 <= segment.id < 256**3:
            raise ValueError(f"segment id {segment.id} cannot be written to an RGB PNG")
        ids[decode_rle(segment.mask.model_dump()).astype(bool)] = segment.id
    return ids


def panoptic_images(
    response: SegmentResponse,
    classes: Sequence[str] | Mapping[str, int],
    png_root: Path | str,
    *,
    video: str = "video",
    image_ids: Mapping[int, int] | None = None,
) -> tuple[list[PanopticImage], dict[int, PanopticCategory]]:
    """Write the frames' PNGs under `png_root`/`video`; their images and the categories used
    (several videos make one JSON by joining these)."""
    ids_of = category_ids(classes)
    folder = Path(png_root) / video
    folder.mkdir(parents=True, exist_ok=True)
    images, categories = [], {}
    for frame in sorted(response.frames, key=lambda f: f.frame_index):
        image_id = image_id_of(image_ids, frame.frame_index)
        if image_id is None:
            continue
        category_of = {}
        for segment in frame.segments:
            cid = category_id(ids_of, segment.category)
            category_of[segment.id] = cid
            categories[cid] = PanopticCategory(cid, segment.category, segment.isthing)
        ids = panoptic_ids(frame, response.height, response.width)
        png = folder / f"{frame.frame_index:05d}.png"
        write_panoptic_png(png, ids)
        images.append(
            PanopticImage(
                image_id,
                f"{video}/{frame.frame_index:05d}.jpg",
                response.height,
                response.width,
                png,
                segments_from_ids(ids, category_of),
            )
        )
    return images, dict(sorted(categories.items()))


def write_coco_panoptic_results(
    json_file: Path | str,
    response: SegmentResponse,
    classes: Sequence[str] | Mapping[str, int],
    *,
    video: str = "video",
    image_ids: Mapping[int, int] | None = None,
    png_root: Path | str | None = None,
) -> int:
    """Write the PNGs and the JSON; returns the number of images."""
    json_file = Path(json_file)
    png_root = Path(png_root) if png_root is not None else json_file.with_suffix("")
    images, categories = panoptic_images(
        response, classes, png_root, video=video, image_ids=image_ids
    )
    extra = {im.id: {"video": video, "frame_index": int(Path(im.file_name).stem)} for im in images}
    write_coco_panoptic(json_file, images, categories, png_root, extra)
    return len(images)


ZIP_JSON = "panoptic.json"  # its PNGs under panoptic/, the folder named like it


def coco_panoptic_zip(
    response: SegmentResponse, classes: Sequence[str] | Mapping[str, int], video: str = "video"
) -> bytes:
    """write_coco_panoptic_results' JSON and PNGs in a zip (stored: PNGs are compressed
    already), relative to its root: `panoptic.json`, `panoptic/<video>/<frame:05d>.png`."""
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory(prefix="vidserve-panoptic-") as tmp:
        root = Path(tmp)
        write_coco_panoptic_results(root / ZIP_JSON, response, classes, video=video)
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
            archive.write(root / ZIP_JSON, ZIP_JSON)
            for png in sorted(root.rglob("*.png")):
                archive.write(png, png.relative_to(root).as_posix())
    return buffer.getvalue()
