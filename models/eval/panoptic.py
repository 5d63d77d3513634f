"""Panoptic quality (PQ = SQ x RQ) as the COCO panopticapi defines it.

Per image, a predicted and a ground-truth segment of the same category match when their IoU is
over 0.5 (so each has at most one match); the union leaves out the predicted pixels that fall on
void (id 0). Unmatched ground truths are false negatives, except crowd regions, which are never
counted. An unmatched prediction is a false positive unless more than half of it lies on void or
on a crowd region of its category. Per category PQ = sum of matched IoUs / (TP + FP/2 + FN/2),
SQ = sum of IoUs / TP, RQ = TP / (TP + FP/2 + FN/2); each is averaged over the categories that
occur (TP + FP + FN > 0), for all categories, things and stuff.

Segment areas are counted on the PNGs (panopticapi takes the ground truth's from its JSON; the
two agree for any consistent dataset).

Predictions are a COCO panoptic JSON (+ PNG folder), or the service's answers as they come
(evaluate_answers): a POST /v1/segment JSON or its `Accept: application/zip`, one per video,
named `<video>.json` / `<video>.zip` (a file, or a folder of them; a single answer against a
single-video ground truth may have any name). A ground-truth image belongs to the video and frame
its `images` entry names (`video`, `frame_index`, as the synthetic world writes them); an image
without them is a one-frame video named like its file (a still image answered alone).
Categories are matched by name.
"""

import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.eval.errors import EvalInputError
from models.eval.inputs import read_json
from models.eval.report import EvalResult
from models.eval.threads import map_in_threads

VOID = 0
MATCH_IOU = 0.5
_MODULI = (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521)  # primes, for _index_of
METRIC_NAMES = ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st")


@dataclass
class Segments:
    """One image's panoptic map: (H, W) segment ids and, per id, its category and crowd flag."""

    ids: np.ndarray
    category: dict[int, int]
    crowd: dict[int, bool] = field(default_factory=dict)


@dataclass
class PqCounts:
    """Running totals per category over images."""

    tp: dict[int, int] = field(default_factory=dict)
    fp: dict[int, int] = field(default_factory=dict)
    fn: dict[int, int] = field(default_factory=dict)
    iou: dict[int, float] = field(default_factory=dict)

    def add(self, kind: str, category: int, amount: float = 1) -> None:
        totals = getattr(self, kind)
        totals[category] = totals.get(category, 0) + amount

    def merge(self, other: "PqCounts") -> None:
        for kind in ("tp", "fp", "fn", "iou"):
            for category, amount in getattr(other, kind).items():
                self.add(kind, category, amount)


def evaluate_panoptic(pairs, categories: dict[int, bool]) -> EvalResult:
    """PQ over `(where, gt Segments, predicted Segments)` triples; `categories` maps category id
    to isthing. An empty list scores 0."""
    counts = PqCounts()
    for where, gt, pred in pairs:
        count_image(gt, pred, counts, categories, where)
    return EvalResult("panoptic", pq_metrics(counts, categories))


def count_image(
    gt: Segments, pred: Segments, counts: PqCounts, categories: dict[int, bool], where: str
) -> None:
    """Add one image's TP/FP/FN and matched IoUs to `counts`."""
    _check_prediction(gt, pred, categories, where)
    gt_ids = [VOID, *sorted(gt.category)]
    pred_ids = [VOID, *sorted(pred.category)]
    # overlap[i, j]: pixels of gt segment gt_ids[i] under predicted segment pred_ids[j].
    overlap = _overlap_counts(gt.ids, gt_ids, pred.ids, pred_ids, where)
    gt_area, pred_area = overlap.sum(axis=1), overlap.sum(axis=0)
    gt_cat = np.array([gt.category.get(i, -1) for i in gt_ids])
    pred_cat = np.array([pred.category.get(i, -2) for i in pred_ids])
    gt_crowd = np.array([gt.crowd.get(i, False) for i in gt_ids])

    union = gt_area[:, None] + pred_area[None, :] - overlap - overlap[0][None, :]
    candidate = (gt_cat[:, None] == pred_cat[None, :]) & ~gt_crowd[:, None]
    candidate[0, :] = candidate[:, 0] = False  # void is never a segment
    iou = np.divide(overlap, union, out=np.zeros(overlap.shape), where=candidate & (union > 0))
    matched = iou > MATCH_IOU
    for i, j in zip(*np.nonzero(matched), strict=True):
        counts.add("tp", int(gt_cat[i]))
        counts.add("iou", int(gt_cat[i]), float(iou[i, j]))

    crowd_of_category = {int(gt_cat[i]): i for i in range(1, len(gt_ids)) if gt_crowd[i]}
    for i in range(1, len(gt_ids)):
        if not gt_crowd[i] and not matched[i].any():
            counts.add("fn", int(gt_cat[i]))
    for j in range(1, len(pred_ids)):
        if matched[:, j].any():
            continue
        ignored = overlap[0, j]
        crowd = crowd_of_category.get(int(pred_cat[j]))
        if crowd is not None:
            ignored += overlap[crowd, j]
        if ignored / pred_area[j] <= MATCH_IOU:
            counts.add("fp", int(pred_cat[j]))


