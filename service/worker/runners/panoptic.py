"""MaskFormer in the worker (family "panoptic"): one batched pass over the frames of every session
(the detectors' FrameForward), then each frame's segments.

A frame answers `segments`, things and stuff, each with its COCO RLE mask, its category (the
checkpoint's class name: things first, then stuff), isthing, score and area. They come from one
segment-id map (models.panoptic.inference), so they never overlap.

One checkpoint serves two models on one forward (one copy of the weights, shared batches):
`<name>`, per frame (any frame, any worker), and `<name>-video`, video panoptic: tracked, stateful
(pinned to a worker as `masktrack` is), whose things carry track ids from the VIS family's
Tracker, fed per thing with its mask (and the mask's box), category and score (THING_TRACKER
below).
Stuff carries no track id.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import masks_to_boxes

from models.common.detections import FrameDetections
from models.data.rle import encode_mask
from models.panoptic.inference import PanopticPrediction, PanopticSegment, segment_frames
from models.vis.tracker import Tracker, TrackerConfig
from service.schemas import Mask, Segment
from service.worker.runner import FrameOutput, ModelRunner, Output, WorkItem
from service.worker.runners import register_runners
from service.worker.runners.vis import FrameForward, FrameRunner, VisSession, check_frame_size

# The tracker's appearance logits are dot products of the things' embeddings: unit query features
# scaled by sqrt(T) give T x cosine. MaskFormer's queries are not trained for identity, and its
# labels flicker from frame to frame more than MaskTrack R-CNN's (a square taken for a disc on one
# frame, not on the next): with the VIS family's label weight (10) each flicker started a new track.
# So the things are tracked by overlap alone: no embeddings, no label term; the overlap is of masks,
# as crossing things' boxes overlap alike (two rings crossing swapped ids frame after frame by box
# IoU), and of each track's two latest masks (the larger IoU), so that one frame where a thing is
# segmented as a sliver of itself, or with its neighbour, does not hand its track to another.
# Chosen on validation videos (`benchmarks/panoptic_quality.py --seed S`), id switches per track:
# on seeds 200 and 230 (72 tracks), box IoU with label weight 0.5 (the setting before) 0.79,
# without label term 0.71; mask IoU with label weight 0.5 0.36, without 0.33; then on seeds 200,
# 230, 260 and 290 (16 videos each, 203 tracks): the last mask 0.31, the latest two 0.23,
# the latest three 0.24.
EMBEDDING_TEMPERATURE = 0.0
THING_TRACKER = TrackerConfig(label_weight=0.0, overlap="mask", mask_memory=2)


class PanopticForward(FrameForward):
    role = "maskformer"

    def compute(self, items: list[WorkItem]) -> list[PanopticPrediction]:
        return segment_frames(self.model, [item.image for item in items])


class PanopticRunner(FrameRunner):
    task = "panoptic"
    # Inference already keeps only queries scored over the model's object-mask threshold (the
    # manifest's: the release's 0.8, or the one the trainer's validation picked); a session's
    # score_threshold may drop more segments (their pixels become void).
    default_score_threshold = 0.0

    def step(self, item: WorkItem, prediction: PanopticPrediction) -> list[Output]:
        kept = kept_segments(prediction, item.state.score_threshold)
        ids = prediction.ids.cpu().numpy()
        segments = [self.segment(ids, segment) for segment in kept]
        return [FrameOutput(item.index, item.time, segments=segments)]

    def segment(
        self,
        ids: np.ndarray,
        segment: PanopticSegment,
        track_id: int | None = None,
        mask: np.ndarray | None = None,
    ) -> Segment:
        """The answer's segment; `mask` (ids == segment.id) when the caller already has it."""
        mask = ids == segment.id if mask is None else mask
        return Segment(
            id=segment.id,
            category=self.classes[segment.category],
            isthing=segment.isthing,
            score=segment.score,
            area=segment.area,
            mask=Mask.model_validate(encode_mask(mask)),
            track_id=track_id,
        )


