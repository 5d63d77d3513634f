"""The MaskTrack R-CNN tracker: match score, one-to-one ids, memory, video-level summary."""

import math
from dataclasses import replace

import pytest
import torch
from torchvision.ops import masks_to_boxes
from vis_fixtures import fake_detections

from models.vis import Tracker, TrackerConfig, match_scores
from models.vis.track_head import similarity_logits
from models.vis.tracker import NEW_OBJECT, assign_one_to_one

BOX_A = [10.0, 10.0, 40.0, 40.0]
BOX_B = [60.0, 60.0, 90.0, 90.0]
EMB_A = [3.0, 0.0, 0.0]
EMB_B = [0.0, 3.0, 0.0]


def one(box=BOX_A, embedding=EMB_A, label=1, score=0.9):
    return fake_detections([box], [embedding], [label], [score])


def none():
    return fake_detections([], [], [], [])


def test_match_score_matches_a_hand_computed_example():
    # One detection against two tracks. Embedding dots: 2 with track 1, 0 with track 2.
    logits = similarity_logits(torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
    det_scores = torch.tensor([0.5])
    ious = torch.tensor([[0.5, 0.0]])
    same_label = torch.tensor([[True, False]])

    scores = match_scores(logits, det_scores, ious, same_label)

    log_norm = math.log(math.exp(0) + math.exp(2) + math.exp(0))
    expected = [
        (0 - log_norm) + math.log(0.5) + 2.0 * 0.0 + 10.0 * 1,  # "new": IoU 0, label term 1
        (2 - log_norm) + math.log(0.5) + 2.0 * 0.5 + 10.0 * 1,
        (0 - log_norm) + math.log(0.5) + 2.0 * 0.0 + 10.0 * 0,
    ]
    assert scores.shape == (1, 3)
    assert scores[0].tolist() == pytest.approx(expected, abs=1e-5)
    assert expected == pytest.approx([7.0674, 10.0674, -2.9326], abs=1e-4)


def test_tracker_uses_the_formula_on_box_iou():
    tracker = Tracker()
    tracker.step(fake_detections([BOX_A, BOX_B], [EMB_A, EMB_B], [1, 2], [0.9, 0.9]))
    det = one(box=[10.0, 10.0, 40.0, 25.0], embedding=[1.0, 0.0, 0.0], label=1, score=0.5)
    scores = tracker.scores_against_tracks(det.boxes, det.labels, det.scores, det.embeddings)
    log_norm = math.log(1 + math.exp(3) + 1)
    assert scores[0, 1].item() == pytest.approx(3 - log_norm + math.log(0.5) + 2 * 0.5 + 10)
    assert scores[0, 2].item() == pytest.approx(0 - log_norm + math.log(0.5))


def test_identical_detections_never_share_an_id():
    tracker = Tracker()
    first = tracker.step(fake_detections([BOX_A, BOX_A], [EMB_A, EMB_A], [1, 1], [0.9, 0.9]))
    assert len(set(first)) == 2
    second = tracker.step(fake_detections([BOX_A, BOX_A], [EMB_A, EMB_A], [1, 1], [0.9, 0.9]))
    assert sorted(second) == sorted(first)
    third = tracker.step(
        fake_detections([BOX_A, BOX_A, BOX_A], [EMB_A] * 3, [1, 1, 1], [0.9, 0.8, 0.7])
    )
    assert len(set(third)) == 3 and set(first) < set(third)


def test_assignment_is_one_to_one_and_maximises_the_total():
    # Both detections prefer track 0; the second loses far more by going "new", so it gets it.
    scores = torch.tensor([[4.0, 5.0], [0.0, 6.0]])
    assert assign_one_to_one(scores) == [NEW_OBJECT, 0]


def test_new_objects_get_new_ids():
    tracker = Tracker()
    assert tracker.step(one()) == [0]
    ids = tracker.step(fake_detections([BOX_A, BOX_B], [EMB_A, EMB_B], [1, 2], [0.9, 0.8]))
    assert ids == [0, 1]
    assert tracker.step(one(box=[0.0, 60.0, 20.0, 90.0], embedding=[0.0, 0.0, 3.0], label=3)) == [2]


def test_track_is_reidentified_after_a_three_frame_gap():
    tracker = Tracker()
    tracker.step(fake_detections([BOX_A, BOX_B], [EMB_A, EMB_B], [1, 2], [0.9, 0.9]))
    for _ in range(3):
        tracker.step(one(box=BOX_B, embedding=EMB_B, label=2))  # A unseen for 3 frames
    moved_a = [14.0, 12.0, 44.0, 42.0]
    ids = tracker.step(fake_detections([BOX_B, moved_a], [EMB_B, EMB_A], [2, 1], [0.9, 0.9]))
    assert ids == [1, 0]


def test_track_is_dropped_after_20_unseen_frames():
    tracker = Tracker(TrackerConfig(num_frames_retain=20))
    assert tracker.step(one(), frame_index=0) == [0]
    # Last seen at frame 0: still matchable at frame 20 (as in the reference) ...
    assert tracker.step(one(), frame_index=20) == [0]
    # ... and forgotten once 20 more frames (21..40) pass without it.
    for frame in range(21, 41):
        tracker.step(none(), frame_index=frame)
    assert tracker.num_kept_tracks == 0
    assert tracker.step(one(), frame_index=41) == [1]


def test_frame_zero_resets_and_frames_must_advance():
    tracker = Tracker()
    tracker.step(one())
    tracker.step(one(box=BOX_B, embedding=EMB_B))
    assert tracker.step(one(), frame_index=0) == [0]  # a new video: ids restart
    assert [s.track_id for s in tracker.summaries()] == [0]
    tracker.step(one(), frame_index=5)
    with pytest.raises(ValueError, match="in order"):
        tracker.step(one(), frame_index=3)


def test_empty_frames_and_first_frame_without_detections():
    tracker = Tracker()
    assert tracker.step(none()) == []
    assert tracker.step(one()) == [0]
    assert tracker.step(none()) == []
    assert tracker.step(one()) == [0]


def test_video_summary_is_mean_score_and_majority_category():
    tracker = Tracker()
    for label, score in [(1, 0.9), (2, 0.6), (2, 0.3)]:
        tracker.step(one(label=label, score=score))
    (summary,) = tracker.summaries()
    assert summary.category == 2
    assert summary.score == pytest.approx((0.9 + 0.6 + 0.3) / 3)
    assert (summary.num_frames, summary.first_frame, summary.last_frame) == (3, 0, 2)


# ---- overlap="mask": things whose boxes overlap alike ------------------------------------------
def crossing(offsets: tuple[int, int], order=(0, 1)):
    """Two bands crossing in one 30 x 30 box, a diagonal one (track A) and an anti-diagonal one
    (B), each moved right by its offset; no embeddings, one label."""
    yy, xx = torch.meshgrid(torch.arange(100), torch.arange(100), indexing="ij")
    inside = (yy >= 10) & (yy < 40)
    masks = []
    for band, offset in enumerate(offsets):
        x = xx - 10 - offset
        along = (x - (yy - 10)).abs() <= 2 if band == 0 else (x - (39 - yy)).abs() <= 2
        masks.append(along & inside & (x >= 0) & (x < 30))
    masks = torch.stack([masks[k] for k in order])
    det = fake_detections([BOX_A] * 2, [[0.0]] * 2, [1, 1], [0.9, 0.9])
    return replace(det, masks=masks, boxes=masks_to_boxes(masks))


def test_mask_overlap_keeps_crossing_things_apart_where_boxes_cannot():
    config = TrackerConfig(label_weight=0.0, overlap="mask")
    tracker = Tracker(config)
    a, b = tracker.step(crossing((0, 0)))
    # next frame: both moved, given in the other order; their boxes still overlap alike
    moved = crossing((2, -2), order=(1, 0))
    assert tracker.step(moved) == [b, a]
    by_box = Tracker(replace(config, overlap="box"))
    by_box.step(crossing((0, 0)))
    det = crossing((1, 1), order=(1, 0))
    scores = by_box.scores_against_tracks(det.boxes, det.labels, det.scores, det.embeddings)
    assert scores[0, 1] == scores[0, 2] and scores[1, 1] == scores[1, 2]  # a coin toss by box


def test_mask_overlap_forgets_a_tracks_mask_with_the_track():
    tracker = Tracker(TrackerConfig(overlap="mask", num_frames_retain=2))
    tracker.step(crossing((0, 0)))
    only_a = crossing((0, 0))
    tracker.step(replace(only_a, boxes=only_a.boxes[:1], labels=only_a.labels[:1],
                         scores=only_a.scores[:1], masks=only_a.masks[:1],
                         embeddings=only_a.embeddings[:1]))  # fmt: skip
    tracker.step(none(), 2)
    assert tracker.num_kept_tracks == 1 and tracker.masks.shape == (1, 1, 100, 100)
    with pytest.raises(ValueError, match="overlap"):
        TrackerConfig(overlap="centre")
    with pytest.raises(ValueError, match="mask_memory"):
        TrackerConfig(overlap="mask", mask_memory=0)


def columns(*spans: tuple[int, int]):
    """One thing a span: rows 10-39, columns [start, stop); no embeddings, one label."""
    masks = torch.zeros((len(spans), 100, 100), dtype=torch.bool)
    for k, (start, stop) in enumerate(spans):
        masks[k, 10:40, start:stop] = True
    det = fake_detections([BOX_A] * len(spans), [[0.0]] * len(spans), [1] * len(spans),
                          [0.9] * len(spans))  # fmt: skip
    return replace(det, masks=masks, boxes=masks_to_boxes(masks))


@pytest.mark.parametrize("memory, keeps_its_track", [(1, False), (2, True)])
def test_mask_memory_lets_a_track_outlive_one_bad_frame(memory, keeps_its_track):
    tracker = Tracker(TrackerConfig(label_weight=0.0, overlap="mask", mask_memory=memory))
    (thing,) = tracker.step(columns((10, 30)))
    tracker.step(columns((10, 12)))  # a bad frame: the thing segmented as a sliver of itself
    # The thing whole again, and a small new one by the sliver: it overlaps the sliver more
    # (1/6) than the thing does (1/20), the thing's earlier mask far less (1/24 against 19/20).
    ids = tracker.step(columns((11, 30), (6, 11)))
    assert (ids[0] == thing) is keeps_its_track
    assert (ids[1] == thing) is not keeps_its_track
    assert tracker.masks.shape == (2, memory, 100, 100)
