"""The tracker on a long live stream: objects come and go, its state stays bounded, and bounding
it changes no id and no summary of a kept track."""

import random

import torch
from vis_fixtures import fake_detections

from models.vis import Tracker, TrackerConfig
from models.vis.tracker import mask_iou

LIFETIME = 5  # frames each object is on screen


def stream(frames: int, seed: int = 0):
    """One new object a frame, each seen for LIFETIME frames and then gone for good: a label of
    its own (so it never takes another's id), a drifting box, a noisy embedding and score."""
    rng = random.Random(seed)
    objects = {}
    for frame in range(frames):
        objects[frame] = (
            rng.uniform(0, 200),
            rng.uniform(0, 200),
            [rng.gauss(0, 0.1) for _ in "xyz"],
        )
        on_screen = [k for k in objects if frame - k < LIFETIME]
        boxes, embeddings, labels, scores = [], [], [], []
        for k in on_screen:
            x, y, embedding = objects[k]
            step = frame - k
            boxes.append([x + step, y + step, x + step + 30, y + step + 30])
            embeddings.append(embedding)
            labels.append(k + 1)
            scores.append(rng.uniform(0.3, 1.0))
        for k in [k for k in objects if frame - k >= LIFETIME]:
            del objects[k]
        yield frame, fake_detections(boxes, embeddings, labels, scores)


def test_a_long_stream_keeps_bounded_state():
    tracker = Tracker()
    config = tracker.config
    for frame, detections in stream(3000):
        ids = tracker.step(detections, frame)
        assert len(set(ids)) == len(ids)
    assert tracker.next_id == 3000, "every object was a track of its own"
    assert len(tracker.histories) < 300, "not one history per track ever seen"
    # Kept for matching: the tracks seen in the last num_frames_retain frames, no more.
    assert tracker.num_kept_tracks <= config.num_frames_retain + LIFETIME
    assert tracker.embeddings.shape[0] == tracker.num_kept_tracks
    # Histories: the kept tracks' and the newest max_finished_tracks forgotten ones.
    assert len(tracker.histories) <= config.max_finished_tracks + tracker.num_kept_tracks
    assert len(tracker.summaries()) == len(tracker.histories)
    assert max(s.track_id for s in tracker.summaries()) == 2999


def test_bounding_changes_no_id_and_no_kept_summary():
    bounded = Tracker(TrackerConfig(max_finished_tracks=50))
    unbounded = Tracker(TrackerConfig(max_finished_tracks=10**9))
    for frame, detections in stream(400, seed=3):
        assert bounded.step(detections, frame) == unbounded.step(detections, frame)
    everything = {s.track_id: s for s in unbounded.summaries()}
    assert len(everything) == 400
    kept = bounded.summaries()
    assert kept == [everything[s.track_id] for s in kept]
    # What is kept: every track still matchable, then the most recently forgotten ones.
    kept_ids = [s.track_id for s in kept]
    assert set(bounded.track_ids) <= set(kept_ids)
    assert kept_ids == list(range(400 - len(kept_ids), 400))


def test_a_short_video_keeps_every_summary():
    tracker, reference = Tracker(), Tracker(TrackerConfig(max_finished_tracks=10**9))
    for frame, detections in stream(120, seed=5):
        assert tracker.step(detections, frame) == reference.step(detections, frame)
    assert tracker.summaries() == reference.summaries()
    assert len(tracker.summaries()) == 120
    first = tracker.summaries()[0]
    assert (first.first_frame, first.last_frame, first.num_frames) == (0, LIFETIME - 1, LIFETIME)


def test_frame_zero_forgets_the_finished_tracks_too():
    tracker = Tracker()
    for frame, detections in stream(60):
        tracker.step(detections, frame)
    assert tracker.finished
    tracker.step(next(stream(1))[1], 0)
    assert [s.track_id for s in tracker.summaries()] == [0] and not tracker.finished


def test_mask_iou_compares_only_where_masks_are_set_and_gives_the_full_frames_iou():
    generator = torch.Generator().manual_seed(0)
    masks = torch.zeros(3, 60, 80, dtype=torch.bool)
    others = torch.zeros(2, 60, 80, dtype=torch.bool)
    masks[:, 10:30, 20:50] = torch.rand(3, 20, 30, generator=generator) > 0.5
    others[:, 25:40, 40:70] = torch.rand(2, 15, 30, generator=generator) > 0.5
    a, b = masks.flatten(1).float(), others.flatten(1).float()
    inter = a @ b.T
    expected = inter / (a.sum(1)[:, None] + b.sum(1)[None] - inter)
    torch.testing.assert_close(mask_iou(masks, others), expected)
    empty = torch.zeros(2, 60, 80, dtype=torch.bool)
    assert torch.equal(mask_iou(empty, empty), torch.zeros(2, 2))
    assert mask_iou(masks[:0], others).shape == (0, 2)
