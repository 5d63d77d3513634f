"""COCO-style AP and AR from IoU matrices: the matching and accumulation of COCOeval, vectorised.

The caller computes, per category and image (or video), the IoUs between detections and ground
truths; this module does the rest as pycocotools' COCOeval (and the YouTube-VIS API built on it)
define it: greedy matching in score order at each IoU threshold 0.50:0.05:0.95, crowd and
out-of-area ground truths ignored, 101-point interpolated precision, max detections 1/10/100.
"""

from dataclasses import dataclass

import numpy as np

from models.eval.report import UNDEFINED

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
MAX_DETECTIONS = (1, 10, 100)
# name -> (min area, max area), both inclusive as in COCOeval.
COCO_AREA_RANGES = {
    "all": (0, 1e10),
    "small": (0, 32**2),
    "medium": (32**2, 96**2),
    "large": (96**2, 1e10),
}
# The YouTube-VIS API (ytvoseval.py) uses its own thresholds on the mean non-empty track area.
YTVIS_AREA_RANGES = {
    "all": (0, 1e10),
    "small": (0, 128**2),
    "medium": (128**2, 256**2),
    "large": (256**2, 1e10),
}

METRIC_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "AR1",
    "AR10",
    "AR100",
    "AR_small",
    "AR_medium",
    "AR_large",
)


@dataclass
class MatchGroup:
    """The detections and ground truths of one category in one image or video."""

    category_id: int
    ious: np.ndarray  # (D, G), detections in descending score order, at most 100
    scores: np.ndarray  # (D,)
    dt_areas: np.ndarray  # (D,)
    gt_areas: np.ndarray  # (G,)
    gt_crowd: np.ndarray  # (G,) bool


def coco_metrics(
    groups: list[MatchGroup], category_ids: list[int], area_ranges: dict[str, tuple[float, float]]
) -> dict[str, float]:
    """The twelve COCO summary numbers (METRIC_NAMES). Groups must come in image order: ties in
    score are broken by that order, as COCOeval does."""
    precision, recall = _accumulate(groups, category_ids, list(area_ranges.values()))
    return _summarise(precision, recall, list(area_ranges))


def zero_metrics() -> dict[str, float]:
    return dict.fromkeys(METRIC_NAMES, 0.0)


def _accumulate(groups, category_ids, area_ranges):
    """precision (T, R, K, A, M) and recall (T, K, A, M); -1 where a category has no ground
    truth in an area range."""
    shape = (len(IOU_THRESHOLDS), len(category_ids), len(area_ranges), len(MAX_DETECTIONS))
    precision = np.full(shape[:1] + (len(RECALL_THRESHOLDS),) + shape[1:], UNDEFINED)
    recall = np.full(shape, UNDEFINED)
    by_category: dict[int, list[MatchGroup]] = {c: [] for c in category_ids}
    for group in groups:
        if group.category_id in by_category:
            by_category[group.category_id].append(group)
    for k, category in enumerate(category_ids):
        for a, area_range in enumerate(area_ranges):
            matches = [_match(g, area_range) for g in by_category[category]]
            num_gt = sum(int((~m.gt_ignored).sum()) for m in matches)
            if num_gt == 0:
                continue
            detections = _Detections.concatenate(matches)
            for m, max_det in enumerate(MAX_DETECTIONS):
                keep = detections.rank < max_det
                precision[:, :, k, a, m], recall[:, k, a, m] = _precision_recall(
                    detections.scores[keep],
                    detections.matched[:, keep],
                    detections.ignored[:, keep],
                    num_gt,
                )
    return precision, recall


@dataclass
class _Detections:
    scores: np.ndarray  # (D,)
    rank: np.ndarray  # (D,) place in its own image, 0 = highest score
    matched: np.ndarray  # (T, D) matched to some ground truth at threshold t
    ignored: np.ndarray  # (T, D) matched to an ignored ground truth, or unmatched out of range
    gt_ignored: np.ndarray  # (G,)

    @staticmethod
    def concatenate(matches: list["_Detections"]) -> "_Detections":
        return _Detections(
            np.concatenate([m.scores for m in matches]),
            np.concatenate([m.rank for m in matches]),
            np.concatenate([m.matched for m in matches], axis=1),
            np.concatenate([m.ignored for m in matches], axis=1),
            np.concatenate([m.gt_ignored for m in matches]),
        )


