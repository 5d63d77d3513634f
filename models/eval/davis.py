"""DAVIS J&F for semi-supervised video object segmentation, as the DAVIS 2017 evaluation defines it.

Per object and frame: J is the region IoU (1 when the object is absent in both masks), F the
boundary F-measure: boundaries are the one-pixel maps of the `seg2bmap` method, and a boundary
pixel counts as matched when the other boundary lies within ceil(0.008 x image diagonal) pixels
(a disk). The first and the last annotated frames are left out. Per object: the mean, the recall
(share of frames above 0.5) and the decay (first quarter minus last quarter); each number is then
averaged over all objects of all videos, and J&F-Mean = (J-Mean + F-Mean) / 2.
"""

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from models.eval.errors import EvalInputError
from models.eval.report import EvalResult
from models.eval.threads import map_in_threads

BOUNDARY_TOLERANCE = 0.008  # of the image diagonal
# DAVIS marks unlabelled pixels 255; the semi-supervised evaluation counts them as background.
VOID = 255

METRIC_NAMES = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")


@dataclass
class ObjectScores:
    """Per-frame J and F of one object over the evaluated frames."""

    video: str
    object_id: int
    j: np.ndarray
    f: np.ndarray


def evaluate_davis(sequences) -> EvalResult:
    """J&F over `(name, gt, pred)` triples of (T, H, W) id masks, T >= 3 annotated frames.
    An empty sequence list scores 0."""
    scores = [s for name, gt, pred in sequences for s in sequence_scores(name, gt, pred)]
    return EvalResult("vos", summarise(scores))


def evaluate_davis_files(
    gt_root: Path | str, pred_root: Path | str, split: str | None = None
) -> EvalResult:
    """J&F of `<pred_root>/<video>/<frame>.png` palette masks against a DAVIS folder. `split`
    defaults to `val`, or to the only split listed in ImageSets/2017. A prediction folder without
    any PNG is an empty prediction set and scores 0."""
    from models.data.davis import load_davis

    gt_root, pred_root = Path(gt_root), Path(pred_root)
    if not pred_root.is_dir():
        raise EvalInputError(f"{pred_root}: predictions folder not found")
    dataset = load_davis(gt_root, split or _default_split(gt_root))
    if not any(pred_root.rglob("*.png")):
        return EvalResult("vos", dict.fromkeys(METRIC_NAMES, 0.0))
    per_video = map_in_threads(
        lambda video: sequence_scores(*_load_sequence(video, pred_root)), dataset.videos
    )
    return EvalResult("vos", summarise([s for scores in per_video for s in scores]))


def sequence_scores(name: str, gt: np.ndarray, pred: np.ndarray) -> list[ObjectScores]:
    """J and F of every object of the first frame on frames 1 .. T-2."""
    if gt.shape != pred.shape:
        raise EvalInputError(
            f"video '{name}': predicted masks {pred.shape} != ground truth {gt.shape}"
        )
    if len(gt) < 3:
        raise EvalInputError(
            f"video '{name}': {len(gt)} annotated frames; J&F leaves out the "
            "first and the last, so it needs at least 3"
        )
    gt = np.where(gt == VOID, 0, gt)
    objects = [int(i) for i in np.unique(gt[0]) if i != 0]
    evaluated_gt, evaluated_pred = gt[1:-1], pred[1:-1]
    _check_predicted_ids(name, evaluated_pred, objects)
    radius = boundary_radius(gt.shape[1:])
    scores = []
    for o in objects:
        pairs = [(g == o, p == o) for g, p in zip(evaluated_gt, evaluated_pred, strict=True)]
        j = np.array([region_j(g, p) for g, p in pairs])
        f = np.array([boundary_f(g, p, radius) for g, p in pairs])
        scores.append(ObjectScores(name, o, j, f))
    return scores


def summarise(scores: list[ObjectScores]) -> dict[str, float]:
    if not scores:
        return dict.fromkeys(METRIC_NAMES, 0.0)
    j = np.array([statistics(s.j) for s in scores])  # (objects, 3): mean, recall, decay
    f = np.array([statistics(s.f) for s in scores])
    j_mean, j_recall, j_decay = j.mean(axis=0)
    f_mean, f_recall, f_decay = f.mean(axis=0)
    values = [(j_mean + f_mean) / 2, j_mean, j_recall, j_decay, f_mean, f_recall, f_decay]
    return dict(zip(METRIC_NAMES, (float(v) for v in values), strict=True))


def statistics(per_frame: np.ndarray) -> tuple[float, float, float]:
    """Mean, recall (share > 0.5) and decay of one object's per-frame values. The decay splits
    the frames into 4 bins as DAVIS does (edges round(linspace(1, n, 5)) - 1, each bin including
    its right edge) and is the mean of the first bin minus the mean of the last."""
    edges = (np.round(np.linspace(1, len(per_frame), 5) + 1e-10) - 1).astype(int)
    first = per_frame[edges[0] : edges[1] + 1]
    last = per_frame[edges[3] : edges[4] + 1]
    decay = first.mean() - last.mean()
    return float(per_frame.mean()), float((per_frame > 0.5).mean()), float(decay)


