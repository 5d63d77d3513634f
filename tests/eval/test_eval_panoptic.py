"""Panoptic quality: hand-worked cases of matching, void, crowd; files; bad input."""

import json
import re

import numpy as np
import pytest

from models.data.coco_panoptic import (
    PanopticCategory,
    PanopticImage,
    segments_from_ids,
    write_coco_panoptic,
    write_panoptic_png,
)
from models.eval.errors import EvalInputError
from models.eval.panoptic import METRIC_NAMES, Segments, evaluate_panoptic, evaluate_panoptic_files

PERSON, CAR, SKY = 1, 2, 10
CATEGORIES = {PERSON: True, CAR: True, SKY: False}  # id -> isthing
SIZE = 20


def id_map(*regions):
    """A 20x20 segment-id map from (id, rows, cols) regions; the rest is void (0)."""
    ids = np.zeros((SIZE, SIZE), dtype=np.int64)
    for segment_id, rows, cols in regions:
        ids[rows, cols] = segment_id
    return ids


# Ground truth: a person (id 1) on the top-left 10x10, sky (id 2) on the bottom half (200
# pixels), the top-right 10x10 void.
GT = Segments(
    id_map((1, slice(0, 10), slice(0, 10)), (2, slice(10, 20), slice(None))), {1: PERSON, 2: SKY}
)


def pq(pred: Segments, gt: Segments = GT) -> dict[str, float]:
    return evaluate_panoptic([("image 1", gt, pred)], CATEGORIES).metrics


def test_perfect_prediction_scores_one():
    metrics = pq(Segments(GT.ids * 7, {7: PERSON, 14: SKY}))  # ids need not be the same
    assert all(metrics[name] == pytest.approx(1.0) for name in METRIC_NAMES)


def test_known_iou_with_void_left_out_of_the_union():
    # Person moved 2 columns right: overlap 10 x 8 = 80; 20 of its 100 pixels fall on void and
    # are left out of the union: U = 100 + 100 - 80 - 20 = 100, IoU = 0.8 (0.67 with void).
    # Things: SQ = 0.8, RQ = 1, PQ = 0.8. Stuff perfect. All: PQ = (0.8 + 1) / 2 = 0.9.
    pred = Segments(
        id_map((1, slice(0, 10), slice(2, 12)), (2, slice(10, 20), slice(None))),
        {1: PERSON, 2: SKY},
    )
    metrics = pq(pred)
    assert (metrics["PQ_th"], metrics["SQ_th"], metrics["RQ_th"]) == pytest.approx((0.8, 0.8, 1))
    assert metrics["PQ_st"] == pytest.approx(1.0)
    assert metrics["PQ"] == pytest.approx(0.9)


def test_missed_object_and_iou_of_exactly_half():
    # Person missed: TP 0, FN 1 -> PQ_th = SQ_th = RQ_th = 0; all: (0 + 1) / 2.
    sky_only = Segments(id_map((2, slice(10, 20), slice(None))), {2: SKY})
    metrics = pq(sky_only)
    assert (metrics["PQ_th"], metrics["RQ_th"], metrics["PQ"]) == pytest.approx((0, 0, 0.5))
    # Half the person: I = 50, U = 100, IoU = 0.5 is not "over 0.5": no match, so one FP and
    # one FN for person, PQ_th = 0.
    half = Segments(
        id_map((1, slice(0, 10), slice(0, 5)), (2, slice(10, 20), slice(None))), {1: PERSON, 2: SKY}
    )
    assert pq(half)["PQ_th"] == 0.0


def test_false_positive():
    # A car (25 pixels) painted over the sky: car FP (PQ 0); person perfect (1); sky keeps 175
    # of 200 pixels, IoU 0.875. Things: (1 + 0) / 2 = 0.5; stuff 0.875;
    # all: (1 + 0 + 0.875) / 3 = 0.625.
    pred = Segments(
        id_map(
            (1, slice(0, 10), slice(0, 10)),
            (2, slice(10, 20), slice(None)),
            (3, slice(15, 20), slice(0, 5)),
        ),
        {1: PERSON, 2: SKY, 3: CAR},
    )
    metrics = pq(pred)
    assert (metrics["PQ_th"], metrics["SQ_th"], metrics["RQ_th"]) == pytest.approx((0.5, 0.5, 0.5))
    assert metrics["PQ_st"] == pytest.approx(0.875)
    assert metrics["PQ"] == pytest.approx(0.625)


def test_prediction_on_void_is_not_a_false_positive():
    # A car covering the void top-right 10x10: more than half on void, so it is not counted;
    # car then occurs nowhere and is left out of the averages.
    pred = Segments(GT.ids + id_map((3, slice(0, 10), slice(10, 20))), {1: PERSON, 2: SKY, 3: CAR})
    assert pq(pred)["PQ"] == pytest.approx(1.0)


def test_crowd_region():
    # A crowd of cars on the top-right: never a false negative, and a car prediction lying
    # more than half on it is not a false positive. A person there is (other category).
    gt = Segments(
        GT.ids + id_map((3, slice(0, 10), slice(10, 20))), {1: PERSON, 2: SKY, 3: CAR}, {3: True}
    )
    car = Segments(GT.ids + id_map((3, slice(0, 10), slice(12, 20))), {1: PERSON, 2: SKY, 3: CAR})
    assert pq(car, gt)["PQ"] == pytest.approx(1.0)
    person = Segments(car.ids, {1: PERSON, 2: SKY, 3: PERSON})
    # Person: 1 TP (IoU 1) and 1 FP: PQ = 1 / (1 + 1/2) = 2/3; sky 1: all = (2/3 + 1) / 2.
    assert pq(person, gt)["PQ"] == pytest.approx(5 / 6)


