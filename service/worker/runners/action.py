"""The action detector in the worker (family "action"): a pipeline stage after a tracker.

An action checkpoint serves one model, named as the checkpoint (`slowfast-acrn`), task "action":
the pipeline `masktrack -> action head`. Loading the checkpoint registers the pipeline
(service.worker.pipeline); `load_runners` builds it over the tracker the worker serves (or, for
`vidserve segment`, loads the tracker from the store), and a new version of either stage brings a
new version of the pipeline. The tracker's masks and ids pass through unchanged: a frame's objects
never wait for an action window.

Per session the head keeps (`ActionSession`):
- key frames: by default the first frame at or after each whole second of the video's own clock
  (AVA's convention); `action_stride` sets the seconds between them. The actors of a key frame
  are its tracked objects (of `action_categories`, all by default), with their boxes;
- a clip buffer: the frames, shrunk to the model's short side (uint8), of the seconds that a
  pending or future key frame's clip can still reach, and no denser than MAX_RATE_FACTOR times
  the training frame rate: bounded in time and in frames, so its memory is flat over a stream
  of any length;
- a key frame's clip: the model's clip_len frames frame_interval apart on the clock of the frames
  it was trained on (the manifest's training fps), each the buffered frame nearest in time: a
  stream at another rate gets the clip the model knows. The key frame is answered (ActionsOutput:
  every actor's labels and scores) once a frame at or past its clip's last time has arrived: the
  look-ahead (`look_ahead_s`), or when the session ends, its clip then padded with the last frame
  as MMAction2 clamps a clip to the video. An actor's label scores P(the actor is there), the
  tracker's score, x P(the action | the actor), the head's: a false detection's labels rank low
  (frame-mAP 0.506 against 0.456 with the head's scores alone, benchmarks/action_quality.py);
- with a checkpoint trained with a feature bank (`vidserve train action-lfb`): per track, the
  features the head computed for it at earlier key frames, within `action_bank_window` seconds
  (at most the trained window, its default; 0: off) and at most the trained features a second
  (models.action.feature_bank.TrackBanks). A key frame reads its actors' banks, then adds their
  features; a lost track's bank empties as time moves past its window, and a session's banks
  never hold more than BANK_BYTES_PER_SESSION.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import torch
from torch import Tensor

from models.action.feature_bank import BankBatch, TrackBanks
from models.action.inference import clip_offsets, prepare_clip, shrink_frame
from models.common.image import scale_boxes
from service.schemas import ActionLabel, TrackActions
from service.worker.options import read_options
from service.worker.pipeline import PipelineSpec, StageHead, register_pipeline
from service.worker.runner import (
    ActionsOutput,
    FrameOutput,
    ModelRunner,
    OptionError,
    Output,
    WorkItem,
)
from service.worker.runners import register_runners

TRACKER = "masktrack"  # the first stage: its tracks are the actors
AVA_FPS = 30.0  # the clock of a checkpoint that does not record its frames' rate (AVA's)
# A key frame's time may sit a rounding error before the whole second it stands for.
TIME_EPSILON = 1e-6
# The clip buffer keeps frames up to this many times the training frame rate: a stream up to
# that rate has each clip frame exactly the nearest one; a faster stream is thinned (a clip
# frame then up to 1 / (2 x this x fps) s off), so a fast stream cannot grow the buffer.
MAX_RATE_FACTOR = 4

OPTIONS = {
    # seconds between key frames (AVA: 1); a frame stride below one frame means every frame
    "action_stride": (float, 1.0, 0.01, 3600.0),
    # comma-separated category names of the actors; empty: every tracked object
    "action_categories": (str, "", None, None),
    # labels scoring below this are left out of the answer (0: every action, as AVA scores)
    "action_min_score": (float, 0.0, 0.0, 1.0),
}
# A model with a feature bank takes one more: the past seconds its bank reads, at most the
# window it was trained with (its default); 0 turns the bank off.
BANK_WINDOW_OPTION = "action_bank_window"
# The most a session's feature banks hold (the oldest features go first past it); a model's
# window x rate x features sized banks take ~2.3 KB a track-second (the small model's 576
# floats), so this is ~7,000 track-seconds.
BANK_BYTES_PER_SESSION = 16 << 20


@dataclass
class Actors:
    """A key frame waiting for its clip: its tracked actors and their boxes (input pixels)."""

    index: int
    time: float
    track_ids: list[int]
    boxes: list[tuple[float, float, float, float]]
    scores: list[float]  # the tracker's: how sure it is that the actor is there


@dataclass
class BufferedFrame:
    index: int
    time: float
    image: Tensor  # (H', W', 3) uint8 at the model's short side
    size: tuple[int, int]  # (H, W) of the input frame: the boxes' pixels


@dataclass
class ActionSession:
    stride_s: float
    categories: frozenset[str] | None  # None: all
    min_score: float
    frames: list[BufferedFrame] = field(default_factory=list)  # in time order
    pending: list[Actors] = field(default_factory=list)
    next_key_time: float | None = None  # None: the session's first frame is a key frame
    banks: TrackBanks | None = None  # per track, its past features (a model with a bank)

    def buffered_bytes(self) -> int:
        """The frame buffer's and the feature banks' bytes."""
        banks = self.banks.nbytes() if self.banks is not None else 0
        return sum(f.image.numel() for f in self.frames) + banks


class ActionHead(StageHead):
    # The actors are the tracker's objects at 0.5, the threshold the head was measured with, not
    # the tracker's calibrated served default (0.75 for the shipped masktrack), which gives up
    # objects to answer none on scenes without any. On the held-out set of
    # benchmarks/action_quality.py (seed 960), with the masktrack of 2026-12-04 10:18 (calibrated
    # 0.85), the served frame-mAP@0.5 was 0.640 at 0.5, 0.600 at 0.8 and 0.587 at 0.85. A
    # request's score_threshold still sets it.
    first_stage_defaults = {"score_threshold": 0.5}

    def __init__(self, model, name: str, version: str, actions: list[str], fps: float, classes):
        self.model = model.eval()
        self.config = model.config
        self.name = name
        self.version = version
        self.actions = tuple(actions)  # the labels it answers, in the model's column order
        self.fps = fps
        self.offsets = clip_offsets(self.config, fps)
        self.classes = tuple(classes)  # the tracker's categories
        self.options = dict(OPTIONS)
        if self.config.lfb != "none":
            window = self.config.lfb_window_s
            self.options[BANK_WINDOW_OPTION] = (float, window, 0.0, window)
        self.option_names = tuple(self.options)

    @property
    def look_ahead_s(self) -> float:
        return self.offsets[-1]

    def open_session(self, options: dict) -> ActionSession:
        values = read_options(options, self.options)
        window = values.get(BANK_WINDOW_OPTION, 0.0)
        banks = None
        if window > 0:
            banks = TrackBanks(window, self.config.lfb_per_second, BANK_BYTES_PER_SESSION)
        return ActionSession(
            stride_s=values["action_stride"],
            categories=self._categories(values["action_categories"]),
            min_score=values["action_min_score"],
            banks=banks,
        )

    def _categories(self, text: str) -> frozenset[str] | None:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = sorted(set(names) - set(self.classes))
        if unknown:
            raise OptionError(
                f"action_categories: unknown categor{'ies' if len(unknown) > 1 else 'y'} "
                f"{', '.join(unknown)}; the tracker has {', '.join(self.classes)}"
            )
        return frozenset(names) or None

    # --- a frame ------------------------------------------------------------------------------
    def step(self, state: ActionSession, item: WorkItem, upstream: list[Output]) -> list[Output]:
        # Everything is computed on copies first and committed last: a step that raises (the
        # model's pass, say) leaves the session as it was.
        frames = self._buffer(state.frames, item)
        pending, next_key_time = list(state.pending), state.next_key_time
        if next_key_time is None or item.time >= next_key_time - TIME_EPSILON:
            pending.append(self._actors(state, item, upstream))
            next_key_time = self._next_key_time(state.stride_s, item.time)
        newest = frames[-1].time
        ready = [k for k in pending if newest >= k.time + self.offsets[-1] - TIME_EPSILON]
        banks = state.banks.copy() if state.banks is not None and ready else state.banks
        outputs = self._answer(state, ready, frames, banks)
        state.pending = [k for k in pending if k not in ready]
        state.next_key_time = next_key_time
        state.frames = self._prune(frames, state.pending, next_key_time)
        state.banks = banks
        return outputs

    def flush(self, state: ActionSession, upstream: list[Output]) -> list[Output]:
        """The key frames still waiting: their clips padded with the last frame."""
        outputs = self._answer(state, state.pending, state.frames, state.banks)
        state.pending, state.frames = [], []
        return outputs

    def close_session(self, state: ActionSession) -> None:
        state.pending, state.frames, state.banks = [], [], None

    def _buffer(self, frames: list[BufferedFrame], item: WorkItem) -> list[BufferedFrame]:
        """The buffer with this frame in it, unless the last kept frame is closer than
        1 / (MAX_RATE_FACTOR x the training rate) before it (a faster stream is thinned)."""
        if frames and item.time < frames[-1].time:
            raise OptionError(
                f"frame {item.index} at {item.time:.3f} s comes before the session's frame "
                f"{frames[-1].index} at {frames[-1].time:.3f} s: an action session's frames "
                "go forward in time"
            )
        if (
            frames
            and item.time - frames[-1].time < 1.0 / (MAX_RATE_FACTOR * self.fps) - TIME_EPSILON
        ):
            return frames
        image = shrink_frame(item.image, self.config.test_short_side)
        size = tuple(item.image.shape[:2])
        return [*frames, BufferedFrame(item.index, item.time, image, size)]

    def _actors(self, state: ActionSession, item: WorkItem, upstream: list[Output]) -> Actors:
        frame = next(
            (o for o in upstream if isinstance(o, FrameOutput) and o.index == item.index), None
        )
        objects = [] if frame is None else frame.objects
        chosen = [
            o
            for o in objects
            if o.track_id is not None
            and (state.categories is None or o.category in state.categories)
        ]
        return Actors(
            item.index,
            item.time,
            [o.track_id for o in chosen],
            [tuple(o.box) for o in chosen],
            [o.score for o in chosen],
        )

    def _next_key_time(self, stride_s: float, time: float) -> float:
        """The first multiple of the stride after `time` (whole seconds by default)."""
        return (int((time + TIME_EPSILON) // stride_s) + 1) * stride_s

    def _prune(
        self, frames: list[BufferedFrame], pending: list[Actors], next_key_time: float
    ) -> list[BufferedFrame]:
        """Drop the frames no clip can take any more: those before the earliest time a pending
        or future key frame's clip reaches, except the last of them (the nearest to it)."""
        horizon = min([k.time for k in pending] + [next_key_time]) + self.offsets[0]
        times = [f.time for f in frames]
        first_kept = max(bisect.bisect_left(times, horizon) - 1, 0)
        return frames[first_kept:]

    # --- the model ----------------------------------------------------------------------------
    def _answer(
        self,
        state: ActionSession,
        keys: list[Actors],
        frames: list[BufferedFrame],
        banks: TrackBanks | None,
    ) -> list[Output]:
        """The key frames' actions, in time order; with a bank, each actor's features are read
        from its track's bank and then written to it (the next key frame's past)."""
        outputs: list[Output] = []
        for key in keys:
            if not key.track_ids or not frames:
                continue  # no actor on the key frame: nothing to label
            scores = self._scores(key, frames, banks)
            # An actor's label scores P(the actor is there) x P(the action | the actor).
            scores = scores * torch.tensor(key.scores)[:, None]
            tracks = [
                TrackActions(track_id=track_id, actions=self._labels(row, state.min_score, key))
                for track_id, row in zip(key.track_ids, scores.tolist(), strict=True)
            ]
            outputs.append(ActionsOutput(key.index, key.time, tracks))
        return outputs

    def clip(self, frames: list[BufferedFrame], key_time: float) -> list[BufferedFrame]:
        """The key frame's clip: at each of the model's clip times, the nearest buffered frame."""
        times = [f.time for f in frames]
        return [nearest(frames, times, key_time + offset) for offset in self.offsets]

    def _scores(self, key: Actors, frames: list[BufferedFrame], banks: TrackBanks | None) -> Tensor:
        clip = self.clip(frames, key.time)
        device = self.model.device
        images = prepare_clip([f.image for f in clip], self.config, device)[None]
        boxes = torch.tensor(key.boxes, dtype=torch.float32, device=device)
        boxes = scale_boxes(boxes, clip[0].size, tuple(images.shape[-2:]))
        rois = torch.cat([boxes.new_zeros((len(boxes), 1)), boxes], dim=1)
        with torch.inference_mode():
            actors = self.model.actor_features(images, rois)
            bank = None
            if banks is not None:
                past = banks.read(key.track_ids, key.time)
                bank = BankBatch.stack(past, actors.shape[1], device)
                banks.write(key.track_ids, actors, key.time)
            return self.model.scores_from_features(actors, bank).float().cpu()

    def _labels(self, row: list[float], min_score: float, key: Actors) -> list[ActionLabel]:
        labels = [
            ActionLabel(label=name, score=score, key_frame=key.index)
            for name, score in zip(self.actions, row, strict=True)
            if score >= min_score
        ]
        return sorted(labels, key=lambda label: -label.score)


def nearest(frames: list[BufferedFrame], times: list[float], time: float) -> BufferedFrame:
    """The buffered frame nearest in time (`times`: the frames'; the first or last beyond the
    buffer's ends: a clip padded as MMAction2 clamps it); ties go to the earlier frame."""
    k = bisect.bisect_left(times, time)
    if k == 0:
        return frames[0]
    if k == len(frames):
        return frames[-1]
    before, after = frames[k - 1], frames[k]
    return before if time - before.time <= after.time - time else after


def action_runners(loaded, name: str) -> list[ModelRunner]:
    """An action checkpoint serves no runner of its own: it registers the pipeline
    `TRACKER -> its head` under its name, built over whichever tracker version is served."""
    manifest = loaded.manifest
    fps = float(manifest.training.get("fps") or AVA_FPS)

    def heads(first: ModelRunner) -> list[StageHead]:
        return [
            ActionHead(
                loaded.model, name, manifest.version, manifest.class_names, fps, first.info.classes
            )
        ]

    register_pipeline(PipelineSpec(name=name, task="action", first=TRACKER, heads=heads))
    return []


register_runners("action", action_runners)