def region_j(gt: np.ndarray, pred: np.ndarray) -> float:
    """IoU of two binary masks, 1 when both are empty (the object is rightly absent)."""
    window = _crop_around(gt | pred)
    if window is None:
        return 1.0
    gt, pred = gt[window], pred[window]  # small arrays: the rest of the frame adds nothing
    return np.count_nonzero(gt & pred) / np.count_nonzero(gt | pred)


def boundary_radius(shape: tuple[int, int]) -> int:
    return int(np.ceil(BOUNDARY_TOLERANCE * np.hypot(*shape)))


def boundary_f(gt: np.ndarray, pred: np.ndarray, radius: int) -> float:
    """Boundary F-measure of two binary masks with a matching tolerance of `radius` pixels."""
    window = _crop_around(gt | pred)
    if window is None:
        return 1.0  # the object is absent from both
    gt_edge, pred_edge = boundary_map(gt[window]), boundary_map(pred[window])
    n_gt, n_pred = int(gt_edge.sum()), int(pred_edge.sum())
    if n_gt == 0 or n_pred == 0:
        return 0.0  # one side has a boundary the other lacks: precision or recall is 0
    kernel = disk(radius)
    gt_near = cv2.dilate(gt_edge.astype(np.uint8), kernel).astype(bool)
    pred_near = cv2.dilate(pred_edge.astype(np.uint8), kernel).astype(bool)
    precision = (pred_edge & gt_near).sum() / n_pred
    recall = (gt_edge & pred_near).sum() / n_gt
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel boundary of a binary mask (the seg2bmap method): a pixel is on the boundary
    when it differs from its right, lower or lower-right neighbour; on the last row only the
    right neighbour counts, on the last column only the lower one, never the corner. The map is
    so offset by half a pixel towards the origin."""
    mask = mask.astype(bool)
    right = np.zeros_like(mask)
    below = np.zeros_like(mask)
    below_right = np.zeros_like(mask)
    right[:, :-1] = mask[:, 1:]
    below[:-1, :] = mask[1:, :]
    below_right[:-1, :-1] = mask[1:, 1:]
    edge = (mask ^ right) | (mask ^ below) | (mask ^ below_right)
    edge[-1, :] = mask[-1, :] ^ right[-1, :]
    edge[:, -1] = mask[:, -1] ^ below[:, -1]
    edge[-1, -1] = False
    return edge


def disk(radius: int) -> np.ndarray:
    """The pixels within `radius` of the centre (x^2 + y^2 <= r^2), as a uint8 kernel."""
    offsets = np.arange(-radius, radius + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).astype(np.uint8)


def _crop_around(mask: np.ndarray) -> tuple[slice, slice] | None:
    """The box around `mask` grown by one pixel, clipped to the image, or None if it is empty.

    Boundary maps and matches inside it equal those of the whole image: boundary pixels lie at
    most one pixel above or left of the mask, and where the box meets the image's last row or
    column that row or column is the image's own. Cropping makes F fast on large frames."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    height, width = mask.shape
    return (
        slice(max(rows[0] - 1, 0), min(rows[-1] + 2, height)),
        slice(max(cols[0] - 1, 0), min(cols[-1] + 2, width)),
    )


def _check_predicted_ids(name: str, pred: np.ndarray, objects: list[int]) -> None:
    top = int(pred.max(initial=0))
    if set(range(1, top + 1)) <= set(objects):
        return  # the usual case, ids 1..K: one cheap pass
    allowed = np.zeros(max([top, *objects]) + 1, dtype=bool)
    allowed[[0, *objects]] = True
    unknown = ~allowed[pred]
    if unknown.any():
        raise EvalInputError(
            f"video '{name}': predicted ids {np.unique(pred[unknown]).tolist()} "
            f"are not objects of the first frame {objects}"
        )


def _default_split(root: Path) -> str:
    listings = sorted(p.stem for p in (root / "ImageSets" / "2017").glob("*.txt"))
    if "val" in listings or not listings:
        return "val"
    if len(listings) == 1:
        return listings[0]
    raise EvalInputError(f"{root}: several splits {listings} and no 'val'; name one")


def _load_sequence(video, pred_root: Path) -> tuple[str, np.ndarray, np.ndarray]:
    """Ground truth and predictions of one video. The first and the last frames are not scored,
    so their predictions may be missing (many methods do not write the given first frame)."""
    gt = video.load_masks()
    last = len(gt) - 1
    preds = []
    for t, annotation in enumerate(video.annotation_paths):
        path = pred_root / video.name / annotation.name
        if t in (0, last) and not path.is_file():
            preds.append(np.zeros_like(gt[t]))
            continue
        preds.append(_read_prediction(path, video.name, gt.shape[1:]))
    return video.name, gt, np.stack(preds)


def _read_prediction(path: Path, video: str, size: tuple[int, int]) -> np.ndarray:
    from models.data.davis import read_palette_png
    from models.data.errors import DatasetError

    if not path.is_file():
        raise EvalInputError(
            f"{path}: prediction for frame {path.stem} of video '{video}' is missing"
        )
    try:
        mask = read_palette_png(path)
    except DatasetError as e:
        raise EvalInputError(str(e)) from None
    if mask.shape != tuple(size):
        raise EvalInputError(
            f"{path}: mask size {list(mask.shape)} != ground truth size {list(size)}"
        )
    return mask
