"""COCO mask AP of per-frame instance segmentation, computed by pycocotools' COCOeval.

Our part is the input checks (every result names its problem instead of failing inside
pycocotools) and the empty case; the numbers are COCOeval's own.
"""

import contextlib
import io
import math
from pathlib import Path

from models.eval.coco_ap import METRIC_NAMES, zero_metrics
from models.eval.errors import EvalInputError
from models.eval.inputs import read_json
from models.eval.masks import checked_rles
from models.eval.report import EvalResult


def evaluate_instances(gt: dict, results: list) -> EvalResult:
    """COCO segm AP/AR of a results list `{image_id, category_id, score, segmentation}` against a
    COCO instances dict. An empty result list scores 0."""
    _check_gt(gt)
    images = {image["id"]: image for image in gt["images"]}
    categories = {c["id"] for c in gt["categories"]}
    checked = check_results(results, images, categories)
    if not checked:
        return EvalResult("instance", zero_metrics())
    return EvalResult(
        "instance", dict(zip(METRIC_NAMES, _cocoeval_stats(gt, checked), strict=True))
    )


def evaluate_instance_files(gt_file: Path | str, results_file: Path | str) -> EvalResult:
    return evaluate_instances(read_json(gt_file), read_json(results_file))


def check_results(results, images: dict, categories: set) -> list[dict]:
    """Results with checked RLEs (bytes counts); a bad entry raises EvalInputError naming it."""
    if not isinstance(results, list):
        raise EvalInputError(
            "results: expected a JSON list of {image_id, category_id, score, segmentation}"
        )
    for k, entry in enumerate(results):
        _check_result_head(k, entry, images, categories)
    sizes = [(images[r["image_id"]]["height"], images[r["image_id"]]["width"]) for r in results]
    rles = checked_rles(
        [r["segmentation"] for r in results], sizes, lambda k: f"result #{k}", size_name="image"
    )
    return [
        {
            "image_id": r["image_id"],
            "category_id": r["category_id"],
            "score": float(r["score"]),
            "segmentation": rle,
        }
        for r, rle in zip(results, rles, strict=True)
    ]


def _check_result_head(k: int, entry, images: dict, categories: set) -> None:
    where = f"result #{k}"
    if not isinstance(entry, dict):
        raise EvalInputError(f"{where}: expected an object, got {type(entry).__name__}")
    for key in ("image_id", "category_id", "score", "segmentation"):
        if key not in entry:
            raise EvalInputError(f"{where}: missing '{key}'")
    if entry["image_id"] not in images:
        raise EvalInputError(f"{where}: image_id {entry['image_id']!r} is not in the ground truth")
    if entry["category_id"] not in categories:
        raise EvalInputError(
            f"{where}: category_id {entry['category_id']!r} is not in the ground truth"
        )
    score = entry["score"]
    if not isinstance(score, int | float) or not math.isfinite(score):
        raise EvalInputError(f"{where}: score {score!r} is not a finite number")


def _check_gt(gt) -> None:
    """Enough structure for COCOeval to run; the dataset's own reader checks the rest."""
    if not isinstance(gt, dict):
        raise EvalInputError("ground truth: expected a COCO instances JSON object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(gt.get(key), list):
            raise EvalInputError(f"ground truth: missing or non-list '{key}'")
    for k, image in enumerate(gt["images"]):
        if not all(key in image for key in ("id", "height", "width")):
            raise EvalInputError(f"ground truth image #{k}: needs id, height and width")
    for k, ann in enumerate(gt["annotations"]):
        missing = [
            key
            for key in ("id", "image_id", "category_id", "segmentation", "area")
            if key not in ann
        ]
        if missing:
            raise EvalInputError(f"ground truth annotation #{k}: missing {missing}")


def _cocoeval_stats(gt: dict, results: list[dict]) -> list[float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dataset = dict(gt)
    dataset["annotations"] = [{"iscrowd": 0, **ann} for ann in gt["annotations"]]
    # pycocotools reports progress on stdout; the caller prints the table it wants.
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(v) for v in evaluator.stats]
