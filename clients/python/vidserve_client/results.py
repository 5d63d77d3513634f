"""The typed results: dataclasses read from the REST JSON (`from_dict`) or the gRPC messages
(`from_proto`), with the shape of the service's schema (service/schemas.py in the server).

`to_dict` gives back the JSON the service sent, key for key. Masks stay COCO RLE until asked
for: `obj.mask.to_numpy()` decodes one.

`classes` (the model's class list, not part of the service's answer) is filled in by the client
when it knows it, so that conversions can number categories; `None` when unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import rle
from ._proto import vidserve_pb2 as pb

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from .errors import VidserveError


@dataclass(frozen=True)
class Mask:
    """A COCO RLE mask: `size` is [height, width], `counts` the compressed string."""

    size: tuple[int, int]
    counts: str

    @property
    def height(self) -> int:
        return self.size[0]

    @property
    def width(self) -> int:
        return self.size[1]

    def to_numpy(self) -> np.ndarray:
        """The (height, width) bool mask (decoded now, not kept)."""
        return rle.decode({"size": self.size, "counts": self.counts})

    @classmethod
    def from_numpy(cls, mask: np.ndarray) -> Mask:
        encoded = rle.encode(np.asarray(mask).astype(bool))
        return cls(tuple(encoded["size"]), encoded["counts"])

    @classmethod
    def from_dict(cls, data: Mapping) -> Mask:
        height, width = data["size"]
        return cls((int(height), int(width)), data["counts"])

    def to_dict(self) -> dict:
        return {"size": list(self.size), "counts": self.counts}

    @classmethod
    def from_proto(cls, message: pb.Mask) -> Mask:
        """`size` when set, else the deprecated height and width."""
        size = tuple(message.size) if message.size else (message.height, message.width)
        return cls(size, message.counts)


@dataclass
class Stage:
    """One stage of the model that produced a result (a pipeline has several)."""

    name: str
    version: str

    @classmethod
    def from_dict(cls, data: Mapping) -> Stage:
        return cls(data["name"], data["version"])

    def to_dict(self) -> dict:
        return {"name": self.name, "version": self.version}


@dataclass
class ActionLabel:
    label: str
    score: float
    key_frame: int | None = None  # the key frame it was scored at

    @classmethod
    def from_dict(cls, data: Mapping) -> ActionLabel:
        return cls(data["label"], data["score"], data.get("key_frame"))

    def to_dict(self) -> dict:
        return {"label": self.label, "score": self.score, "key_frame": self.key_frame}

    @classmethod
    def from_proto(cls, message: pb.ActionLabel) -> ActionLabel:
        key_frame = message.key_frame if message.HasField("key_frame") else None
        return cls(message.label, message.score, key_frame)


@dataclass
class DetectedObject:
    """An object of a frame: track id (None for per-frame models), category, score, box
    [x1, y1, x2, y2] in input pixels, mask, and action labels."""

    track_id: int | None
    category: str
    score: float
    box: tuple[float, float, float, float]
    mask: Mask
    actions: list[ActionLabel] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Mapping) -> DetectedObject:
        return cls(
            data.get("track_id"),
            data["category"],
            data["score"],
            tuple(data["box"]),
            Mask.from_dict(data["mask"]),
            [ActionLabel.from_dict(a) for a in data.get("actions", [])],
        )

    def to_dict(self) -> dict:
        return {
            "track_id": self.track_id,
            "category": self.category,
            "score": self.score,
            "box": list(self.box),
            "mask": self.mask.to_dict(),
            "actions": [a.to_dict() for a in self.actions],
        }

    @classmethod
    def from_proto(cls, message: pb.DetectedObject) -> DetectedObject:
        return cls(
            message.track_id if message.HasField("track_id") else None,
            message.category,
            message.score,
            tuple(message.box),
            Mask.from_proto(message.mask),
            [ActionLabel.from_proto(a) for a in message.actions],
        )


@dataclass
class Segment:
    """A panoptic segment (a thing or a stuff region); a frame's segments never overlap."""

    id: int
    category: str
    isthing: bool
    score: float
    area: int
    mask: Mask
    track_id: int | None = None

    @classmethod
    def from_dict(cls, data: Mapping) -> Segment:
        return cls(
            data["id"],
            data["category"],
            data["isthing"],
            data["score"],
            data["area"],
            Mask.from_dict(data["mask"]),
            data.get("track_id"),
        )

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "category": self.category,
            "isthing": self.isthing,
            "score": self.score,
            "area": self.area,
            "mask": self.mask.to_dict(),
            "track_id": self.track_id,
        }

    @classmethod
    def from_proto(cls, message: pb.Segment) -> Segment:
        return cls(
            message.id,
            message.category,
            message.isthing,
            message.score,
            message.area,
            Mask.from_proto(message.mask),
            message.track_id if message.HasField("track_id") else None,
        )