def pq_metrics(counts: PqCounts, categories: dict[int, bool]) -> dict[str, float]:
    values = []
    for subset in (None, True, False):  # all, things, stuff
        chosen = [c for c, isthing in categories.items() if subset is None or isthing == subset]
        values += _pq_average(counts, chosen)
    return dict(zip(METRIC_NAMES, values, strict=True))


def evaluate_panoptic_files(
    gt_json: Path | str,
    pred_json: Path | str,
    gt_png_root: Path | str | None = None,
    pred_png_root: Path | str | None = None,
) -> EvalResult:
    """PQ of a COCO panoptic prediction (JSON + PNG folder, by default the folder named like the
    JSON beside it) against COCO panoptic ground truth. Every ground-truth image needs a
    prediction; a prediction JSON without annotations is an empty set and scores 0."""
    from models.data.coco_panoptic import load_coco_panoptic

    dataset = load_coco_panoptic(gt_json, gt_png_root)
    categories = {c.id: c.isthing for c in dataset.categories.values()}
    data = None if _is_answer_file(pred_json) else read_json(pred_json)
    if data is None or (isinstance(data, dict) and "frames" in data):
        return evaluate_answers(dataset, read_json(gt_json), pred_json)
    pred_png_root = Path(pred_png_root) if pred_png_root else Path(pred_json).with_suffix("")
    predictions = _parse_predictions(data, {im.id for im in dataset.images})
    if not predictions:
        return EvalResult("panoptic", dict.fromkeys(METRIC_NAMES, 0.0))
    missing = [im.id for im in dataset.images if im.id not in predictions]
    if missing:
        raise EvalInputError(
            f"{pred_json}: no prediction for image {missing[0]} ({len(missing)} images without one)"
        )
    counts = PqCounts()
    for image_counts in map_in_threads(
        lambda im: _count_file_image(im, predictions[im.id], pred_png_root, categories),
        dataset.images,
    ):
        counts.merge(image_counts)
    return EvalResult("panoptic", pq_metrics(counts, categories))


def _pq_average(counts: PqCounts, chosen: list[int]) -> list[float]:
    pq = sq = rq = 0.0
    n = 0
    for c in chosen:
        tp, fp, fn = counts.tp.get(c, 0), counts.fp.get(c, 0), counts.fn.get(c, 0)
        if tp + fp + fn == 0:
            continue  # the category occurs in neither ground truth nor predictions
        n += 1
        iou = counts.iou.get(c, 0.0)
        pq += iou / (tp + fp / 2 + fn / 2)
        sq += iou / tp if tp else 0.0
        rq += tp / (tp + fp / 2 + fn / 2)
    # panopticapi divides by zero here; with no category present we report 0.
    return [pq / n, sq / n, rq / n] if n else [0.0, 0.0, 0.0]


def _check_prediction(
    gt: Segments, pred: Segments, categories: dict[int, bool], where: str
) -> None:
    if pred.ids.shape != gt.ids.shape:
        raise EvalInputError(
            f"{where}: PNG size {list(pred.ids.shape)} != image size {list(gt.ids.shape)}"
        )
    for segment_id, category in pred.category.items():
        if category not in categories:
            raise EvalInputError(
                f"{where}: segment {segment_id} has category_id {category}, "
                "which is not in the ground truth"
            )


def _overlap_counts(gt_map, gt_ids, pred_map, pred_ids, where) -> np.ndarray:
    """(len(gt_ids), len(pred_ids)) pixel counts of each (gt segment, predicted segment) pair."""
    gt_index = _index_of(
        gt_map,
        gt_ids,
        f"{where}: ground-truth segment id {{}} is in the PNG but not in segments_info",
    )
    pred_index = _index_of(
        pred_map, pred_ids, f"{where}: segment id {{}} is in the PNG but not in segments_info"
    )
    joint = gt_index.ravel() * len(pred_ids) + pred_index.ravel()
    overlap = np.bincount(joint, minlength=len(gt_ids) * len(pred_ids))
    overlap = overlap.reshape(len(gt_ids), len(pred_ids))
    absent = [pred_ids[j] for j in range(1, len(pred_ids)) if overlap[:, j].sum() == 0]
    if absent:
        raise EvalInputError(f"{where}: segment {absent[0]} is in segments_info but not in the PNG")
    return overlap


