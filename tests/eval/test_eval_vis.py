"""YouTube-VIS video AP: hand-worked cases, a cross-check with pycocotools, bad input."""

import contextlib
import io
import json
import re

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from models.data.rle import encode_mask
from models.data.ytvis import YtvisTrack, YtvisVideo, write_ytvis
from models.eval.coco_ap import COCO_AREA_RANGES, METRIC_NAMES
from models.eval.errors import EvalInputError
from models.eval.vis import (
    Video,
    evaluate_vis,
    evaluate_vis_files,
    mean_nonempty_area,
    parse_results,
    track_ious,
)

SIZE = 20
VIDEOS = {1: Video(1, 3, SIZE, SIZE), 2: Video(2, 3, SIZE, SIZE), 5: Video(5, 5, SIZE, SIZE)}
CATEGORIES = [1, 2]


def box(y0, x0, y1, x1, size=SIZE):
    """RLE (str counts) of the box rows y0..y1-1, columns x0..x1-1 of a size x size frame."""
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[y0:y1, x0:x1] = 1
    return encode_mask(mask)


SQUARE_A = box(0, 0, 10, 10)  # 100 pixels
SQUARE_B = box(10, 10, 20, 20)  # 100 pixels, disjoint from A


def tracks(entries, videos=VIDEOS):
    """Tracks from results-style dicts, through the same checks a results file gets."""
    return parse_results(entries, videos, set(CATEGORIES))


def result(video_id, masks, score=1.0, category_id=1):
    return {
        "video_id": video_id,
        "category_id": category_id,
        "score": score,
        "segmentations": masks,
    }


def ap(gt_entries, pred_entries, **kwargs):
    gt = tracks(gt_entries)
    for track, entry in zip(gt, gt_entries, strict=True):
        track.iscrowd = bool(entry.get("iscrowd", False))
    return evaluate_vis(gt, tracks(pred_entries), VIDEOS, CATEGORIES, **kwargs).metrics


def test_perfect_prediction_scores_one():
    gt = [
        result(1, [SQUARE_A, SQUARE_A, None]),
        result(1, [None, SQUARE_B, SQUARE_B], 1.0, 2),
        result(2, [SQUARE_B, SQUARE_B, SQUARE_A]),
    ]
    metrics = ap(gt, [dict(e, score=0.9) for e in gt])
    for name in ("AP", "AP50", "AP75", "AP_small", "AR1", "AR10", "AR100", "AR_small"):
        assert metrics[name] == pytest.approx(1.0), name
    # 100-pixel tracks are all small (<= 128^2): medium and large have no ground truth.
    assert metrics["AP_medium"] == metrics["AP_large"] == -1.0


def test_track_iou_sums_intersections_and_unions_over_frames():
    # Frame 0: identical, I = 100, U = 100. Frame 1: the prediction is moved 4 columns right,
    # I = 10 x 6 = 60, U = 100 + 100 - 60 = 140. Frame 2: both absent, adds nothing.
    # Track IoU = (100 + 60) / (100 + 140) = 160 / 240 = 2/3 (not the mean of 1 and 60/140).
    gt = [result(1, [SQUARE_A, SQUARE_A, None])]
    pred = [result(1, [SQUARE_A, box(0, 4, 10, 14), None])]
    ious, _, _ = track_ious(tracks(pred), tracks(gt), VIDEOS[1])
    assert ious[0, 0] == pytest.approx(2 / 3)
    metrics = ap(gt, pred)
    # 2/3 passes the thresholds 0.50, 0.55, 0.60, 0.65: 4 of 10, each with precision 1.
    assert metrics["AP"] == pytest.approx(0.4)
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == pytest.approx(0.0)
    assert metrics["AR100"] == pytest.approx(0.4)


def test_missed_object_halves_recall():
    # Two ground-truth tracks, one found perfectly: recall 0.5 with precision 1. The 101-point
    # interpolation samples recall 0.00 .. 0.50 at precision 1 (51 points) and 0 above:
    # AP = 51 / 101.
    gt = [result(1, [SQUARE_A] * 3), result(1, [SQUARE_B] * 3)]
    metrics = ap(gt, [result(1, [SQUARE_A] * 3)])
    assert metrics["AP"] == pytest.approx(51 / 101)
    assert metrics["AR100"] == pytest.approx(0.5)


def test_false_positive_counts_only_above_the_true_one():
    gt = [result(1, [SQUARE_A] * 3)]
    true_track = result(1, [SQUARE_A] * 3, score=0.8)
    false_track = result(1, [SQUARE_B] * 3)  # overlaps nothing
    # Ranked below the true positive, the false one comes after recall reached 1: AP = 1.
    assert ap(gt, [true_track, dict(false_track, score=0.5)])["AP"] == pytest.approx(1.0)
    # Ranked above it: precision is 0 then 1/2 at recall 1, made monotone 1/2 everywhere: 0.5.
    assert ap(gt, [true_track, dict(false_track, score=0.9)])["AP"] == pytest.approx(0.5)


