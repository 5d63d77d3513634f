"""MaskTrack R-CNN's tracker, one object per video (or stream).

Match score of detection i and kept track j (MMTracking MaskTrackRCNNTracker):
    log_softmax(logits)[i, j] + 1.0 * log(det_score_i) + 2.0 * IoU(i, j)
    + 10.0 * [label_i == label_j]
with logits = [0 ("new object"), dot(embedding_i, track_embedding_j) ...]; for the "new" column the
IoU is 0 and the label term is 1. A track not seen for 20 frames is forgotten; frame 0 resets.
The IoU is of boxes, as in the reference, or (`overlap="mask"`) of masks: a detection's mask
against the track's last ones (the larger IoU, of its `mask_memory` latest), for models whose
things cross and whose boxes then overlap alike.

Unlike the reference, which lets each detection take its best column and so can give two
detections one id (a TODO there), ids are assigned one-to-one: a linear assignment maximising
the total match score, where every detection takes a distinct track or "new".
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchvision.ops import box_iou

from models.common.detections import FrameDetections
from models.data.track_votes import TrackVotes
from models.vis.track_head import similarity_logits

NEW_OBJECT = -1
_MIN_SCORE = 1e-6  # keeps log(score) finite for a zero score


@dataclass(frozen=True)
class TrackerConfig:
    det_score_weight: float = 1.0
    iou_weight: float = 2.0
    label_weight: float = 10.0
    # Forget a track when frame_index - last_seen >= this, after the frame's matching (so a track
    # last seen at frame f can still be matched at frame f + 20, as in the reference).
    num_frames_retain: int = 20
    # Summaries kept of forgotten tracks (the most recent ones), so that a long live stream with
    # objects coming and going keeps bounded state; the kept tracks' own are always there.
    max_finished_tracks: int = 256
    # What the IoU term compares: "box" (the reference) or "mask" (each track keeps its latest
    # masks: mask_memory x H x W bools a kept track).
    overlap: str = "box"
    # With overlap="mask": how many of a track's latest masks a detection is compared with, the
    # largest IoU counting. More than one lets a track outlive one bad frame (a thing segmented
    # as half of itself, or with a neighbour) without losing its place to its neighbour.
    mask_memory: int = 1

    def __post_init__(self) -> None:
        if self.overlap not in ("box", "mask"):
            raise ValueError(f"overlap must be 'box' or 'mask', got {self.overlap!r}")
        if self.mask_memory < 1:
            raise ValueError(f"mask_memory must be at least 1, got {self.mask_memory}")


@dataclass
class TrackSummary:
    """Video-level result of one track: mean of its frame scores, majority-vote category (ties:
    larger summed score, then the label seen first; models.data.track_votes)."""

    track_id: int
    category: int
    score: float
    num_frames: int
    first_frame: int
    last_frame: int


def summary_of(track_id: int, votes: TrackVotes) -> TrackSummary:
    """A track's video-level result by the one rule of models.data.track_votes (majority vote;
    ties: larger summed score, then the label seen first)."""
    return TrackSummary(
        track_id=track_id,
        category=int(votes.category),
        score=votes.score,
        num_frames=votes.num_frames,
        first_frame=votes.first_frame,
        last_frame=votes.last_frame,
    )


def match_scores(
    logits: Tensor,
    det_scores: Tensor,
    ious: Tensor,
    same_label: Tensor,
    config: TrackerConfig = TrackerConfig(),
) -> Tensor:
    """(N, 1 + T) match scores from similarity logits (N, 1 + T), detection scores (N,), IoUs
    (N, T) and label agreement (N, T); column 0 is "new object"."""
    new_iou = ious.new_zeros((ious.shape[0], 1))
    new_label = same_label.new_ones((same_label.shape[0], 1))
    return (
        torch.log_softmax(logits, dim=1)
        + config.det_score_weight * torch.log(det_scores.clamp(min=_MIN_SCORE))[:, None]
        + config.iou_weight * torch.cat([new_iou, ious], dim=1)
        + config.label_weight * torch.cat([new_label, same_label.to(ious.dtype)], dim=1)
    )


def assign_one_to_one(scores: Tensor) -> list[int]:
    """For each detection (row), the index of the track it takes (column j -> track j - 1) or
    NEW_OBJECT, maximising the total score with no track taken twice.

    The "new" column is repeated once per detection, so any number of detections can be new.
    """
    num_detections, num_tracks = scores.shape[0], scores.shape[1] - 1
    matrix = scores.detach().double().cpu().numpy()
    new_slots = np.repeat(matrix[:, :1], num_detections, axis=1)
    rows, columns = linear_sum_assignment(np.hstack([matrix[:, 1:], new_slots]), maximize=True)
    assignment = [NEW_OBJECT] * num_detections
    for row, column in zip(rows, columns, strict=True):
        assignment[row] = int(column) if column < num_tracks else NEW_OBJECT
    return assignment


class Tracker:
    """Per-video state: the kept tracks' last embedding, box and label, and track histories.

    step() takes one frame's detections (in frame order) and returns their track ids.
    """

    def __init__(self, config: TrackerConfig = TrackerConfig()):
        self.config = config
        self.reset()

    def reset(self) -> None:
        self.next_id = 0
        self.frame_index = -1
        self.track_ids: list[int] = []
        self.embeddings = torch.zeros((0, 0))
        self.boxes = torch.zeros((0, 4))
        # (T, mask_memory, H, W) with overlap="mask", newest first; a slot not filled yet is empty
        # (IoU 0).
        self.masks = torch.zeros((0, self.config.mask_memory, 0, 0), dtype=torch.bool)
        self.labels = torch.zeros(0, dtype=torch.int64)
        self.last_seen = torch.zeros(0, dtype=torch.int64)
        self.histories: dict[int, TrackVotes] = {}
        self.finished: deque[int] = deque()  # forgotten tracks whose histories remain, oldest first

    def step(self, detections: FrameDetections, frame_index: int | None = None) -> list[int]:
        """Track ids for this frame's detections. frame_index defaults to the previous + 1;
        frame 0 resets the tracker (a new video)."""
        frame_index = self.frame_index + 1 if frame_index is None else int(frame_index)
        if frame_index == 0:
            self.reset()
        elif frame_index <= self.frame_index:
            raise ValueError(
                f"frame {frame_index} after frame {self.frame_index}: frames must "
                "come in order (frame 0 starts a new video)"
            )
        self.frame_index = frame_index
        boxes, labels, scores, embeddings = _as_cpu(detections)
        masks = detections.masks.detach().to("cpu", torch.bool) if self._by_mask else None
        assignment = self._assign(boxes, labels, scores, embeddings, masks)
        ids = self._update(assignment, boxes, labels, scores, embeddings, masks)
        self._forget_stale()
        return ids

    def summaries(self) -> list[TrackSummary]:
        """Every track seen since the last reset, by id (of the forgotten ones, the newest
        `max_finished_tracks`)."""
        return [summary_of(track_id, votes) for track_id, votes in sorted(self.histories.items())]

    @property
    def num_kept_tracks(self) -> int:
        return len(self.track_ids)

    @property
    def _by_mask(self) -> bool:
        return self.config.overlap == "mask"

    def scores_against_tracks(
        self,
        boxes: Tensor,
        labels: Tensor,
        scores: Tensor,
        embeddings: Tensor,
        masks: Tensor | None = None,
    ) -> Tensor:
        """(N, 1 + T) match scores of the detections against the kept tracks (`masks`, the
        detections' (N, H, W), with overlap="mask")."""
        logits = similarity_logits(embeddings, self.embeddings)
        if self._by_mask:
            if masks is None:
                raise ValueError('overlap="mask" needs the detections\' masks')
            ious = mask_iou(masks, self.masks.flatten(0, 1))
            ious = ious.view(len(masks), *self.masks.shape[:2]).amax(dim=2)
        else:
            ious = box_iou(boxes, self.boxes)
        same_label = labels[:, None] == self.labels[None, :]
        return match_scores(logits, scores, ious, same_label, self.config)

    def _assign(
        self,
        boxes: Tensor,
        labels: Tensor,
        scores: Tensor,
        embeddings: Tensor,
        masks: Tensor | None,
    ) -> list[int]:
        if len(boxes) == 0 or not self.track_ids:
            return [NEW_OBJECT] * len(boxes)
        return assign_one_to_one(
            self.scores_against_tracks(boxes, labels, scores, embeddings, masks)
        )

    def _update(
        self,
        assignment: list[int],
        boxes: Tensor,
        labels: Tensor,
        scores: Tensor,
        embeddings: Tensor,
        masks: Tensor | None,
    ) -> list[int]:
        if not self.track_ids:
            self.embeddings = embeddings.new_zeros((0, embeddings.shape[1]))
            if masks is not None:
                self.masks = masks.new_zeros((0, self.config.mask_memory, *masks.shape[-2:]))
        ids = []
        for det, track_index in enumerate(assignment):
            if track_index == NEW_OBJECT:
                track_index = self._new_track(embeddings[det])
            self.embeddings[track_index] = embeddings[det]
            self.boxes[track_index] = boxes[det]
            if masks is not None:
                kept = self.masks[track_index, :-1]  # newest first: the oldest drops out
                self.masks[track_index] = torch.cat([masks[det][None], kept])
            self.labels[track_index] = labels[det]
            self.last_seen[track_index] = self.frame_index
            track_id = self.track_ids[track_index]
            self.histories[track_id].add(self.frame_index, int(labels[det]), float(scores[det]))
            ids.append(track_id)
        return ids

    def _new_track(self, embedding: Tensor) -> int:
        track_id = self.next_id
        self.next_id += 1
        self.track_ids.append(track_id)
        self.embeddings = torch.cat([self.embeddings, embedding[None]])
        self.boxes = torch.cat([self.boxes, self.boxes.new_zeros((1, 4))])
        if self._by_mask:
            self.masks = torch.cat([self.masks, self.masks.new_zeros((1, *self.masks.shape[1:]))])
        self.labels = torch.cat([self.labels, self.labels.new_zeros(1)])
        self.last_seen = torch.cat([self.last_seen, self.last_seen.new_zeros(1)])
        self.histories[track_id] = TrackVotes()
        return len(self.track_ids) - 1

    def _forget_stale(self) -> None:
        keep = (self.frame_index - self.last_seen) < self.config.num_frames_retain
        if bool(keep.all()):
            return
        kept_flags, ids = keep.tolist(), self.track_ids
        self.track_ids = [tid for tid, kept in zip(ids, kept_flags, strict=True) if kept]
        self.embeddings = self.embeddings[keep]
        self.boxes = self.boxes[keep]
        self.labels = self.labels[keep]
        self.last_seen = self.last_seen[keep]
        if self._by_mask:
            self.masks = self.masks[keep]
        # A forgotten track is never matched again: its history is final. Keep the newest
        # max_finished_tracks of them for summaries(), drop the rest.
        self.finished.extend(tid for tid, kept in zip(ids, kept_flags, strict=True) if not kept)
        while len(self.finished) > self.config.max_finished_tracks:
            self.histories.pop(self.finished.popleft(), None)


def mask_iou(masks: Tensor, others: Tensor) -> Tensor:
    """(N, M) IoU of bool masks (N, H, W) and (M, H, W).

    Only the rows and columns where some mask is set are compared (the IoU is the same): the
    float copies for the product then cost the objects' extent, not the frame's (a 1080p frame
    is 8 MB a mask in float)."""
    if masks.numel() and others.numel():
        covered = masks.any(0) | others.any(0)
        rows, cols = covered.any(1).nonzero(), covered.any(0).nonzero()
        if len(rows) == 0:
            return masks.new_zeros((masks.shape[0], others.shape[0]), dtype=torch.float32)
        top, bottom, left, right = rows[0, 0], rows[-1, 0] + 1, cols[0, 0], cols[-1, 0] + 1
        masks, others = masks[:, top:bottom, left:right], others[:, top:bottom, left:right]
    a, b = masks.flatten(1).float(), others.flatten(1).float()
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return inter / union.clamp(min=1.0)


def _as_cpu(detections: FrameDetections) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return (
        detections.boxes.detach().float().cpu(),
        detections.labels.detach().to(torch.int64).cpu(),
        detections.scores.detach().float().cpu(),
        detections.embeddings.detach().float().cpu(),
    )