@dataclass
class FrameResult:
    """One frame's result: REST's `frames[i]`, and a gRPC stream's FRAME event."""

    frame_index: int
    time: float
    objects: list[DetectedObject]
    segments: list[Segment]
    model: str
    model_version: str
    stages: list[Stage]
    classes: tuple[str, ...] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_dict(cls, data: Mapping, classes: Sequence[str] | None = None) -> FrameResult:
        return cls(
            data["frame_index"],
            data["time"],
            [DetectedObject.from_dict(o) for o in data.get("objects", [])],
            [Segment.from_dict(s) for s in data.get("segments", [])],
            data["model"],
            data["model_version"],
            [Stage.from_dict(s) for s in data.get("stages", [])],
            _classes(classes),
        )

    def to_dict(self) -> dict:
        return {
            "frame_index": self.frame_index,
            "time": self.time,
            "objects": [o.to_dict() for o in self.objects],
            "segments": [s.to_dict() for s in self.segments],
            "model": self.model,
            "model_version": self.model_version,
            "stages": [s.to_dict() for s in self.stages],
        }

    @classmethod
    def from_proto(cls, message: pb.FrameResult, classes=None) -> FrameResult:
        return cls(
            message.frame_index,
            message.time,
            [DetectedObject.from_proto(o) for o in message.objects],
            [Segment.from_proto(s) for s in message.segments],
            message.model,
            message.model_version,
            [Stage(s.name, s.version) for s in message.stages],
            _classes(classes),
        )

    def to_detections(self, classes: Sequence[str] | None = None):
        """This frame as `supervision.Detections` (needs `vidserve-client[supervision]`); see
        vidserve_client.convert.to_supervision."""
        from .convert import to_supervision

        return to_supervision(self, classes)


@dataclass
class TrackActions:
    track_id: int
    actions: list[ActionLabel]

    @classmethod
    def from_dict(cls, data: Mapping) -> TrackActions:
        return cls(data["track_id"], [ActionLabel.from_dict(a) for a in data["actions"]])

    def to_dict(self) -> dict:
        return {"track_id": self.track_id, "actions": [a.to_dict() for a in self.actions]}


@dataclass
class ActionsResult:
    """The action labels of the tracks at one key frame: REST's `actions[i]`, and a gRPC
    stream's ACTIONS event (sent when the key frame's clip is complete)."""

    key_frame: int
    time: float
    tracks: list[TrackActions]
    model: str
    model_version: str
    stages: list[Stage]

    @classmethod
    def from_dict(cls, data: Mapping) -> ActionsResult:
        return cls(
            data["key_frame"],
            data["time"],
            [TrackActions.from_dict(t) for t in data["tracks"]],
            data["model"],
            data["model_version"],
            [Stage.from_dict(s) for s in data.get("stages", [])],
        )

    def to_dict(self) -> dict:
        return {
            "key_frame": self.key_frame,
            "time": self.time,
            "tracks": [t.to_dict() for t in self.tracks],
            "model": self.model,
            "model_version": self.model_version,
            "stages": [s.to_dict() for s in self.stages],
        }

    @classmethod
    def from_proto(cls, message: pb.FrameResult) -> ActionsResult:
        return cls(
            message.frame_index,
            message.time,
            [
                TrackActions(t.track_id, [ActionLabel.from_proto(a) for a in t.actions])
                for t in message.track_actions
            ],
            message.model,
            message.model_version,
            [Stage(s.name, s.version) for s in message.stages],
        )


@dataclass
class TrackSummary:
    """One track over the video: mean score, majority-vote category, first and last frame."""

    track_id: int
    category: str
    score: float
    first_frame: int
    last_frame: int
    num_frames: int

    @classmethod
    def from_dict(cls, data: Mapping) -> TrackSummary:
        return cls(**{name: data[name] for name in _TRACK_FIELDS})

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in _TRACK_FIELDS}

    @classmethod
    def from_proto(cls, message: pb.TrackSummary) -> TrackSummary:
        return cls(**{name: getattr(message, name) for name in _TRACK_FIELDS})


_TRACK_FIELDS = ("track_id", "category", "score", "first_frame", "last_frame", "num_frames")


@dataclass
class StreamSummary:
    """The last event of a stream opened with `summary=True`: the tracks REST returns."""

    tracks: list[TrackSummary]
    model: str
    model_version: str


# What a stream yields.
StreamEvent = FrameResult | ActionsResult | StreamSummary


