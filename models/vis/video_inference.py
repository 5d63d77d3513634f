"""MaskTrack R-CNN over a whole video, and its results in the shared and YouTube-VIS formats.

`frame_objects` is the one step from a frame's detections to its tracked objects; the worker's
runner, `vidserve segment` and the trainer's validation all go through it.
"""

from collections.abc import Iterable, Iterator
from dataclasses import replace

import numpy as np

from models.common.detections import FrameDetections
from models.data.rle import encode_mask
from models.data.track_votes import TrackVotes
from models.vis.model import MaskTrackRCNN
from models.vis.tracker import Tracker


def keep_scores_above(detections: FrameDetections, threshold: float) -> FrameDetections:
    keep = detections.scores >= threshold
    return replace(
        detections,
        boxes=detections.boxes[keep],
        labels=detections.labels[keep],
        scores=detections.scores[keep],
        masks=detections.masks[keep],
        embeddings=detections.embeddings[keep],
        mask_probs=None if detections.mask_probs is None else detections.mask_probs[keep],
    )


def detection_objects(
    detections: FrameDetections, class_names: tuple[str, ...], track_ids: list[int] | None = None
) -> list[dict]:
    """Objects in the shared output schema (track_id, category, score, box [x1, y1, x2, y2],
    mask as COCO RLE); track ids are None for per-frame models."""
    ids = track_ids if track_ids is not None else [None] * len(detections)
    return [
        {
            "track_id": None if track_id is None else int(track_id),
            "category": class_names[int(label) - 1],
            "score": round(float(score), 4),
            "box": [round(float(v), 2) for v in box],
            "mask": encode_mask(mask.numpy()),
        }
        for track_id, label, score, box, mask in zip(
            ids,
            detections.labels,
            detections.scores,
            detections.boxes,
            detections.masks,
            strict=True,
        )
    ]


def frame_objects(
    tracker: Tracker,
    detections: FrameDetections,
    frame_index: int,
    score_threshold: float,
    class_names: tuple[str, ...],
) -> list[dict]:
    """Track the frame's detections above the threshold; their objects with track ids."""
    kept = keep_scores_above(detections, score_threshold)
    return detection_objects(kept, class_names, tracker.step(kept, frame_index))


def segment_video(
    model: MaskTrackRCNN,
    frames: Iterable[np.ndarray],
    class_names: tuple[str, ...],
    score_threshold: float = 0.5,
    batch_size: int = 4,
) -> Iterator[list[dict]]:
    """Objects of each frame, in order. Frames of the video share forward passes (detection
    needs no state); the tracker then steps through them in order."""
    tracker = Tracker()
    index = 0
    for chunk in _chunks(frames, batch_size):
        for detections in model.detect(chunk, min_score=score_threshold):
            yield frame_objects(tracker, detections, index, score_threshold, class_names)
            index += 1


def ytvis_results(
    per_frame: list[list[dict]], video_id: int, category_ids: dict[str, int]
) -> list[dict]:
    """YouTube-VIS results entries of one video, one per track (in order of first appearance):
    score and category by the one rule of models.data.track_votes (mean of its frame scores;
    majority vote, ties to the larger summed score, then the category seen first), one RLE per
    frame (None where the track is absent). An object without a track id is a track of its own
    frame."""
    tracks: dict = {}
    for t, objects in enumerate(per_frame):
        for k, obj in enumerate(objects):
            key = obj["track_id"] if obj.get("track_id") is not None else ("untracked", t, k)
            votes, masks = tracks.setdefault(key, (TrackVotes(), {}))
            votes.add(t, obj["category"], obj["score"])
            masks[t] = obj["mask"]
    return [
        {
            "video_id": video_id,
            "category_id": category_ids[votes.category],
            "score": float(votes.score),
            "segmentations": [masks.get(t) for t in range(len(per_frame))],
        }
        for votes, masks in tracks.values()
    ]


def _chunks(frames: Iterable[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    chunk = []
    for frame in frames:
        chunk.append(frame)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