def test_track_that_swaps_objects_midway_matches_neither():
    # Four frames: ground truth A on the top-left square, B on the bottom-right one.
    # The tracker swaps ids after frame 1: prediction P follows A on frames 0-1, then B.
    # IoU(P, A) = I (100 + 100) / U (100 + 100 + 200 + 200) = 200 / 600 = 1/3 < 0.5; same for
    # the other prediction and B. No match at any threshold: AP = AR = 0.
    videos = {1: Video(1, 4, SIZE, SIZE)}
    gt = parse_results([result(1, [SQUARE_A] * 4), result(1, [SQUARE_B] * 4)], videos, {1})
    pred = parse_results(
        [
            result(1, [SQUARE_A, SQUARE_A, SQUARE_B, SQUARE_B], 0.9),
            result(1, [SQUARE_B, SQUARE_B, SQUARE_A, SQUARE_A], 0.8),
        ],
        videos,
        {1},
    )
    ious, _, _ = track_ious(pred, gt, videos[1])
    np.testing.assert_allclose(ious, [[1 / 3, 1 / 3], [1 / 3, 1 / 3]])
    metrics = evaluate_vis(gt, pred, videos, [1]).metrics
    assert metrics["AP"] == 0.0
    assert metrics["AR100"] == 0.0


def test_empty_frames():
    gt = [result(1, [SQUARE_A, SQUARE_A, None])]
    # Absent in both on frame 2: it adds nothing, IoU = 200 / 200 = 1.
    assert ap(gt, [result(1, [SQUARE_A, SQUARE_A, None])])["AP"] == pytest.approx(1.0)
    # A mask where the ground truth has none adds its area to the union: 200 / 300 = 2/3,
    # which passes 4 of the 10 thresholds: AP = 0.4.
    assert ap(gt, [result(1, [SQUARE_A, SQUARE_A, SQUARE_B])])["AP"] == pytest.approx(0.4)


def test_empty_prediction_set_scores_zero():
    gt = tracks([result(1, [SQUARE_A] * 3)])
    metrics = evaluate_vis(gt, [], VIDEOS, CATEGORIES).metrics
    assert list(metrics) == list(METRIC_NAMES)
    assert all(v == 0.0 for v in metrics.values())


def test_area_is_the_mean_over_non_empty_frames():
    assert mean_nonempty_area(np.array([100.0, 0.0, 300.0])) == 200.0
    assert mean_nonempty_area(np.array([0.0, 0.0])) == 0.0
    # One track of 100 pixels on 1 frame of 3: its area is 100 (not 33), so with a split at
    # 50 it is "medium", not "small".
    ranges = {"all": (0, 1e10), "small": (0, 50), "medium": (50, 150), "large": (150, 1e10)}
    gt = [result(1, [SQUARE_A, None, box(0, 0, 0, 0)])]
    metrics = ap(gt, [result(1, [SQUARE_A, None, None])], area_ranges=ranges)
    assert metrics["AP_medium"] == pytest.approx(1.0)
    assert metrics["AP_small"] == -1.0


def test_crowd_ground_truth_absorbs_detections_without_false_positives():
    gt = [result(1, [SQUARE_A] * 3), dict(result(1, [SQUARE_B] * 3), iscrowd=True)]
    # The two detections on the crowd region are ignored, not false positives; even ranked
    # first they leave AP = 1. Without the crowd flag they would be false positives.
    pred = [
        result(1, [SQUARE_B] * 3, 0.95),
        result(1, [SQUARE_B] * 3, 0.9),
        result(1, [SQUARE_A] * 3, 0.5),
    ]
    assert ap(gt, pred)["AP"] == pytest.approx(1.0)
    assert ap([gt[0]], pred)["AP"] == pytest.approx(1 / 3)