@dataclass
class SegmentResult:
    """A whole video's result (REST's JSON answer, a finished job's `result`)."""

    model: str
    model_version: str
    width: int
    height: int
    fps: float
    frames: list[FrameResult]
    tracks: list[TrackSummary]
    stages: list[Stage] = field(default_factory=list)
    actions: list[ActionsResult] = field(default_factory=list)
    classes: tuple[str, ...] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_dict(cls, data: Mapping, classes: Sequence[str] | None = None) -> SegmentResult:
        return cls(
            data["model"],
            data["model_version"],
            data["width"],
            data["height"],
            data["fps"],
            [FrameResult.from_dict(f, classes) for f in data["frames"]],
            [TrackSummary.from_dict(t) for t in data.get("tracks", [])],
            [Stage.from_dict(s) for s in data.get("stages", [])],
            [ActionsResult.from_dict(a) for a in data.get("actions", [])],
            _classes(classes),
        )

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "model_version": self.model_version,
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
            "frames": [f.to_dict() for f in self.frames],
            "tracks": [t.to_dict() for t in self.tracks],
            "stages": [s.to_dict() for s in self.stages],
            "actions": [a.to_dict() for a in self.actions],
        }

    def __repr__(self) -> str:  # a video's masks are too many to print
        return (
            f"SegmentResult(model={self.model!r}, model_version={self.model_version!r}, "
            f"width={self.width}, height={self.height}, fps={self.fps}, "
            f"frames=<{len(self.frames)}>, tracks=<{len(self.tracks)}>, "
            f"actions=<{len(self.actions)}>)"
        )

    def to_ytvis(
        self, video_id: int = 1, classes: Sequence[str] | Mapping[str, int] | None = None
    ) -> list[dict]:
        """YouTube-VIS results: one entry per track (see vidserve_client.convert.ytvis_results)."""
        from .convert import ytvis_results

        return ytvis_results(self, video_id, classes)

    def write_davis(self, folder: Path | str) -> int:
        """DAVIS palette PNGs, one per frame (see vidserve_client.convert.write_davis)."""
        from .convert import write_davis

        return write_davis(self, folder)


@dataclass
class ModelInfo:
    """A served model: its task, version, classes, whether it takes a prompt, its stages, and
    for a model with an action head the action labels it answers (empty otherwise)."""

    name: str
    task: str
    version: str
    classes: list[str]
    takes_prompt: bool
    stages: list[Stage]
    actions: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Mapping) -> ModelInfo:
        return cls(
            data["name"],
            data["task"],
            data["version"],
            list(data.get("classes", [])),
            bool(data.get("takes_prompt", False)),
            [Stage.from_dict(s) for s in data.get("stages", [])],
            list(data.get("actions", [])),  # absent from an older service
        )

    @classmethod
    def from_proto(cls, message: pb.ModelInfo) -> ModelInfo:
        return cls(
            message.name,
            message.task,
            message.version,
            list(message.classes),
            message.takes_prompt,
            [Stage(s.name, s.version) for s in message.stages],
            list(message.actions),
        )


JOB_STATUSES = ("queued", "running", "done", "failed")


@dataclass
class Job:
    """A video segmented in the background (`POST /v1/jobs`): its status (queued, running, done,
    failed), progress, and once done its result, once failed its error."""

    id: str
    status: str
    model: str | None = None
    frames_done: int | None = None
    frames_total: int | None = None
    created_at: float | None = None  # seconds since the epoch
    updated_at: float | None = None
    expires_at: float | None = None  # when a finished job's result is dropped
    url: str | None = None
    result: SegmentResult | None = field(default=None, repr=False)
    error: VidserveError | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed")

    @property
    def progress(self) -> float | None:
        """Fraction of the frames done (0..1), None while the total is unknown."""
        if not self.frames_total or self.frames_done is None:
            return None
        return min(1.0, self.frames_done / self.frames_total)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], classes: Sequence[str] | None = None) -> Job:
        from .errors import from_problem

        result, error = data.get("result"), data.get("error")
        return cls(
            id=str(data["id"]),
            status=str(data["status"]),
            model=data.get("model"),
            frames_done=data.get("frames_done"),
            frames_total=data.get("frames_total"),
            created_at=data.get("created_at"),
            updated_at=data.get("updated_at"),
            expires_at=data.get("expires_at"),
            url=data.get("url"),
            result=SegmentResult.from_dict(result, classes) if result else None,
            error=from_problem(error) if error else None,
        )


def event_from_proto(message: pb.FrameResult, classes=None) -> StreamEvent:
    """A StreamFrames event by its kind: FrameResult, ActionsResult or StreamSummary."""
    if message.kind == pb.FrameResult.SUMMARY:
        tracks = [TrackSummary.from_proto(t) for t in message.tracks]
        return StreamSummary(tracks, message.model, message.model_version)
    if message.kind == pb.FrameResult.ACTIONS:
        return ActionsResult.from_proto(message)
    return FrameResult.from_proto(message, classes)


def _classes(classes: Sequence[str] | None) -> tuple[str, ...] | None:
    return tuple(classes) if classes is not None else None
