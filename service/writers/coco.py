"""Results as a COCO instance results JSON: a list of `{image_id, category_id, segmentation,
bbox, score}`, one entry per instance of each frame, as pycocotools' `loadRes` (and
models.eval.instance) reads.

- `image_id`: the frame index, or the id a {frame index: image id} mapping gives (frames it
  lacks are left out: evaluate a subset of frames against ground truth of those);
- `segmentation`: the compressed RLE; `bbox`: [x, y, w, h] pixels, from the object's box (a
  panoptic thing segment has none: its mask's);
- `category_id`: the 1-based position in the model's class list unless a {name: id} mapping is
  given; `score`: the instance's.
"""

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from pycocotools import mask as mask_utils

from models.data.rle import to_compressed
from service.schemas import SegmentResponse
from service.writers.common import category_id, category_ids, frame_instances, image_id_of


def coco_results(
    response: SegmentResponse,
    classes: Sequence[str] | Mapping[str, int],
    image_ids: Mapping[int, int] | None = None,
) -> list[dict]:
    ids = category_ids(classes)
    results = []
    for frame in sorted(response.frames, key=lambda f: f.frame_index):
        image_id = image_id_of(image_ids, frame.frame_index)
        if image_id is None:
            continue
        for instance in frame_instances(frame):
            rle = instance.mask.model_dump(mode="json")
            if instance.box is not None:
                x1, y1, x2, y2 = instance.box
                bbox = [x1, y1, x2 - x1, y2 - y1]
            else:
                bbox = [float(v) for v in mask_utils.toBbox(to_compressed(rle))]
            results.append(
                {
                    "image_id": image_id,
                    "category_id": category_id(ids, instance.category),
                    "segmentation": rle,
                    "bbox": [float(v) for v in bbox],
                    "score": float(instance.score),
                }
            )
    return results


def write_coco_results(
    path: Path | str,
    response: SegmentResponse,
    classes: Sequence[str] | Mapping[str, int],
    image_ids: Mapping[int, int] | None = None,
) -> int:
    """Write coco_results as JSON; returns the number of entries."""
    results = coco_results(response, classes, image_ids)
    Path(path).write_text(json.dumps(results, separators=(",", ":")))
    return len(results)
