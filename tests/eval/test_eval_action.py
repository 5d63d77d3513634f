"""AVA frame-mAP@0.5: hand-worked precision/recall cases, the official matching rules, files."""

import numpy as np
import pytest

from models.data.ava import AvaBox, write_action_list, write_ava_csv
from models.eval.action import (
    average_precision,
    box_iou,
    evaluate_action_files,
    evaluate_actions,
)
from models.eval.errors import EvalInputError

LEFT = (0.0, 0.0, 0.4, 1.0)
RIGHT = (0.6, 0.0, 1.0, 1.0)
# LEFT shifted by 0.1: intersection 0.3 x 1, union 0.5 x 1 -> IoU 0.6.
LEFT_SHIFTED = (0.1, 0.0, 0.5, 1.0)
# LEFT shifted by 0.2: intersection 0.2, union 0.6 -> IoU 1/3.
LEFT_FAR = (0.2, 0.0, 0.6, 1.0)


def gt(box, action=1, video="v", t=902):
    return AvaBox(video, t, box, action, person_id=0)


def det(box, score, action=1, video="v", t=902):
    return AvaBox(video, t, box, action, score=score)


def mean_ap(gts, dets, **kwargs):
    return evaluate_actions(gts, dets, **kwargs).metrics["mAP@0.5"]


def test_box_iou():
    ious = box_iou(np.array([LEFT_SHIFTED, LEFT_FAR]), np.array([LEFT, RIGHT]))
    np.testing.assert_allclose(ious, [[0.6, 0.0], [1 / 3, 0.0]])


def test_perfect_prediction_scores_one():
    gts = [gt(LEFT), gt(RIGHT, action=2), gt(LEFT, t=903)]
    assert mean_ap(gts, [det(b.box, 0.9, b.action_id, t=b.timestamp) for b in gts]) == 1.0


def test_iou_threshold():
    assert mean_ap([gt(LEFT)], [det(LEFT_SHIFTED, 0.9)]) == 1.0  # IoU 0.6 >= 0.5
    assert mean_ap([gt(LEFT)], [det(LEFT_FAR, 0.9)]) == 0.0  # IoU 1/3


def test_missed_object():
    # Two ground-truth boxes, one found: precision 1 up to recall 0.5, then nothing.
    # AP = 0.5 x 1 = 0.5.
    assert mean_ap([gt(LEFT), gt(RIGHT)], [det(LEFT, 0.9)]) == pytest.approx(0.5)


def test_false_positive_ranked_first():
    # Ranked: FP (precision 0, recall 0), TP (precision 1/2, recall 1). Monotone precision
    # makes the step from recall 0 to 1 count at 1/2: AP = 0.5.
    assert mean_ap([gt(LEFT)], [det(RIGHT, 0.9), det(LEFT, 0.8)]) == pytest.approx(0.5)
    # Ranked last it changes nothing: AP = 1.
    assert mean_ap([gt(LEFT)], [det(RIGHT, 0.7), det(LEFT, 0.8)]) == pytest.approx(1.0)


def test_duplicate_detection_and_the_official_argmax_rule():
    # A second detection of the same box is a false positive: TP then FP, AP = 1 still
    # (recall 1 is reached at precision 1).
    assert mean_ap([gt(LEFT)], [det(LEFT, 0.9), det(LEFT_SHIFTED, 0.8)]) == pytest.approx(1.0)
    # Official rule: a detection goes to the box it overlaps most; if that one is taken it is a
    # false positive even when another box would match. Ground truth LEFT and WIDE; the first
    # detection takes LEFT; the second (LEFT_SHIFTED) overlaps LEFT at 0.6 and WIDE at
    # 0.4 / 0.75 = 0.53, so it goes to LEFT, which is taken: FP, WIDE stays missed.
    # Precision [1, 1/2] at recall [1/2, 1/2]: AP = 0.5.
    wide = (0.1, 0.0, 0.85, 1.0)
    np.testing.assert_allclose(
        box_iou(np.array([LEFT_SHIFTED]), np.array([LEFT, wide])), [[0.6, 0.4 / 0.75]]
    )
    assert mean_ap([gt(LEFT), gt(wide)], [det(LEFT, 0.9), det(LEFT_SHIFTED, 0.8)]) == 0.5


def test_mean_is_over_classes_with_ground_truth():
    # Class 1 perfect (AP 1), class 2 missed (AP 0); class 3 has no ground truth: its
    # detections count nowhere. mAP = (1 + 0) / 2.
    gts = [gt(LEFT, 1), gt(RIGHT, 2)]
    result = evaluate_actions(gts, [det(LEFT, 0.9, 1), det(RIGHT, 0.9, 3)])
    assert result.metrics["mAP@0.5"] == pytest.approx(0.5)
    assert result.per_class == {"1": 1.0, "2": 0.0}
    # A class subset (the label map) drops the others from both sides.
    assert mean_ap(gts, [det(LEFT, 0.9, 1)], class_ids=[1]) == 1.0


def test_detections_on_other_frames_and_the_cap_of_50_per_frame():
    # A detection on a key frame without ground truth is a false positive.
    assert mean_ap([gt(LEFT)], [det(LEFT, 0.8), det(LEFT, 0.9, t=905)]) == pytest.approx(0.5)
    # Only the 50 best of a key frame count: 50 false positives above the true one push it out.
    noise = [det(RIGHT, 0.9 + i / 1000) for i in range(50)]
    assert mean_ap([gt(LEFT)], [*noise, det(LEFT, 0.5)]) == 0.0
    assert mean_ap([gt(LEFT)], [*noise[:49], det(LEFT, 0.5)]) == pytest.approx(1 / 50)


def test_average_precision_voc_style():
    # Ranked hits T F T with 3 ground truths: recall 1/3, 1/3, 2/3; precision 1, 1/2, 2/3.
    # Monotone precision: 1, 2/3, 2/3. AP = 1/3 x 1 + 1/3 x 2/3 = 5/9.
    ap = average_precision(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), 3)
    assert ap == pytest.approx(5 / 9)


def test_empty_prediction_set_scores_zero():
    assert mean_ap([gt(LEFT)], []) == 0.0


def test_unknown_video_is_named():
    with pytest.raises(
        EvalInputError,
        match=r"^prediction #1 \(video 'w', t=902\): video 'w' is "
        "not in the ground truth",
    ):
        evaluate_actions([gt(LEFT)], [det(LEFT, 0.9), det(LEFT, 0.9, video="w")])


def test_files(tmp_path):
    write_ava_csv(tmp_path / "gt.csv", [gt(LEFT, 1), gt(RIGHT, 2)])
    write_ava_csv(tmp_path / "pred.csv", [det(LEFT, 0.9, 1), det(LEFT, 0.9, 2)])
    write_action_list(tmp_path / "actions.pbtxt", {1: "stand", 2: "sit"})
    result = evaluate_action_files(
        tmp_path / "gt.csv", tmp_path / "pred.csv", tmp_path / "actions.pbtxt"
    )
    assert result.metrics["mAP@0.5"] == pytest.approx(0.5)
    assert result.per_class == {"stand": 1.0, "sit": 0.0}
