"""MaskFormer in the worker (family "panoptic"): per frame, any frame on any worker; one batched
pass over the frames of every session (the detectors' FrameForward), then each frame's segments.

A frame answers `segments`, things and stuff, each with its COCO RLE mask, its category (the
checkpoint's class name: things first, then stuff), isthing, score and area. They come from one
segment-id map (models.panoptic.inference), so they never overlap.
"""

from __future__ import annotations

from models.data.rle import encode_mask
from models.panoptic.inference import PanopticPrediction, segment_frames
from service.schemas import Mask, Segment
from service.worker.runner import FrameOutput, ModelRunner, Output, WorkItem
from service.worker.runners import register_runners
from service.worker.runners.vis import FrameForward, FrameRunner


class PanopticForward(FrameForward):
    role = "maskformer"

    def compute(self, items: list[WorkItem]) -> list[PanopticPrediction]:
        return segment_frames(self.model, [item.image for item in items])


class PanopticRunner(FrameRunner):
    task = "panoptic"
    # Inference already keeps only queries scored over the model's object-mask threshold (0.8);
    # a session's score_threshold may drop more segments (their pixels become void).
    default_score_threshold = 0.0

    def step(self, item: WorkItem, prediction: PanopticPrediction) -> list[Output]:
        return [FrameOutput(item.index, item.time, segments=self.segments(item, prediction))]

    def segments(self, item: WorkItem, prediction: PanopticPrediction) -> list[Segment]:
        ids = prediction.ids.cpu().numpy()
        threshold = item.state.score_threshold
        return [
            Segment(
                id=segment.id,
                category=self.classes[segment.category],
                isthing=segment.isthing,
                score=segment.score,
                area=segment.area,
                mask=Mask.model_validate(encode_mask(ids == segment.id)),
            )
            for segment in prediction.segments
            if segment.score >= threshold
        ]


def panoptic_runners(loaded, name: str) -> list[ModelRunner]:
    return [PanopticRunner(PanopticForward(loaded.model, name), loaded.manifest, name)]


register_runners("panoptic", panoptic_runners)
