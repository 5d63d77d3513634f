"""What a model family gives the worker: one two-phase interface for every kind of work.

A runner's work on a frame is split in two, and the worker calls each phase at most once per
frame that reaches the session:

1. `forward.run(items)` (a `BatchedForward`): the heavy compute over frames of many sessions, one
   call. It may read session state (a VOS readout reads the memory) through the view that
   `forward_view` gives, but never changes it. It is the only thing the worker retries: when a
   batch fails, each item's forward is run again alone, so one bad frame costs only itself.
2. `step(item, output)`: per session, in frame order, exactly once per frame: commit the frame to
   the session's state (tracker, memory, clip buffer) and return zero or more outputs, for this
   frame or for earlier ones (a clip model answers a key frame once its window is complete). A step
   that raises must leave the session as it was; its error is that frame's error.

When a session ends, `flush` returns what is still held back (the last clips of a video).

Runners that share weights share one `BatchedForward` object: the scheduler puts the frames of all
their sessions in one batch (the tracked `masktrack`, the per-frame `masktrack-instance` and a
pipeline that starts with the same detector run one detector pass together).

The kinds of work a runner declares with its `ModelInfo`:
- stateless per frame (instance, panoptic): `stateful = False`; any worker takes any frame;
- stateful per frame (tracking, VOS memory): `stateful = True`, the session lives in one worker;
  `one_frame_per_batch` when the forward reads what the previous frame's step wrote;
- prompted (VOS): frames may carry a prompt (`takes_prompt = True`);
- clip-level (actions): `step` answers late, `flush` answers the rest;
- pipelines (service.worker.pipeline): a chain of stages behind one name.
"""

import contextlib
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from service.schemas import DetectedObject, Segment, TrackActions

log = logging.getLogger(__name__)


class OptionError(ValueError):
    """A session option, prompt or frame the model cannot take: the client's fault (400 / 422)."""


@dataclass(frozen=True)
class ModelInfo:
    name: str  # what clients ask for, e.g. "masktrack"
    task: str  # "vis", "vos", "instance", "panoptic", "action"
    version: str
    classes: tuple[str, ...]
    stateful: bool
    takes_prompt: bool = False
    # A stateful model whose forward pass reads no session state (the tracker steps after it)
    # may batch several frames of one session; one that reads it (VOS memory) may not.
    one_frame_per_batch: bool = True
    # (name, version) of every stage behind this model; empty means the model itself alone.
    stages: tuple[tuple[str, str], ...] = ()
    # The action labels a model with an action stage answers (in its columns' order).
    actions: tuple[str, ...] = ()

    def stage_list(self) -> list[tuple[str, str]]:
        return list(self.stages) or [(self.name, self.version)]


@dataclass
class WorkItem:
    """One frame of one session, as the scheduler hands it to a runner."""

    session_id: str
    index: int
    time: float
    image: np.ndarray  # (H, W, 3) uint8 RGB
    state: object  # what open_session returned (in `forward`: what forward_view returned)
    prompt: dict | None = None
    message: object = None  # the queue message it came in, acknowledged once answered

    def viewing(self, state: object) -> "WorkItem":
        return replace(self, state=state)


@dataclass
class FrameOutput:
    """The masks of one frame: instances (`objects`) and/or panoptic `segments`."""

    index: int
    time: float
    objects: list[DetectedObject] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)


@dataclass
class ActionsOutput:
    """Action labels of tracked objects, scored at `key_frame` (a clip model answers late)."""

    key_frame: int
    time: float
    tracks: list[TrackActions] = field(default_factory=list)


Output = FrameOutput | ActionsOutput


class BatchedForward(ABC):
    """The batched, state-reading, retryable pass; shared by the runners that share weights."""

    name: str = "forward"
    # True: `run` takes each item's image as a uint8 (H, W, 3) tensor on the worker's device
    # (ForwardContext puts it there, through pinned memory on CUDA); False: the numpy array.
    device_frames: bool = False

    @abstractmethod
    def run(self, items: list[WorkItem]) -> list[Any]:
        """One pass over all items (their `state` is a read-only view); one output per item.

        An item's output may be an exception instance: that frame's own error (a prompt that does
        not fit, say), answered without its step while the other items go on."""


