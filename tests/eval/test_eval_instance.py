"""COCO mask AP of per-frame instances: hand cases, equality with COCOeval, bad input."""

import contextlib
import io
import json
import re

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from models.data.rle import encode_mask
from models.eval.coco_ap import METRIC_NAMES
from models.eval.errors import EvalInputError
from models.eval.instance import evaluate_instance_files, evaluate_instances

SIZE = 20


def square(y0, x0, side=10, size=SIZE):
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[y0 : y0 + side, x0 : x0 + side] = 1
    return encode_mask(mask)


def ground_truth(annotations):
    """A COCO instances dict of two 20x20 images and two categories."""
    return {
        "images": [
            {"id": 1, "height": SIZE, "width": SIZE},
            {"id": 2, "height": SIZE, "width": SIZE},
        ],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [{"id": k + 1, "iscrowd": 0, **a} for k, a in enumerate(annotations)],
    }


def annotation(image_id, rle, category_id=1):
    return {"image_id": image_id, "category_id": category_id, "segmentation": rle, "area": 100.0}


def detection(image_id, rle, score=0.9, category_id=1):
    return {"image_id": image_id, "category_id": category_id, "score": score, "segmentation": rle}


GT = ground_truth([annotation(1, square(0, 0)), annotation(2, square(10, 10), 2)])


def test_perfect_prediction_scores_one():
    metrics = evaluate_instances(
        GT, [detection(1, square(0, 0)), detection(2, square(10, 10), category_id=2)]
    ).metrics
    assert metrics["AP"] == pytest.approx(1.0)
    assert metrics["AR100"] == pytest.approx(1.0)
    assert metrics["AP_large"] == -1.0  # 100-pixel masks are all small (< 32^2)


def test_known_iou_missed_object_and_false_positive():
    # Image 1: the mask moved 2 columns: I = 10 x 8 = 80, U = 120, IoU = 2/3, which passes
    # 0.50 .. 0.65: 4 of 10 thresholds. Image 2 (category 2): missed. Category 1 has AP 0.4,
    # category 2 has AP 0: mean 0.2.
    metrics = evaluate_instances(GT, [detection(1, square(0, 2))]).metrics
    assert metrics["AP"] == pytest.approx(0.2)
    # A false positive of category 1 on image 2 ranked above the true one: category 1's
    # precision is 1/2 at its only recall level, so its AP is 0.4 x 1/2 and the mean 0.1.
    metrics = evaluate_instances(
        GT, [detection(1, square(0, 2), 0.5), detection(2, square(0, 0), 0.9)]
    ).metrics
    assert metrics["AP"] == pytest.approx(0.1)


def test_empty_prediction_set_scores_zero():
    metrics = evaluate_instances(GT, []).metrics
    assert list(metrics) == list(METRIC_NAMES)
    assert all(v == 0.0 for v in metrics.values())


def test_equals_cocoeval_run_directly():
    rng = np.random.default_rng(3)
    annotations, results = [], []
    gt = ground_truth([])
    gt["images"] = [{"id": i, "height": 48, "width": 64} for i in range(1, 9)]
    for image in gt["images"]:
        for _ in range(rng.integers(1, 4)):
            mask = np.zeros((48, 64), dtype=np.uint8)
            y, x = rng.integers(0, 40), rng.integers(0, 56)
            mask[y : y + rng.integers(5, 40), x : x + rng.integers(5, 50)] = 1
            category = int(rng.integers(1, 3))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image["id"],
                    "category_id": category,
                    "segmentation": encode_mask(mask),
                    "area": float(mask.sum()),
                    "iscrowd": 0,
                }
            )
            moved = np.roll(mask, tuple(rng.integers(-4, 5, 2)), axis=(0, 1))
            results.append(
                detection(image["id"], encode_mask(moved), float(rng.random()), category)
            )
    gt["annotations"] = annotations
    ours = evaluate_instances(gt, results).metrics
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = json.loads(json.dumps(gt))
        coco.createIndex()
        reference = COCOeval(coco, coco.loadRes(json.loads(json.dumps(results))), "segm")
        reference.evaluate()
        reference.accumulate()
        reference.summarize()
    assert 0.1 < ours["AP"] < 0.9
    np.testing.assert_allclose(list(ours.values()), reference.stats, atol=1e-12)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (detection(7, square(0, 0)), "result #1: image_id 7 is not in the ground truth"),
        (
            detection(1, square(0, 0), category_id=5),
            "result #1: category_id 5 is not in the ground",
        ),
        (
            detection(1, square(0, 0, 3, size=8)),
            "result #1: RLE size [8, 8] != image size [20, 20]",
        ),
        (detection(1, {"size": [20, 20], "counts": "PQ"}), "result #1: malformed RLE"),
        (
            detection(1, square(0, 0), score="high"),
            "result #1: score 'high' is not a finite number",
        ),
        ({"image_id": 1, "category_id": 1, "score": 1.0}, "result #1: missing 'segmentation'"),
    ],
)
def test_bad_results_are_named(entry, message):
    with pytest.raises(EvalInputError, match="^" + re.escape(message)):
        evaluate_instances(GT, [detection(1, square(0, 0)), entry])


def test_files(tmp_path):
    (tmp_path / "gt.json").write_text(json.dumps(GT))
    (tmp_path / "res.json").write_text(json.dumps([detection(1, square(0, 0))]))
    metrics = evaluate_instance_files(tmp_path / "gt.json", tmp_path / "res.json").metrics
    assert metrics["AP"] == pytest.approx(0.5)  # category 1 found, category 2 missed
    (tmp_path / "gt.json").write_text(json.dumps({"images": []}))
    with pytest.raises(EvalInputError, match="ground truth: missing or non-list 'annotations'"):
        evaluate_instance_files(tmp_path / "gt.json", tmp_path / "res.json")
