"""AVA frame-mAP@0.5 for spatio-temporal action detection, as the official AVA evaluator
(ActivityNet get_ava_performance.py over the TF Object Detection API's PASCAL evaluator) defines it.

Each (video, timestamp) key frame is an image and each (person box, action) a labelled box. Only
the 50 best-scoring predictions of a key frame count. Per action class and key frame, predictions
in score order each take the ground-truth box they overlap most; a prediction is a true positive
when that IoU is >= 0.5 and the box is still free, else a false positive (it does not fall back
to its second-best box). AP is the area under the precision/recall curve with precision made
monotone (PASCAL VOC 2010+), and the mAP is the mean over the classes that have ground truth.
"""

import math
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from models.eval.errors import EvalInputError
from models.eval.report import EvalResult

IOU_THRESHOLD = 0.5
MAX_PER_KEY_FRAME = 50  # the official evaluator reads predictions with capacity 50
METRIC_NAME = "mAP@0.5"


def evaluate_actions(
    gt: list,
    predictions: list,
    class_ids: Iterable[int] | None = None,
    class_names: dict[int, str] | None = None,
) -> EvalResult:
    """Frame-mAP of AvaBox-like predictions (video_id, timestamp, box x1 y1 x2 y2 normalised,
    action_id, score) against ground truth. `class_ids` limits the classes, as the official label
    map does (boxes of other classes are dropped from both sides); by default the classes present
    in the ground truth. An empty prediction set scores 0."""
    _check_predictions(predictions, {b.video_id for b in gt})
    classes = set(class_ids) if class_ids is not None else {b.action_id for b in gt}
    gt = [b for b in gt if b.action_id in classes]
    predictions = _best_per_key_frame([p for p in predictions if p.action_id in classes])

    num_gt = defaultdict(int)
    gt_boxes = defaultdict(list)
    for b in gt:
        num_gt[b.action_id] += 1
        gt_boxes[(b.video_id, b.timestamp, b.action_id)].append(b.box)
    pred_groups = defaultdict(list)
    for p in predictions:
        pred_groups[(p.video_id, p.timestamp, p.action_id)].append(p)

    scores, hits = defaultdict(list), defaultdict(list)
    for key, group in pred_groups.items():
        group = sorted(group, key=lambda p: -_score(p))
        action = key[2]
        scores[action] += [_score(p) for p in group]
        hits[action] += true_positives(
            np.array([p.box for p in group], dtype=np.float64),
            np.array(gt_boxes.get(key, []), dtype=np.float64),
        ).tolist()

    names = class_names or {}
    per_class = {
        names.get(c, str(c)): average_precision(
            np.array(scores[c]), np.array(hits[c], dtype=bool), num_gt[c]
        )
        for c in sorted(classes)
        if num_gt[c] > 0
    }
    mean_ap = float(np.mean(list(per_class.values()))) if per_class else 0.0
    return EvalResult("action", {METRIC_NAME: mean_ap}, per_class)


def evaluate_action_files(
    gt_csv: Path | str, pred_csv: Path | str, labelmap: Path | str | None = None
) -> EvalResult:
    """Frame-mAP of an AVA predictions CSV against an AVA ground-truth CSV, over the classes of
    `labelmap` (an AVA action list pbtxt) if given."""
    from models.data.ava import load_action_list, load_ava_csv

    names = load_action_list(labelmap) if labelmap is not None else None
    return evaluate_actions(
        load_ava_csv(gt_csv),
        load_ava_csv(pred_csv, predictions=True),
        class_ids=names,
        class_names=names,
    )


def true_positives(pred_boxes: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """TP flag of each prediction (rows in descending score order) of one class on one frame."""
    hits = np.zeros(len(pred_boxes), dtype=bool)
    if len(gt_boxes) == 0 or len(pred_boxes) == 0:
        return hits
    iou = box_iou(pred_boxes, gt_boxes)
    best = iou.argmax(axis=1)
    taken = np.zeros(len(gt_boxes), dtype=bool)
    for d, g in enumerate(best):
        if iou[d, g] >= IOU_THRESHOLD and not taken[g]:
            hits[d] = taken[g] = True
    return hits


def average_precision(scores: np.ndarray, hits: np.ndarray, num_gt: int) -> float:
    """PASCAL VOC 2010+ AP: area under the recall/precision curve, precision made monotone."""
    order = np.argsort(-scores, kind="stable")
    true_pos = np.cumsum(hits[order])
    false_pos = np.cumsum(~hits[order])
    recall = np.concatenate(([0.0], true_pos / num_gt, [1.0]))
    precision = np.concatenate(([0.0], true_pos / np.maximum(true_pos + false_pos, 1), [0.0]))
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of x1 y1 x2 y2 boxes; 0 where both are degenerate."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _score(prediction) -> float:
    # A prediction row without a score counts as 1.0, as in the official reader.
    return 1.0 if prediction.score is None else float(prediction.score)


def _check_predictions(predictions: list, gt_videos: set[str]) -> None:
    for k, p in enumerate(predictions):
        where = f"prediction #{k} (video '{p.video_id}', t={p.timestamp:g})"
        if p.video_id not in gt_videos:
            raise EvalInputError(f"{where}: video '{p.video_id}' is not in the ground truth")
        if not math.isfinite(_score(p)):
            raise EvalInputError(f"{where}: score {p.score!r} is not a finite number")
        x1, y1, x2, y2 = p.box
        if not (x1 <= x2 and y1 <= y2):
            raise EvalInputError(f"{where}: box {list(p.box)} is not x1 <= x2, y1 <= y2")


def _best_per_key_frame(predictions: list) -> list:
    by_frame = defaultdict(list)
    for p in predictions:
        by_frame[(p.video_id, p.timestamp)].append(p)
    kept = []
    for group in by_frame.values():
        kept += sorted(group, key=lambda p: -_score(p))[:MAX_PER_KEY_FRAME]
    return kept
