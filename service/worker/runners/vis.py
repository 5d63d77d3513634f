"""MaskTrack R-CNN in the worker: one detector pass for the frames of every session, then a tracker
step per session.

One checkpoint serves two models that share the weights and the detector's batches: `<name>`
(video instance segmentation: tracked, stateful) and `<name>-instance` (the detector per frame:
stateless, no track ids). A pipeline that starts with `<name>` shares them too.
"""

from abc import abstractmethod
from collections import deque
from dataclasses import dataclass

from torch import nn

from models.checkpoints.manifest import Manifest
from models.vis.tracker import Tracker
from models.vis.video_inference import detection_objects, frame_objects, keep_scores_above
from service.schemas import DetectedObject
from service.worker.options import read_options
from service.worker.runner import (
    BatchedForward,
    FrameOutput,
    ModelInfo,
    ModelRunner,
    OptionError,
    Output,
    WorkItem,
)
from service.worker.runners import register_runners

DEFAULT_SCORE_THRESHOLD = 0.5


@dataclass
class DetectorSession:
    score_threshold: float


@dataclass
class VisSession(DetectorSession):
    tracker: Tracker
    frame_size: tuple[int, int] | None = None  # (H, W) of the first frame; later frames must match


class FrameForward(BatchedForward):
    """One model's pass over the frames of a batch, whatever their sessions (the per-frame
    families share it: detectors, MaskFormer). `recent_batches` keeps the session ids of the last
    passes (to see which sessions shared one)."""

    device_frames = True  # the models take frames on the device: the worker copies them there
    role = "forward"  # the pass's name: "<model>-<role>"

    def __init__(self, model: nn.Module, name: str):
        self.model = model.eval()
        self.name = f"{name}-{self.role}"
        self.recent_batches: deque[tuple[str, ...]] = deque(maxlen=256)

    def run(self, items: list[WorkItem]) -> list:
        outputs = self.compute(items)
        self.recent_batches.append(tuple(item.session_id for item in items))
        return outputs

    @abstractmethod
    def compute(self, items: list[WorkItem]) -> list:
        """One output per item (its `state` is what the session's runner opened)."""


class DetectorForward(FrameForward):
    """The detector over the frames of a batch; reads each session's threshold, nothing else."""

    role = "detector"

    def compute(self, items: list[WorkItem]) -> list:
        # The lowest threshold of the batch: the mask and track heads skip what no session
        # shows (they cost most of a frame when many low-score boxes are kept).
        lowest = min(item.state.score_threshold for item in items)
        return self.model.detect([item.image for item in items], min_score=lowest)


class VisRunner(ModelRunner):
    def __init__(self, forward: DetectorForward, manifest: Manifest, name: str):
        self.forward = forward
        self.classes = tuple(manifest.class_names)
        # The tracker steps after the forward pass, so several frames of one session may share
        # a batch (the steps then run through them in order).
        self.default_score_threshold = served_threshold(forward.model)
        self.info = ModelInfo(
            name=name,
            task="vis",
            version=manifest.version,
            classes=self.classes,
            stateful=True,
            one_frame_per_batch=False,
        )

    def open_session(self, options: dict) -> VisSession:
        return VisSession(_score_threshold(options, self.default_score_threshold), Tracker())

    def step(self, item: WorkItem, detections) -> list[Output]:
        session: VisSession = item.state
        check_frame_size(session, item)
        objects = frame_objects(
            session.tracker, detections, item.index, session.score_threshold, self.classes
        )
        session.frame_size = item.image.shape[:2]
        return [FrameOutput(item.index, item.time, _typed(objects))]


def check_frame_size(session: VisSession, item: WorkItem) -> None:
    """A tracked session's frames keep the first frame's size (the tracker compares boxes across
    frames); the caller records it once the step has succeeded."""
    size = item.image.shape[:2]
    if session.frame_size is not None and session.frame_size != size:
        raise OptionError(
            f"frame size {size[1]}x{size[0]} differs from the session's "
            f"{session.frame_size[1]}x{session.frame_size[0]}"
        )


class FrameRunner(ModelRunner):
    """A per-frame model: any frame, any worker, no session state but the options (a score
    threshold). Subclasses name their task and turn the forward's output into a FrameOutput."""

    task = "instance"
    default_score_threshold = DEFAULT_SCORE_THRESHOLD

    def __init__(self, forward: FrameForward, manifest: Manifest, name: str):
        self.forward = forward
        self.classes = tuple(manifest.class_names)
        self.info = ModelInfo(
            name=name,
            task=self.task,
            version=manifest.version,
            classes=self.classes,
            stateful=False,
        )

    def open_session(self, options: dict) -> DetectorSession:
        return DetectorSession(_score_threshold(options, self.default_score_threshold))


class FrameDetectorRunner(FrameRunner):
    """The detector alone (task "instance")."""

    def __init__(self, forward: FrameForward, manifest: Manifest, name: str):
        super().__init__(forward, manifest, name)
        self.default_score_threshold = served_threshold(forward.model)

    def step(self, item: WorkItem, detections) -> list[Output]:
        kept = keep_scores_above(detections, item.state.score_threshold)
        return [FrameOutput(item.index, item.time, _typed(detection_objects(kept, self.classes)))]


def vis_runners(loaded, name: str) -> list[ModelRunner]:
    """The models one VIS checkpoint serves, on one detector (one copy of the weights)."""
    forward = DetectorForward(loaded.model, name)
    return [
        VisRunner(forward, loaded.manifest, name),
        FrameDetectorRunner(forward, loaded.manifest, f"{name}-instance"),
    ]


def served_threshold(model: nn.Module) -> float:
    """The checkpoint's served default (its calibrated one), else DEFAULT_SCORE_THRESHOLD."""
    config = getattr(model, "config", None)
    return getattr(config, "served_score_threshold", DEFAULT_SCORE_THRESHOLD)


def _score_threshold(options: dict, default: float = DEFAULT_SCORE_THRESHOLD) -> float:
    spec = {"score_threshold": (float, default, 0.0, 1.0)}
    return read_options(options, spec)["score_threshold"]


def _typed(objects: list[dict]) -> list[DetectedObject]:
    return [DetectedObject.model_validate(o) for o in objects]


register_runners("vis", vis_runners)
