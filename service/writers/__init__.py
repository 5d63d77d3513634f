"""Results as the files of the standard datasets, so that standard evaluation code reads them.

Each writer takes the typed results (service.schemas: a SegmentResponse, which
service.schemas.build_response makes from a session's events) and is the one place its format
is made:

    ytvis          YouTube-VIS results JSON, one entry a track   models.eval.vis
    coco           COCO instance results JSON, per frame        models.eval.instance
    davis          DAVIS 2017 palette PNGs, one a frame          models.data.davis, eval.davis
    coco_panoptic  COCO panoptic PNGs + JSON (zipped for REST)   models.data.coco_panoptic,
                                                                 models.eval.panoptic
    ava            AVA v2.2 results CSV                          models.data.ava, eval.action

Category ids are the 1-based positions in the model's class list (ids 1..C, as YouTube-VIS and
AVA number them) unless a {name: id} mapping is given (common.category_ids).
"""

from service.writers.ava import ava_rows, write_ava_results
from service.writers.coco import coco_results, write_coco_results
from service.writers.coco_panoptic import (
    coco_panoptic_zip,
    panoptic_images,
    write_coco_panoptic_results,
)
from service.writers.common import category_ids, frame_instances
from service.writers.davis import davis_zip, write_davis, write_davis_pngs
from service.writers.ytvis import write_ytvis_results, ytvis_results

__all__ = [
    "ava_rows",
    "category_ids",
    "coco_panoptic_zip",
    "coco_results",
    "davis_zip",
    "frame_instances",
    "panoptic_images",
    "write_ava_results",
    "write_coco_panoptic_results",
    "write_coco_results",
    "write_davis",
    "write_davis_pngs",
    "write_ytvis_results",
    "ytvis_results",
]
