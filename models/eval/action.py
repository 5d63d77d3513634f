"""AVA frame-mAP@0.5 for spatio-temporal action detection, as the official AVA evaluator
(ActivityNet get_ava_performance.py over the TF Object Detection API's PASCAL evaluator) defines it.

Each (video, timestamp) key frame is an image and each (person box, action) a labelled box. Only
the 50 best-scoring predictions of a key frame count. Per action class and key frame, predictions
in score order each take the ground-truth box they overlap most; a prediction is a true positive
when that IoU is >= 0.5 and the box is still free, else a false positive (it does not fall back
to its second-best box). AP is the area under the precision/recall curve with precision made
monotone (PASCAL VOC 2010+), and the mAP is the mean over the classes that have ground truth.

Predictions are an AVA results CSV, or the service's answers as they come (read_answers): a
POST /v1/segment JSON of an action model, one per video, named `<video>.json` (a file, or a
folder of them). An answer's rows are its key frames' labelled objects (answer_rows, which
service/writers/ava.py also writes as CSV); their action names become ids through the AVA label
map (`labelmap`, else the `*action_list*.pbtxt` beside the ground-truth CSV).
"""

import bisect
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from models.data.ava import AvaBox, load_action_list, load_ava_csv
from models.eval.errors import EvalInputError
from models.eval.inputs import read_json
from models.eval.report import EvalResult

IOU_THRESHOLD = 0.5
MAX_PER_KEY_FRAME = 50  # the official evaluator reads predictions with capacity 50
METRIC_NAME = "mAP@0.5"
# The label map looked for beside the ground-truth CSV when none is given (AVA's name first).
LABELMAP_NAME = "ava_action_list_v2.2.pbtxt"
LABELMAP_GLOB = "*action_list*.pbtxt"
# A key frame's time may sit a rounding error off the second it stands for.
TIME_EPSILON = 1e-6


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
    gt_csv: Path | str, pred: Path | str, labelmap: Path | str | None = None
) -> EvalResult:
    """Frame-mAP of predictions against an AVA ground-truth CSV. `pred`: an AVA results CSV,
    scored over the classes of `labelmap` (an AVA action list pbtxt) if given; or the service's
    answers (a `<video>.json` or a folder of them), scored over the classes of `labelmap`, by
    default the action list beside `gt_csv`."""
    gt = load_ava_csv(gt_csv)
    if is_answer_path(pred):
        names = load_action_list(labelmap if labelmap is not None else find_labelmap(gt_csv))
        predictions = read_answers(pred, {name: i for i, name in names.items()}, gt)
    else:
        names = load_action_list(labelmap) if labelmap is not None else None
        predictions = load_ava_csv(pred, predictions=True)
    return evaluate_actions(gt, predictions, class_ids=names, class_names=names)


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


# --- the service's answers ------------------------------------------------------------------------
def answer_rows(answer: Mapping, action_ids: Mapping[str, int], video_id: str) -> list[AvaBox]:
    """The AVA result rows of one POST /v1/segment answer (SegmentResponse as JSON-like data,
    e.g. its model_dump()): per object of a frame with action labels of that key frame (its
    `key_frame`, or none given), per label, a row of the frame's `time`, the object's box over
    the frame's width and height (clipped to [0, 1]), the label's id in `action_ids` and its
    score; `person_id` keeps the object's track id. A track absent from its key frame has no
    box, so no row. service/writers/ava.py writes these rows as a CSV."""
    width, height = float(answer["width"]), float(answer["height"])
    rows = []
    for frame in sorted(answer["frames"], key=lambda f: f["frame_index"]):
        index = frame["frame_index"]
        for obj in frame.get("objects", []):
            labels = [a for a in obj.get("actions", []) if a.get("key_frame") in (None, index)]
            if not labels:
                continue
            x1, y1, x2, y2 = obj["box"]
            box = (_unit(x1 / width), _unit(y1 / height), _unit(x2 / width), _unit(y2 / height))
            for label in labels:
                rows.append(
                    AvaBox(
                        video_id,
                        float(frame["time"]),
                        box,
                        _action_id(action_ids, label["label"], index, obj.get("track_id")),
                        person_id=obj.get("track_id"),
                        score=float(label["score"]),
                    )
                )
    return rows