def test_single_frame_videos_equal_pycocotools_mask_ap():
    """VIS AP on one-frame videos is COCO mask AP on those frames (with COCO's area split)."""
    rng = np.random.default_rng(7)
    height, width, categories = 64, 96, [1, 2, 3]
    images, annotations, results, videos, gt, pred = [], [], [], {}, [], []
    for image_id in range(1, 13):
        images.append({"id": image_id, "height": height, "width": width})
        videos[image_id] = Video(image_id, 1, height, width)
        for _ in range(rng.integers(0, 4)):
            y, x = rng.integers(0, height - 8), rng.integers(0, width - 8)
            mask = np.zeros((height, width), dtype=np.uint8)
            mask[y : y + rng.integers(4, 50), x : x + rng.integers(4, 60)] = 1
            category = int(rng.choice(categories))
            rle = encode_mask(mask)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "segmentation": rle,
                    "area": float(mask.sum()),
                    "iscrowd": 0,
                }
            )
            gt.append(result(image_id, [rle], 1.0, category))
            for _ in range(rng.integers(0, 3)):  # near copies, sometimes mislabelled
                moved = np.roll(mask, tuple(rng.integers(-3, 4, 2)), axis=(0, 1))
                label = category if rng.random() < 0.8 else int(rng.choice(categories))
                pred.append(result(image_id, [encode_mask(moved)], float(rng.random()), label))
        if rng.random() < 0.5:  # a false positive
            pred.append(
                result(
                    image_id,
                    [corner_square(height, width)],
                    float(rng.random()),
                    int(rng.choice(categories)),
                )
            )
    results = [
        {
            "image_id": r["video_id"],
            "category_id": r["category_id"],
            "score": r["score"],
            "segmentation": r["segmentations"][0],
        }
        for r in pred
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": c} for c in categories],
        }
        coco.createIndex()
        reference = COCOeval(coco, coco.loadRes(results), "segm")
        reference.evaluate()
        reference.accumulate()
        reference.summarize()
    ours = evaluate_vis(
        parse_results(gt, videos, set(categories)),
        parse_results(pred, videos, set(categories)),
        videos,
        categories,
        area_ranges=COCO_AREA_RANGES,
    ).metrics
    assert 0.2 < ours["AP"] < 0.9  # a case with something to get right
    np.testing.assert_allclose(list(ours.values()), reference.stats, atol=1e-12)


def corner_square(height, width):
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[:12, :12] = 1
    return encode_mask(mask)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (result(17, [SQUARE_A] * 3), "result #1: video_id 17 is not in the ground truth"),
        (result(1, [SQUARE_A] * 3, category_id=9), "result #1: category_id 9 is not in the ground"),
        (
            result(1, [SQUARE_A, box(0, 0, 5, 5, size=10), None]),
            "result #1 frame 1: RLE size [10, 10] != video size [20, 20]",
        ),
        (
            result(1, [SQUARE_A, None, {"size": [20, 20], "counts": "0000"}]),
            "result #1 frame 2: malformed RLE",
        ),
        (
            result(1, [SQUARE_A, None, {"size": [20, 20], "counts": SQUARE_A["counts"][:-2]}]),
            "result #1 frame 2: malformed RLE",
        ),
        (
            result(1, [{"size": [20, 20], "counts": [10, 20]}, None, None]),
            "result #1 frame 0: malformed RLE",
        ),
        (result(1, [[1, 2, 3], None, None]), "result #1 frame 0: segmentation is not an RLE"),
        (result(1, [SQUARE_A] * 2), "result #1: 2 segmentations for video 1, which has 3 frames"),
        (result(1, [SQUARE_A] * 3, score=float("nan")), "result #1: score nan is not a finite"),
        ({"video_id": 1, "score": 1.0, "segmentations": []}, "result #1: missing 'category_id'"),
        ("oops", "result #1: expected an object"),
    ],
)
def test_bad_result_entries_are_named(entry, message):
    with pytest.raises(EvalInputError, match="^" + re.escape(message)):
        tracks([result(1, [SQUARE_A] * 3), entry])


def test_uncompressed_and_bytes_counts_are_accepted():
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8, order="F")
    mask[0:10, 0:10] = 1
    compressed = mask_utils.encode(mask)  # bytes counts
    # Column-major runs of SQUARE_A: 10 columns of (10 on, 10 off), after a leading 0 run.
    uncompressed = {"size": [SIZE, SIZE], "counts": [0] + [10] * 19 + [210]}
    pred = [result(1, [compressed, uncompressed, SQUARE_A])]
    assert ap([result(1, [SQUARE_A] * 3)], pred)["AP"] == pytest.approx(1.0)


def test_files_end_to_end(tmp_path):
    videos = [YtvisVideo(1, "v1", SIZE, SIZE, [f"v1/{t}.jpg" for t in range(3)])]
    gt_tracks = [YtvisTrack(1, 1, 1, 0, [SQUARE_A, SQUARE_A, None])]
    write_ytvis(tmp_path / "gt.json", videos, gt_tracks, {1: "cat", 2: "dog"})
    (tmp_path / "results.json").write_text(json.dumps([result(1, [SQUARE_A, SQUARE_A, None])]))
    ap_perfect = evaluate_vis_files(tmp_path / "gt.json", tmp_path / "results.json").metrics["AP"]
    assert ap_perfect == pytest.approx(1.0)
    (tmp_path / "results.json").write_text(json.dumps([result(3, [None] * 3)]))
    with pytest.raises(EvalInputError, match="result #0: video_id 3 is not in the ground truth"):
        evaluate_vis_files(tmp_path / "gt.json", tmp_path / "results.json")
    (tmp_path / "results.json").write_text("[")
    with pytest.raises(EvalInputError, match="not valid JSON"):
        evaluate_vis_files(tmp_path / "gt.json", tmp_path / "results.json")
    (tmp_path / "results.json").write_text("[]")
    assert evaluate_vis_files(tmp_path / "gt.json", tmp_path / "results.json").metrics["AP"] == 0