def _index_of(id_map: np.ndarray, ids: list[int], unknown_message: str) -> np.ndarray:
    """Place of each pixel's id in the sorted list `ids` (void first); an id that is not in the
    list raises EvalInputError with `unknown_message` formatted with that id.

    Ids are looked up in a small table indexed by id modulo a prime under which the listed ids
    differ: several times faster per pixel than a binary search, which remains the fallback."""
    known = np.array(ids, dtype=id_map.dtype)  # same type: no converted copy of the map
    modulus = next((p for p in _MODULI if len(np.unique(known % p)) == len(known)), None)
    if modulus is None:
        index = np.minimum(np.searchsorted(known, id_map), len(known) - 1)
    else:
        table = np.zeros(modulus, dtype=np.intp)
        table[known % modulus] = np.arange(len(known))
        index = table[id_map % modulus]
    unknown = known[index] != id_map
    if unknown.any():
        raise EvalInputError(unknown_message.format(int(id_map[unknown][0])))
    return index


def _parse_predictions(data, image_ids: set[int]) -> dict[int, dict]:
    """Prediction annotations by image id, each checked for the fields PQ needs."""
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list):
        raise EvalInputError("predictions: expected a COCO panoptic JSON with 'annotations'")
    out: dict[int, dict] = {}
    for k, ann in enumerate(annotations):
        where = f"prediction #{k}"
        if not isinstance(ann, dict) or not all(
            key in ann for key in ("image_id", "file_name", "segments_info")
        ):
            raise EvalInputError(f"{where}: needs image_id, file_name and segments_info")
        if ann["image_id"] not in image_ids:
            raise EvalInputError(
                f"{where}: image_id {ann['image_id']!r} is not in the ground truth"
            )
        if ann["image_id"] in out:
            raise EvalInputError(f"{where}: a second prediction for image {ann['image_id']}")
        for segment in ann["segments_info"]:
            if not isinstance(segment, dict) or "id" not in segment or "category_id" not in segment:
                raise EvalInputError(f"{where}: each segments_info entry needs id and category_id")
            if not isinstance(segment["id"], int) or not 0 < segment["id"] < 256**3:
                raise EvalInputError(
                    f"{where}: segment id {segment['id']!r} is not an RGB-coded id (1 .. 256^3 - 1)"
                )
        out[ann["image_id"]] = ann
    return out


def _count_file_image(
    image, prediction: dict, pred_png_root: Path, categories: dict[int, bool]
) -> PqCounts:
    where = f"prediction for image {image.id}"
    gt = _gt_segments(image)
    path = pred_png_root / prediction["file_name"]
    category = {int(s["id"]): s["category_id"] for s in prediction["segments_info"]}
    if VOID in category:
        raise EvalInputError(f"{path}: segment id 0 is void and cannot be a segment")
    pred = Segments(read_id_png(path, (image.height, image.width), where), category)
    counts = PqCounts()
    count_image(gt, pred, counts, categories, where)
    return counts


def _gt_segments(image) -> Segments:
    return Segments(
        read_id_png(
            image.png_path, (image.height, image.width), f"ground truth of image {image.id}"
        ),
        {s.id: s.category_id for s in image.segments},
        {s.id: bool(s.iscrowd) for s in image.segments},
    )


# --- the service's answers ------------------------------------------------------------------------
# An answer's frames: frame index -> (segment ids, {segment id: category name}).
AnswerFrames = dict[int, tuple[np.ndarray, dict[int, str]]]


def evaluate_answers(dataset, gt_data: dict, pred: Path | str) -> EvalResult:
    """PQ of the service's answers (see the module's docstring) against a loaded COCO panoptic
    ground truth (`gt_data`: its raw JSON, for the images' video and frame index)."""
    categories = {c.id: c.isthing for c in dataset.categories.values()}
    id_of = {c.name: c.id for c in dataset.categories.values()}
    places = _image_places(gt_data)
    videos = sorted({video for video, _ in places.values()})
    answers = _answers_by_video(Path(pred), videos)
    counts = PqCounts()
    for image in dataset.images:
        video, frame_index = places[image.id]
        where = f"answer for video {video!r} frame {frame_index}"
        frame = answers[video].get(frame_index)
        if frame is None:
            raise EvalInputError(f"{where}: the answer has no frame {frame_index}")
        ids, names = frame
        pred = Segments(ids, {k: _category_id(id_of, name, where) for k, name in names.items()})
        count_image(_gt_segments(image), pred, counts, categories, where)
    return EvalResult("panoptic", pq_metrics(counts, categories))


def _is_answer_file(path: Path | str) -> bool:
    return Path(path).is_dir() or Path(path).suffix.lower() == ".zip"


def _image_places(gt_data: dict) -> dict[int, tuple[str, int]]:
    """Ground-truth image id -> (video, frame index)."""
    places = {}
    for info in gt_data["images"]:
        if "video" in info and "frame_index" in info:
            places[int(info["id"])] = (str(info["video"]), int(info["frame_index"]))
        else:
            places[int(info["id"])] = (Path(str(info["file_name"])).stem, 0)
    return places


