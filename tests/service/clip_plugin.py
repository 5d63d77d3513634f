"""Test models that a server loads as a plugin (VIDSERVE_PLUGINS=tests.service.clip_plugin).

`clip-mean`: a clip-level runner with a look-ahead of 16 frames. Each key frame (every 4th) is
answered once the frames up to 16 after it are in the session, or at the end of the video: its
FrameResult holds one object scoring the mean brightness (0..1) of the frames k-16..k+16 it has
seen, and an ActionsResult the same as the label `mean@<frames in the window>`. Other frames have
no result at all (sparse). Everything is checkable from the video alone.

`masktrack-areas`: a pipeline over the shipped `masktrack` with a head that labels each tracked
object `large` or `small` by its mask area, at every frame.
"""

from dataclasses import dataclass, field

import numpy as np
from pycocotools import mask as mask_utils

from models.data.rle import encode_mask
from service.schemas import ActionLabel, DetectedObject, TrackActions
from service.worker.options import read_options
from service.worker.pipeline import PipelineSpec, StageHead, register_pipeline
from service.worker.runner import (
    ActionsOutput,
    BatchedForward,
    FrameOutput,
    ModelInfo,
    ModelRunner,
    Output,
    WorkItem,
)

KEY_EVERY = 4
HALF = 16  # the window of key frame k: frames k-16..k+16; so a look-ahead of 16 frames
LARGE_AREA = 600  # pixels


class MeanForward(BatchedForward):
    """Each frame's mean brightness; a batch of several frames of a `fail_batches` session fails
    on purpose (the worker must then retry each frame alone)."""

    name = "clip-mean-forward"

    def __init__(self):
        self.failed_batches = 0
        self.calls = 0

    def run(self, items: list[WorkItem]) -> list[float]:
        self.calls += 1
        if len(items) > 1 and any(item.state.fail_batches for item in items):
            self.failed_batches += 1
            raise RuntimeError("this batch fails on purpose")
        return [float(item.image.mean()) / 255.0 for item in items]


@dataclass
class ClipState:
    fail_batches: bool
    means: dict[int, float] = field(default_factory=dict)  # the clip buffer: index -> mean
    times: dict[int, float] = field(default_factory=dict)
    size: tuple[int, int] = (0, 0)
    last: int = -1
    next_key: int = 0


class ClipMeanRunner(ModelRunner):
    def __init__(self):
        self.forward = MeanForward()
        self.info = ModelInfo(
            name="clip-mean",
            task="action",
            version="test-1",
            classes=("mean",),
            stateful=True,
            one_frame_per_batch=False,
        )

    def open_session(self, options: dict) -> ClipState:
        values = read_options(options, {"fail_batches": (float, 0.0, 0.0, 1.0)})
        return ClipState(fail_batches=bool(values["fail_batches"]))

    def step(self, item: WorkItem, mean: float) -> list[Output]:
        state: ClipState = item.state
        if item.index in state.means:
            raise ValueError(f"frame {item.index} is already in the clip buffer")
        state.means[item.index] = mean
        state.times[item.index] = item.time
        state.size = item.image.shape[:2]
        state.last = item.index
        return self._complete(state, final=False)

    def flush(self, state: ClipState) -> list[Output]:
        return self._complete(state, final=True)

    def _complete(self, state: ClipState, final: bool) -> list[Output]:
        outputs: list[Output] = []
        while state.next_key <= state.last - HALF or (final and state.next_key <= state.last):
            key = state.next_key
            if key in state.means:
                outputs += key_frame_outputs(state, key)
            state.next_key += KEY_EVERY
            for index in [i for i in state.means if i < state.next_key - HALF]:
                del state.means[index]  # no later key frame's window reaches it
        return outputs


def window_mean(means: dict[int, float], key: int) -> tuple[float, int]:
    window = [m for i, m in means.items() if key - HALF <= i <= key + HALF]
    return sum(window) / len(window), len(window)


def key_frame_outputs(state: ClipState, key: int) -> list[Output]:
    value, count = window_mean(state.means, key)
    h, w = state.size
    whole = DetectedObject(
        track_id=0,
        category="mean",
        score=value,
        box=(0.0, 0.0, float(w), float(h)),
        mask=encode_mask(np.ones((h, w), bool)),
    )
    label = ActionLabel(label=f"mean@{count}", score=value, key_frame=key)
    time = state.times[key]
    return [
        FrameOutput(key, time, objects=[whole]),
        ActionsOutput(key, time, tracks=[TrackActions(track_id=0, actions=[label])]),
    ]


class AreaHead(StageHead):
    """Labels each tracked object by the area of its mask, at every frame."""

    name = "areas"
    version = "test-1"

    def step(self, state, item: WorkItem, upstream: list[Output]) -> list[Output]:
        outputs = []
        for out in upstream:
            if not isinstance(out, FrameOutput):
                continue
            tracks = [
                TrackActions(track_id=obj.track_id, actions=[area_label(obj, out.index)])
                for obj in out.objects
                if obj.track_id is not None
            ]
            outputs.append(ActionsOutput(out.index, out.time, tracks))
        return outputs


def area_label(obj: DetectedObject, key_frame: int) -> ActionLabel:
    rle = {"size": list(obj.mask.size), "counts": obj.mask.counts.encode()}
    area = int(mask_utils.area(rle))
    label = "large" if area >= LARGE_AREA else "small"
    return ActionLabel(
        label=label, score=area / (obj.mask.size[0] * obj.mask.size[1]), key_frame=key_frame
    )


register_pipeline(
    PipelineSpec(
        name="masktrack-areas", task="action", first="masktrack", heads=lambda _: [AreaHead()]
    )
)


def runners() -> list[ModelRunner]:
    return [ClipMeanRunner()]