class ModelRunner(ABC):
    info: ModelInfo
    forward: BatchedForward

    @property
    def stateful(self) -> bool:
        return self.info.stateful

    @abstractmethod
    def open_session(self, options: dict) -> object:
        """Validate the session's options (raise OptionError) and return its state."""

    def forward_view(self, state: object) -> object:
        """What `forward` may read of a session's state (a pipeline shows its first stage's)."""
        return state

    @abstractmethod
    def step(self, item: WorkItem, output: Any) -> list[Output]:
        """Commit one frame to its session's state; the outputs it completes (maybe none)."""

    def flush(self, state: object) -> list[Output]:
        """Outputs still held back when a session ends (clip-level models)."""
        return []

    def close_session(self, state: object) -> None:  # noqa: B027 - optional hook
        """Free what the session holds (most state is freed with the object itself)."""


# The autocast dtype of each precision (VIDSERVE_PRECISION); fp32 runs without autocast.
PRECISIONS = {"fp32": None, "fp16": "float16", "bf16": "bfloat16"}


@dataclass(frozen=True)
class ForwardContext:
    """How the worker runs every batched pass (and step) on its device: in the precision's autocast,
    with frames moved to the device first for forwards that take them there (`device_frames`).
    On CUDA a frame goes through pinned host memory with a non-blocking copy, so the copies of a
    batch's frames overlap the kernels already queued; elsewhere it stays where it is."""

    device: str = "cpu"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )

    @property
    def device_type(self) -> str:
        import torch

        return torch.device(self.device).type

    def autocast(self) -> contextlib.AbstractContextManager:
        import torch

        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=getattr(torch, dtype))

    def frames_for(self, forward: BatchedForward, items: list[WorkItem]) -> list[WorkItem]:
        if not forward.device_frames:
            return items
        return [replace(item, image=self.to_device(item.image)) for item in items]

    def to_device(self, image: np.ndarray):
        import torch

        frame = torch.from_numpy(np.ascontiguousarray(image))
        if self.device_type != "cuda":
            return frame  # a view of the array: nothing to copy
        return frame.pin_memory().to(self.device, non_blocking=True)


def forward_context(device: str = "cpu", precision: str = "fp32") -> ForwardContext:
    """The context for a worker on `device`. fp16 needs CUDA (a CPU has no fast fp16 kernels):
    elsewhere it falls back to fp32 with a warning, so that one setting serves a fleet of GPU
    and CPU workers; bf16 runs on any device. An unknown precision is a ValueError."""
    context = ForwardContext(device, precision)
    if precision == "fp16" and context.device_type != "cuda":
        log.warning("precision fp16 needs CUDA: the worker on %s runs fp32", device)
        return ForwardContext(device, "fp32")
    return context


def run_forward(
    forward: BatchedForward, views: list[WorkItem], context: ForwardContext | None = None
) -> list[Any]:
    """One batched pass as the worker runs it (the scheduler and run_frames both call this)."""
    context = context or ForwardContext()
    with context.autocast():
        return forward.run(context.frames_for(forward, views))


def run_frames(
    runner: ModelRunner, items: list[WorkItem], context: ForwardContext | None = None
) -> list[list[Output] | Exception]:
    """Forward then step, as the worker does, for callers that run a model directly (`vidserve
    segment`, benchmarks); per item its outputs or its error. A failed forward raises."""
    context = context or ForwardContext()
    views = [item.viewing(runner.forward_view(item.state)) for item in items]
    outputs = run_forward(runner.forward, views, context)
    results: list[list[Output] | Exception] = []
    for item, output in zip(items, outputs, strict=True):
        if isinstance(output, Exception):
            results.append(output)
            continue
        try:
            with context.autocast():  # a step computes too, as in the scheduler
                results.append(runner.step(item, output))
        except Exception as error:
            results.append(error)
    return results
