"""COCO panoptic: reader and writer.

A JSON with `images`, `annotations` (one per image: `file_name` of a PNG whose RGB encodes segment
ids as id = R + 256 G + 256^2 B, and `segments_info`) and `categories` (`isthing` 1 or 0). Pixels of
id 0 are void (unlabelled). The PNGs live in a folder named like the JSON (`panoptic_val2017.json`
-> `panoptic_val2017/`) unless given.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from models.data.errors import DatasetError


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    ids = ids.astype(np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


@dataclass
class PanopticCategory:
    id: int
    name: str
    isthing: bool


@dataclass
class SegmentInfo:
    id: int
    category_id: int
    area: int
    bbox: list[float]  # [x, y, w, h]
    iscrowd: int = 0


@dataclass
class PanopticImage:
    id: int
    file_name: str  # the RGB image, relative to the image root
    height: int
    width: int
    png_path: Path
    segments: list[SegmentInfo]

    def load_ids(self) -> np.ndarray:
        """(H, W) segment id per pixel, checked against the image size and segments_info."""
        try:
            with Image.open(self.png_path) as image:
                rgb = np.array(image.convert("RGB"))
        except FileNotFoundError:
            raise DatasetError(
                self.png_path, f"panoptic PNG of image {self.id} is missing"
            ) from None
        except OSError as e:
            raise DatasetError(self.png_path, f"not a readable PNG ({e})") from None
        if rgb.shape[:2] != (self.height, self.width):
            raise DatasetError(
                self.png_path, f"PNG size {rgb.shape[:2]} != image size {(self.height, self.width)}"
            )
        ids = rgb2id(rgb)
        unknown = set(np.unique(ids).tolist()) - {0} - {s.id for s in self.segments}
        if unknown:
            raise DatasetError(
                self.png_path,
                f"segment ids {sorted(unknown)[:5]} are not in segments_info of image {self.id}",
            )
        return ids


@dataclass
class PanopticDataset:
    categories: dict[int, PanopticCategory]
    images: list[PanopticImage]


def load_coco_panoptic(
    json_file: Path | str, png_root: Path | str | None = None
) -> PanopticDataset:
    json_file = Path(json_file)
    png_root = Path(png_root) if png_root is not None else json_file.with_suffix("")
    try:
        data = json.loads(json_file.read_text())
    except FileNotFoundError:
        raise DatasetError(json_file, "file not found") from None
    except json.JSONDecodeError as e:
        raise DatasetError(json_file, f"not valid JSON ({e})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(json_file, f"missing or non-list '{key}'")
    categories = {
        int(c["id"]): PanopticCategory(int(c["id"]), str(c["name"]), bool(c["isthing"]))
        for c in data["categories"]
    }
    image_info = {int(i["id"]): i for i in data["images"]}
    images = []
    for k, ann in enumerate(data["annotations"]):
        image_id = int(ann.get("image_id", -1))
        info = image_info.get(image_id)
        if info is None:
            raise DatasetError(
                json_file, f"annotation #{k}: image_id {image_id} is not a known image"
            )
        segments = []
        for seg in ann.get("segments_info", []):
            if int(seg["category_id"]) not in categories:
                raise DatasetError(
                    json_file,
                    f"annotation #{k} segment {seg.get('id')}: category_id "
                    f"{seg['category_id']} is not a known category",
                )
            segments.append(
                SegmentInfo(
                    int(seg["id"]),
                    int(seg["category_id"]),
                    int(seg["area"]),
                    [float(v) for v in seg["bbox"]],
                    int(seg.get("iscrowd", 0)),
                )
            )
        images.append(
            PanopticImage(
                image_id,
                str(info["file_name"]),
                int(info["height"]),
                int(info["width"]),
                png_root / ann["file_name"],
                segments,
            )
        )
    return PanopticDataset(categories, images)


def segments_from_ids(ids: np.ndarray, category_of: dict[int, int]) -> list[SegmentInfo]:
    """segments_info of a segment-id map; `category_of` maps each non-void id to its category."""
    segments = []
    for seg_id in np.unique(ids):
        if seg_id == 0:
            continue
        ys, xs = np.nonzero(ids == seg_id)
        bbox = [
            float(xs.min()),
            float(ys.min()),
            float(xs.max() - xs.min() + 1),
            float(ys.max() - ys.min() + 1),
        ]
        segments.append(SegmentInfo(int(seg_id), category_of[int(seg_id)], len(xs), bbox))
    return segments


def write_panoptic_png(path: Path | str, ids: np.ndarray) -> None:
    Image.fromarray(id2rgb(ids)).save(path, optimize=False)


def write_coco_panoptic(
    json_file: Path | str,
    images: list[PanopticImage],
    categories: dict[int, PanopticCategory],
    png_root: Path | str,
    extra_image_fields: dict[int, dict] | None = None,
) -> None:
    """Write the JSON; the PNGs are written separately (`write_panoptic_png`), under `png_root`.
    `extra_image_fields` maps image id -> extra keys of its `images` entry (video, frame index)."""
    extra_image_fields = extra_image_fields or {}
    data = {
        "info": {"description": "vidserve COCO panoptic style"},
        "images": [
            {
                "id": im.id,
                "file_name": im.file_name,
                "height": im.height,
                "width": im.width,
                **extra_image_fields.get(im.id, {}),
            }
            for im in images
        ],
        "annotations": [
            {
                "image_id": im.id,
                "file_name": im.png_path.relative_to(png_root).as_posix(),
                "segments_info": [
                    {
                        "id": s.id,
                        "category_id": s.category_id,
                        "area": s.area,
                        "bbox": s.bbox,
                        "iscrowd": s.iscrowd,
                    }
                    for s in im.segments
                ],
            }
            for im in images
        ],
        "categories": [
            {
                "id": c.id,
                "name": c.name,
                "isthing": int(c.isthing),
                "supercategory": "thing" if c.isthing else "stuff",
            }
            for c in categories.values()
        ],
    }
    Path(json_file).write_text(json.dumps(data, separators=(",", ":")))