def test_empty_prediction_list_scores_zero():
    assert all(v == 0.0 for v in evaluate_panoptic([], CATEGORIES).metrics.values())


@pytest.mark.parametrize(
    ("pred", "message"),
    [
        (
            Segments(GT.ids, {1: PERSON}),
            "image 1: segment id 2 is in the PNG but not in segments_info",
        ),
        (
            Segments(GT.ids, {1: PERSON, 2: SKY, 5: CAR}),
            "image 1: segment 5 is in segments_info but not in the PNG",
        ),
        (
            Segments(GT.ids, {1: PERSON, 2: 99}),
            "image 1: segment 2 has category_id 99, which is not",
        ),
        (Segments(GT.ids[:10], {1: PERSON, 2: SKY}), "image 1: PNG size [10, 20] != image size"),
    ],
)
def test_bad_predictions_are_named(pred, message):
    with pytest.raises(EvalInputError, match="^" + re.escape(message)):
        pq(pred)


def write_gt(folder):
    """COCO panoptic ground truth of two images (GT and GT with the person moved down)."""
    categories = {c: PanopticCategory(c, str(c), isthing) for c, isthing in CATEGORIES.items()}
    png_root = folder / "panoptic_val"
    png_root.mkdir(parents=True)
    images = []
    for image_id, ids in ((1, GT.ids), (2, np.roll(GT.ids, 3, axis=0))):
        write_panoptic_png(png_root / f"{image_id}.png", ids)
        images.append(
            PanopticImage(
                image_id,
                f"{image_id}.jpg",
                SIZE,
                SIZE,
                png_root / f"{image_id}.png",
                segments_from_ids(ids, {1: PERSON, 2: SKY}),
            )
        )
    write_coco_panoptic(folder / "panoptic_val.json", images, categories, png_root)


def write_predictions(folder, annotations, pngs):
    (folder / "pred").mkdir(parents=True, exist_ok=True)
    for name, ids in pngs.items():
        write_panoptic_png(folder / "pred" / name, ids)
    (folder / "pred.json").write_text(json.dumps({"annotations": annotations}))


def prediction(image_id, segments=((1, PERSON), (2, SKY))):
    return {
        "image_id": image_id,
        "file_name": f"{image_id}.png",
        "segments_info": [{"id": i, "category_id": c} for i, c in segments],
    }


def test_files(tmp_path):
    write_gt(tmp_path)
    pngs = {"1.png": GT.ids, "2.png": np.roll(GT.ids, 3, axis=0)}
    write_predictions(tmp_path, [prediction(1), prediction(2)], pngs)
    gt_json, pred_json = tmp_path / "panoptic_val.json", tmp_path / "pred.json"
    assert evaluate_panoptic_files(gt_json, pred_json).metrics["PQ"] == pytest.approx(1.0)

    write_predictions(tmp_path, [prediction(1)], pngs)
    with pytest.raises(EvalInputError, match="no prediction for image 2"):
        evaluate_panoptic_files(gt_json, pred_json)
    write_predictions(tmp_path, [prediction(1), prediction(2), prediction(9)], pngs)
    with pytest.raises(EvalInputError, match="prediction #2: image_id 9 is not in the ground"):
        evaluate_panoptic_files(gt_json, pred_json)
    write_predictions(tmp_path, [prediction(1), dict(prediction(2), file_name="x.png")], pngs)
    with pytest.raises(EvalInputError, match="x.png: PNG of the prediction for image 2 not found"):
        evaluate_panoptic_files(gt_json, pred_json)
    write_predictions(tmp_path, [prediction(1), prediction(2, [(1, PERSON)])], pngs)
    with pytest.raises(EvalInputError, match="prediction for image 2: segment id 2 is in the PNG"):
        evaluate_panoptic_files(gt_json, pred_json)
    write_predictions(tmp_path, [], {})
    metrics = evaluate_panoptic_files(gt_json, pred_json).metrics
    assert all(v == 0.0 for v in metrics.values())


def test_id_lookup_with_and_without_the_modulo_table():
    from models.eval.panoptic import _MODULI, _index_of

    rng = np.random.default_rng(0)
    few = [0, 7, 1000, 256**3 - 1]  # told apart modulo 251: the table is used
    # A pair of ids p apart for every prime p collides under each: binary search is used.
    colliding = sorted({0, *(v for k, p in enumerate(_MODULI) for v in (k + 1, k + 1 + p))})
    assert len({v % 251 for v in few}) == len(few)
    assert all(len({v % p for v in colliding}) < len(colliding) for p in _MODULI)
    for ids in (few, colliding):
        id_map = np.array(ids, dtype=np.uint32)[rng.integers(0, len(ids), (30, 40))]
        index = _index_of(id_map, ids, "unknown {}")
        np.testing.assert_array_equal(np.array(ids)[index], id_map)
        with pytest.raises(EvalInputError, match="^unknown 999999$"):
            _index_of(
                np.where(id_map == ids[1], 999999, id_map).astype(np.uint32), ids, "unknown {}"
            )
