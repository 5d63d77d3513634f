"""Identity switches of tracked masks against ground-truth tracks, as the MOT metrics count them.

On each frame the ground-truth masks present are matched one-to-one to the predicted masks (the
assignment maximising mask IoU; a pair under 0.5 IoU is no match). An id switch is counted when a
ground-truth track is matched to a different predicted track id than the last time it was matched.
The VIS benchmark (objects of MaskTrack R-CNN) and the video panoptic one (tracked things) share it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from models.data.rle import decode_rle

MATCH_IOU = 0.5


@dataclass(frozen=True)
class IdSwitches:
    switches: int
    matched: int  # ground-truth track-frames matched to a prediction


def id_switches(
    gt_masks: dict[int, list[np.ndarray | None]], predictions: list[list[dict]]
) -> IdSwitches:
    """One video: gt_masks maps each ground-truth track to its bool mask per frame (None where
    absent); predictions are per frame the predicted items, each with a COCO RLE `mask` and a
    `track_id` (objects of the output schema, or the tracked things of panoptic segments)."""
    last_id: dict[int, int | None] = {}
    switches = matched = 0
    for t, items in enumerate(predictions):
        gt_ids = [g for g, masks in gt_masks.items() if masks[t] is not None]
        if not gt_ids or not items:
            continue
        iou = _mask_ious([gt_masks[g][t] for g in gt_ids], [decode_rle(i["mask"]) for i in items])
        for row, column in zip(*linear_sum_assignment(-iou), strict=True):
            if iou[row, column] < MATCH_IOU:
                continue
            matched += 1
            track, g = items[column]["track_id"], gt_ids[row]
            if g in last_id and last_id[g] != track:
                switches += 1
            last_id[g] = track
    return IdSwitches(switches, matched)


def _mask_ious(gt: list[np.ndarray], predicted: list[np.ndarray]) -> np.ndarray:
    """(G, P) IoU of bool masks of one frame."""
    gt_flat = np.stack([m.reshape(-1) for m in gt]).astype(np.float32)
    pred_flat = np.stack([m.reshape(-1).astype(bool) for m in predicted]).astype(np.float32)
    intersection = gt_flat @ pred_flat.T
    union = gt_flat.sum(1)[:, None] + pred_flat.sum(1)[None, :] - intersection
    return np.divide(intersection, union, out=np.zeros_like(union), where=union > 0)