def _answers_by_video(pred: Path, videos: list[str]) -> dict[str, AnswerFrames]:
    """Every video's answer; a lone answer file serves a lone video whatever its name."""
    files = sorted(p for p in pred.iterdir() if _is_answer(p)) if pred.is_dir() else [pred]
    if not files:
        raise EvalInputError(f"{pred}: no answers (<video>.json or <video>.zip) in the folder")
    if len(files) == 1 and len(videos) == 1 and not pred.is_dir():
        return {videos[0]: read_answer(files[0])}
    by_name = {f.stem: f for f in files}
    missing = [v for v in videos if v not in by_name]
    if missing:
        raise EvalInputError(
            f"{pred}: no answer for video {missing[0]!r} ({len(missing)} videos without one; "
            "name each answer <video>.json or <video>.zip)"
        )
    return {video: read_answer(by_name[video]) for video in videos}


def _is_answer(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in (".json", ".zip")


def read_answer(path: Path) -> AnswerFrames:
    """One answer of the service: its JSON (SegmentResponse) or its COCO panoptic zip."""
    if path.suffix.lower() == ".zip":
        return _read_answer_zip(path)
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list):
        raise EvalInputError(f"{path}: not an answer of POST /v1/segment (no 'frames')")
    return {
        int(frame["frame_index"]): _frame_ids(frame, (data["height"], data["width"]), path)
        for frame in data["frames"]
    }


def _frame_ids(frame: dict, size: tuple[int, int], path: Path) -> tuple[np.ndarray, dict]:
    from models.data.rle import decode_rle

    ids = np.zeros(size, dtype=np.int64)
    names = {}
    for segment in frame.get("segments", []):
        try:
            mask = decode_rle(segment["mask"]).astype(bool)
        except (KeyError, TypeError, ValueError) as error:
            raise EvalInputError(
                f"{path}: frame {frame['frame_index']} segment {segment.get('id')}: bad mask "
                f"({error})"
            ) from None
        if mask.shape != size or (ids[mask] != VOID).any():
            raise EvalInputError(
                f"{path}: frame {frame['frame_index']} segment {segment['id']}: its mask is "
                "not the frame's size or overlaps another segment"
            )
        ids[mask] = int(segment["id"])
        names[int(segment["id"])] = str(segment["category"])
    return ids, names


def _read_answer_zip(path: Path) -> AnswerFrames:
    """The zip of `Accept: application/zip`: a COCO panoptic JSON and its PNGs, read as written
    (models.data.coco_panoptic); a frame's index is its PNG's name."""
    from models.data.coco_panoptic import load_coco_panoptic
    from models.data.errors import DatasetError

    with tempfile.TemporaryDirectory(prefix="vidserve-eval-") as tmp:
        try:
            with zipfile.ZipFile(path) as archive:
                archive.extractall(tmp)
        except zipfile.BadZipFile as error:
            raise EvalInputError(f"{path}: not a zip ({error})") from None
        jsons = sorted(Path(tmp).glob("*.json"))
        if len(jsons) != 1:
            raise EvalInputError(f"{path}: expected one COCO panoptic JSON at the zip's root")
        try:
            answer = load_coco_panoptic(jsons[0])
            names = {c.id: c.name for c in answer.categories.values()}
            return {
                int(Path(image.file_name).stem): (
                    image.load_ids(),
                    {s.id: names[s.category_id] for s in image.segments},
                )
                for image in answer.images
            }
        except DatasetError as error:
            raise EvalInputError(f"{path}: {error}") from None


def _category_id(id_of: dict[str, int], name: str, where: str) -> int:
    if name not in id_of:
        raise EvalInputError(
            f"{where}: category {name!r} is not in the ground truth ({', '.join(id_of)})"
        )
    return id_of[name]


def read_id_png(path: Path, size: tuple[int, int], what: str) -> np.ndarray:
    """(H, W) segment ids of a COCO panoptic PNG (id = R + 256 G + 256^2 B)."""
    from PIL import Image

    try:
        with Image.open(path) as png:
            rgba = np.asarray(png.convert("RGBA"))
    except FileNotFoundError:
        raise EvalInputError(f"{path}: PNG of the {what} not found") from None
    except OSError as e:
        raise EvalInputError(f"{path}: not a readable PNG ({e})") from None
    if rgba.shape[:2] != tuple(size):
        raise EvalInputError(f"{path}: PNG size {list(rgba.shape[:2])} != image size {list(size)}")
    # The four bytes R, G, B, A read as one little-endian number: R + 256 G + 256^2 B + 256^3 A.
    return rgba.view("<u4")[..., 0] & 0xFFFFFF
