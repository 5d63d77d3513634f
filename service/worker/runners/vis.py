"""MaskTrack R-CNN in the worker: the detector batched across sessions, a tracker per session.

One checkpoint serves two models: `<name>` (video instance segmentation: tracked, stateful) and
`<name>-instance` (the same detector per frame: stateless, no track ids), sharing the weights.
"""

from dataclasses import dataclass

from models.checkpoints.manifest import Manifest
from models.vis.model import MaskTrackRCNN
from models.vis.tracker import Tracker
from models.vis.video_inference import detection_objects, frame_objects, keep_scores_above
from service.worker.options import read_options
from service.worker.runner import (
    FrameOutput,
    ItemResult,
    ModelInfo,
    ModelRunner,
    OptionError,
    WorkItem,
)

DEFAULT_SCORE_THRESHOLD = 0.5


@dataclass
class VisSession:
    tracker: Tracker
    score_threshold: float
    frame_size: tuple[int, int] | None = None  # (H, W) of the first frame; later frames must match


class VisRunner(ModelRunner):
    def __init__(self, model: MaskTrackRCNN, manifest: Manifest, name: str):
        self.model = model.eval()
        self.classes = tuple(manifest.class_names)
        # The tracker reads its state after the forward pass only, so several frames of one
        # session may share a batch (the tracker then steps through them in order).
        self.info = ModelInfo(
            name=name,
            task="vis",
            version=manifest.version,
            classes=self.classes,
            stateful=True,
            one_frame_per_batch=False,
        )

    def open_session(self, options: dict) -> VisSession:
        return VisSession(Tracker(), _score_threshold(options))

    def run_batch(self, items: list[WorkItem]) -> list[ItemResult]:
        # The lowest threshold of the batch: the mask and track heads skip what no session
        # shows (they cost most of a frame when many low-score boxes are kept).
        lowest = min(item.state.score_threshold for item in items)
        detections = self.model.detect([item.image for item in items], min_score=lowest)
        return [self._track(item, det) for item, det in zip(items, detections, strict=True)]

    def _track(self, item: WorkItem, detections) -> ItemResult:
        """One session's tracker step; its error is its own (returned, never raised, so that
        the batch is not retried and no other session's tracker steps twice)."""
        try:
            return self._step(item, detections)
        except Exception as e:
            return e

    def _step(self, item: WorkItem, detections) -> ItemResult:
        session: VisSession = item.state
        size = item.image.shape[:2]
        if session.frame_size is None:
            session.frame_size = size
        elif session.frame_size != size:
            return OptionError(
                f"frame size {size[1]}x{size[0]} differs from the session's "
                f"{session.frame_size[1]}x{session.frame_size[0]}"
            )
        objects = frame_objects(
            session.tracker, detections, item.index, session.score_threshold, self.classes
        )
        return [FrameOutput(item.index, item.time, objects)]


def _score_threshold(options: dict) -> float:
    spec = {"score_threshold": (float, DEFAULT_SCORE_THRESHOLD, 0.0, 1.0)}
    return read_options(options, spec)["score_threshold"]


class FrameDetectorRunner(ModelRunner):
    """The detector alone: any frame, any worker, no session state but the options."""

    def __init__(self, model: MaskTrackRCNN, manifest: Manifest, name: str):
        self.model = model
        self.classes = tuple(manifest.class_names)
        self.info = ModelInfo(
            name=name,
            task="instance",
            version=manifest.version,
            classes=self.classes,
            stateful=False,
        )

    def open_session(self, options: dict) -> float:
        return _score_threshold(options)

    def run_batch(self, items: list[WorkItem]) -> list[ItemResult]:
        lowest = min(item.state for item in items)
        detections = self.model.detect([item.image for item in items], min_score=lowest)
        return [
            [
                FrameOutput(
                    item.index,
                    item.time,
                    detection_objects(keep_scores_above(det, item.state), self.classes),
                )
            ]
            for item, det in zip(items, detections, strict=True)
        ]