class VideoPanopticRunner(PanopticRunner):
    """`<name>-video`: the per-frame answer with the things tracked through the session. The
    forward reads no session state (the tracker steps after it), so a session's frames may share
    a batch."""

    # Segments scored under the release's object-mask threshold are left out (their pixels void;
    # the trained model's stuff scores over it): these are most of the things that lie on a
    # distractor or on half a thing and take a thing's id for a frame. On validation (seeds 200,
    # 230, 260, 290; 203 tracks) id switches per track 0.31 at the checkpoint's calibrated 0.6,
    # 0.24 at 0.8, 0.23 at 0.9, for things PQ 0.639 -> 0.632 (at 0.8). A request's
    # score_threshold still overrides it.
    default_score_threshold = 0.8

    def __init__(self, forward: PanopticForward, manifest, name: str):
        super().__init__(forward, manifest, name)
        self.info = replace(self.info, stateful=True, one_frame_per_batch=False)

    def open_session(self, options: dict) -> VisSession:
        return VisSession(super().open_session(options).score_threshold, Tracker(THING_TRACKER))

    def step(self, item: WorkItem, prediction: PanopticPrediction) -> list[Output]:
        session: VisSession = item.state
        check_frame_size(session, item)
        kept = kept_segments(prediction, session.score_threshold)
        things = [segment for segment in kept if segment.isthing]
        ids = prediction.ids.cpu()  # once: the tracker's boxes and the answer's masks share it
        detections = thing_detections(ids, things, EMBEDDING_TEMPERATURE)
        tracked = session.tracker.step(detections, item.index)
        track_ids = {thing.id: track_id for thing, track_id in zip(things, tracked, strict=True)}
        # the things' masks were made once, for the tracker; the answer encodes the same ones
        masks = dict(zip([thing.id for thing in things], detections.masks.numpy(), strict=True))
        session.frame_size = item.image.shape[:2]
        pixels = ids.numpy()
        segments = [self.segment(pixels, s, track_ids.get(s.id), masks.get(s.id)) for s in kept]
        return [FrameOutput(item.index, item.time, segments=segments)]


def kept_segments(prediction: PanopticPrediction, threshold: float) -> list[PanopticSegment]:
    return [segment for segment in prediction.segments if segment.score >= threshold]


def thing_detections(
    ids: Tensor, things: list[PanopticSegment], temperature: float = EMBEDDING_TEMPERATURE
) -> FrameDetections:
    """The things of one frame (`ids`: its id map, on the CPU) as the Tracker takes them: the box
    of each mask ([x1, y1, x2, y2] around its pixels, x2 and y2 one past the last, so a one-pixel
    thing has an area), label = its category, its score, and its embedding scaled by
    sqrt(temperature) (zeros where a segment has none)."""
    height, width = int(ids.shape[-2]), int(ids.shape[-1])
    if not things:
        return FrameDetections(
            boxes=torch.zeros((0, 4)),
            labels=torch.zeros(0, dtype=torch.int64),
            scores=torch.zeros(0),
            masks=torch.zeros((0, height, width), dtype=torch.bool),
            embeddings=torch.zeros((0, 0)),
            image_size=(height, width),
        )
    masks = torch.stack([ids == thing.id for thing in things])
    boxes = masks_to_boxes(masks)
    boxes[:, 2:] += 1
    return FrameDetections(
        boxes=boxes,
        labels=torch.tensor([thing.category for thing in things], dtype=torch.int64),
        scores=torch.tensor([thing.score for thing in things], dtype=torch.float32),
        masks=masks,
        embeddings=_embeddings(things) * math.sqrt(max(temperature, 0.0)),
        image_size=(height, width),
    )


def _embeddings(things: list[PanopticSegment]) -> Tensor:
    dim = next((len(t.embedding) for t in things if t.embedding is not None), 0)
    return torch.stack(
        [torch.zeros(dim) if t.embedding is None else t.embedding.float() for t in things]
    )


def panoptic_runners(loaded, name: str) -> list[ModelRunner]:
    forward = PanopticForward(loaded.model, name)
    return [
        PanopticRunner(forward, loaded.manifest, name),
        VideoPanopticRunner(forward, loaded.manifest, f"{name}-video"),
    ]


register_runners("panoptic", panoptic_runners)