def is_answer_path(pred: Path | str) -> bool:
    """The service's answers (a JSON file or a folder), as opposed to a results CSV."""
    return Path(pred).is_dir() or Path(pred).suffix.lower() == ".json"


def find_labelmap(gt_csv: Path | str) -> Path:
    """The action list beside the ground-truth CSV: AVA's name, else the only *action_list*.pbtxt
    there."""
    folder = Path(gt_csv).parent
    if (folder / LABELMAP_NAME).is_file():
        return folder / LABELMAP_NAME
    found = sorted(folder.glob(LABELMAP_GLOB))
    if len(found) == 1:
        return found[0]
    if not found:
        raise EvalInputError(
            f"{folder}: no label map ({LABELMAP_GLOB}) beside the ground truth to turn the "
            "answers' action names into ids; pass one with --labelmap"
        )
    raise EvalInputError(
        f"{folder}: {len(found)} label maps beside the ground truth "
        f"({', '.join(p.name for p in found)}); choose one with --labelmap"
    )


def read_answers(pred: Path | str, action_ids: Mapping[str, int], gt: list) -> list[AvaBox]:
    """The rows of every ground-truth video's answer: `pred` is one answer (its video is its
    file's stem) or a folder of `<video>.json`, which must hold one for each video."""
    pred = Path(pred)
    key_times = defaultdict(set)  # video -> its ground-truth timestamps
    for b in gt:
        key_times[b.video_id].add(float(b.timestamp))
    if pred.is_dir():
        files = {p.stem: p for p in sorted(pred.glob("*.json")) if p.is_file()}
        if not files:
            raise EvalInputError(f"{pred}: no answers (<video>.json) in the folder")
        missing = sorted(set(key_times) - set(files))
        if missing:
            raise EvalInputError(
                f"{pred}: no answer for video {missing[0]!r} ({len(missing)} videos without "
                "one; name each answer <video>.json)"
            )
    else:
        if pred.stem not in key_times:
            raise EvalInputError(
                f"{pred}: an answer is named <video>.json, and video {pred.stem!r} is not in "
                f"the ground truth ({', '.join(sorted(key_times)) or 'empty'})"
            )
        files = {pred.stem: pred}
    rows = []
    for video, times in key_times.items():
        if video in files:
            rows += read_answer(files[video], action_ids, video, sorted(times))
    return rows


def read_answer(
    path: Path, action_ids: Mapping[str, int], video: str, key_times: list[float]
) -> list[AvaBox]:
    """One answer's rows, each key frame put at the ground-truth second it stands for."""
    answer = read_json(path)
    if not isinstance(answer, dict) or not isinstance(answer.get("frames"), list):
        raise EvalInputError(f"{path}: not an answer of POST /v1/segment (no 'frames')")
    try:
        rows = answer_rows(answer, action_ids, video)
        fps = float(answer.get("fps") or 0)
    except EvalInputError as error:
        raise EvalInputError(f"{path}: {error}") from None
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as error:
        raise EvalInputError(
            f"{path}: not a readable answer of POST /v1/segment ({type(error).__name__}: {error})"
        ) from None
    for row in rows:
        row.timestamp = on_key_time(row.timestamp, key_times, fps)
    return rows


def on_key_time(time: float, key_times: list[float], fps: float) -> float:
    """The ground-truth timestamp a key frame at `time` stands for: the service's key frame of
    second s is the first frame at or after s, so s <= time < s + one frame (the video's clock
    need not land on whole seconds, e.g. 29.97 fps). A time standing for none is kept."""
    k = bisect.bisect_right(key_times, time + TIME_EPSILON) - 1
    if k < 0:
        return time
    late = time - key_times[k]
    one_frame = 1.0 / fps if fps > 0 else 0.0
    if late <= TIME_EPSILON or late < one_frame - TIME_EPSILON:
        return key_times[k]
    return time


def _action_id(action_ids: Mapping[str, int], name: str, frame: int, track_id) -> int:
    if name not in action_ids:
        raise EvalInputError(
            f"frame {frame} track {track_id}: action {name!r} is not in the label map "
            f"({', '.join(action_ids) or 'empty'})"
        )
    return action_ids[name]


def _unit(value: float) -> float:
    return min(max(float(value), 0.0), 1.0)