def _match(group: MatchGroup, area_range: tuple[float, float]) -> _Detections:
    """Greedy matching at every IoU threshold, detections in score order (COCOeval.evaluateImg)."""
    low, high = area_range
    gt_ignored = group.gt_crowd | (group.gt_areas < low) | (group.gt_areas > high)
    num_dt = len(group.scores)
    matched = np.zeros((len(IOU_THRESHOLDS), num_dt), dtype=bool)
    on_ignored = np.zeros_like(matched)
    for t, threshold in enumerate(IOU_THRESHOLDS):
        taken = np.zeros(len(gt_ignored), dtype=bool)
        for d in range(num_dt):
            g = _best_gt(
                group.ious[d], min(threshold, 1 - 1e-10), taken, gt_ignored, group.gt_crowd
            )
            if g >= 0:
                matched[t, d], on_ignored[t, d], taken[g] = True, gt_ignored[g], True
    out_of_range = (group.dt_areas < low) | (group.dt_areas > high)
    ignored = on_ignored | (~matched & out_of_range[None, :])
    return _Detections(group.scores, np.arange(num_dt), matched, ignored, gt_ignored)


def _best_gt(
    ious: np.ndarray, threshold: float, taken: np.ndarray, gt_ignored: np.ndarray, crowd: np.ndarray
) -> int:
    """The ground truth a detection takes: the best IoU >= threshold among the free ones, a
    counted one before an ignored one; crowds are never used up. Of equal IoUs COCOeval keeps
    the last, so do we. -1 when none qualifies."""
    candidates = (~taken | crowd) & (ious >= threshold)
    for pool in (candidates & ~gt_ignored, candidates & gt_ignored):
        index = np.flatnonzero(pool)
        if index.size:
            best = ious[index]
            return int(index[len(index) - 1 - np.argmax(best[::-1])])
    return -1


def _precision_recall(scores, matched, ignored, num_gt):
    """101-point interpolated precision (T, R) and final recall (T,) of detections pooled over
    images; ignored detections count neither as true nor as false positives."""
    order = np.argsort(-scores, kind="mergesort")  # stable, as COCOeval
    matched, ignored = matched[:, order], ignored[:, order]
    true_pos = np.cumsum(matched & ~ignored, axis=1, dtype=np.float64)
    false_pos = np.cumsum(~matched & ~ignored, axis=1, dtype=np.float64)
    num_t, num_d = true_pos.shape
    if num_d == 0:
        return np.zeros((num_t, len(RECALL_THRESHOLDS))), np.zeros(num_t)
    recall = true_pos / num_gt
    precision = true_pos / (true_pos + false_pos + np.spacing(1))
    # Interpolate: precision at recall r = best precision at any recall >= r.
    precision = np.flip(np.maximum.accumulate(np.flip(precision, axis=1), axis=1), axis=1)
    sampled = np.zeros((num_t, len(RECALL_THRESHOLDS)))
    for t in range(num_t):
        index = np.searchsorted(recall[t], RECALL_THRESHOLDS, side="left")
        reached = index < num_d
        sampled[t, reached] = precision[t, index[reached]]
    return sampled, recall[:, -1]


def _summarise(precision, recall, area_names) -> dict[str, float]:
    def mean_defined(values: np.ndarray) -> float:
        defined = values[values > UNDEFINED]
        return float(defined.mean()) if defined.size else UNDEFINED

    all_areas = area_names.index("all")
    at_50, at_75 = 0, 5  # places of 0.50 and 0.75 in IOU_THRESHOLDS
    last = len(MAX_DETECTIONS) - 1

    def ap(area: int = all_areas, thresholds=slice(None)) -> float:
        return mean_defined(precision[thresholds, :, :, area, last])

    def ar(area: int = all_areas, max_det: int = last) -> float:
        return mean_defined(recall[:, :, area, max_det])

    small, medium, large = (area_names.index(n) for n in ("small", "medium", "large"))
    values = [
        ap(),
        ap(thresholds=at_50),
        ap(thresholds=at_75),
        ap(small),
        ap(medium),
        ap(large),
        ar(max_det=0),
        ar(max_det=1),
        ar(max_det=2),
        ar(small),
        ar(medium),
        ar(large),
    ]
    return dict(zip(METRIC_NAMES, values, strict=True))
