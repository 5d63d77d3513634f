"""The one output schema REST and gRPC share (DESIGN.md, "One output schema").

Per frame: index and time, then the objects with track id, category, score, box in input pixels,
mask as COCO RLE and action labels; per video: a summary of each track; always the model name and
version that produced the result.

A session yields Events (FrameResult, ActionsResult); `build_response` makes the whole answer of
a video from them (REST, gRPC SegmentVideo and `vidserve segment` alike) and `summarize_tracks`
is its one track summary. service/gateway/grpc_convert.py maps all of it to and from the proto
messages, service/writers/ to the standard dataset files.
"""

from collections.abc import Iterable

from pydantic import BaseModel, Field

from models.data.track_votes import TrackVotes


class Mask(BaseModel):
    """COCO run-length encoding; `counts` is the compressed string form."""

    size: tuple[int, int] = Field(description="[height, width] of the input frame")
    counts: str


class ActionLabel(BaseModel):
    label: str
    score: float
    key_frame: int | None = Field(
        None, description="The key frame the label was scored at (the centre of its clip)"
    )


class Stage(BaseModel):
    """One stage of the model that produced a result (a pipeline has several)."""

    name: str
    version: str


class DetectedObject(BaseModel):
    track_id: int | None = Field(
        None, description="Stable id of the object through the video; null for per-frame models"
    )
    category: str
    score: float
    box: tuple[float, float, float, float] = Field(description="[x1, y1, x2, y2] input pixels")
    mask: Mask
    actions: list[ActionLabel] = Field(default_factory=list)


class Segment(BaseModel):
    """A panoptic segment: a thing or a stuff region; the segments of a frame never overlap."""

    id: int = Field(description="Segment id, unique within its frame (1..)")
    category: str
    isthing: bool
    score: float
    area: int = Field(description="Pixels of the mask")
    mask: Mask
    track_id: int | None = Field(None, description="Things of a tracked model: the track id")


class FrameResult(BaseModel):
    frame_index: int = Field(description="Index of the frame in the input video or stream")
    time: float = Field(description="Seconds from the start of the video")
    objects: list[DetectedObject] = Field(default_factory=list)
    segments: list[Segment] = Field(
        default_factory=list, description="Panoptic models: things and stuff of the frame"
    )
    model: str
    model_version: str
    stages: list[Stage] = Field(
        default_factory=list, description="Every stage that produced it (name and version)"
    )


class TrackActions(BaseModel):
    track_id: int
    actions: list[ActionLabel]


class ActionsResult(BaseModel):
    """Action labels of the tracked objects at one key frame. Streams send it when the key
    frame's clip is complete, after that frame's own FrameResult."""

    key_frame: int
    time: float
    tracks: list[TrackActions]
    model: str
    model_version: str
    stages: list[Stage] = Field(default_factory=list)


# What a session yields, in the order it completes: a frame's masks as soon as they are ready,
# a key frame's actions when its window is.
Event = FrameResult | ActionsResult


class TrackSummary(BaseModel):
    track_id: int
    category: str = Field(
        description="Majority vote of the per-frame categories; a tie goes to the larger summed "
        "score, then to the category seen first"
    )
    score: float = Field(description="Mean of the per-frame scores")
    first_frame: int
    last_frame: int
    num_frames: int


class SegmentResponse(BaseModel):
    model: str
    model_version: str
    width: int
    height: int
    fps: float
    frames: list[FrameResult]
    tracks: list[TrackSummary]
    stages: list[Stage] = Field(
        default_factory=list, description="Every stage that produced it (name and version)"
    )
    actions: list[ActionsResult] = Field(
        default_factory=list,
        description="Every key frame's action labels, in key-frame order, as the stream sent "
        "them; the labels of a track on its key frame are also in that object's `actions`, "
        "those of a track absent from the key frame only here",
    )


def frame_tracks(frame: FrameResult) -> dict[int, tuple[str, float]]:
    """The tracks on one frame: track id -> (category, score). Objects first, then panoptic
    segments with a track id (video panoptic) that no object of the frame already names; a
    track counts once per frame."""
    tracks: dict[int, tuple[str, float]] = {}
    for item in [*frame.objects, *frame.segments]:
        if item.track_id is not None and item.track_id not in tracks:
            tracks[item.track_id] = (item.category, item.score)
    return tracks


def summarize_tracks(frames: Iterable[FrameResult]) -> list[TrackSummary]:
    """Video-level tracks, by track id: score = mean of the frame scores, category = majority
    vote; a tie goes to the category with the larger summed score, then to the one seen first
    (earliest frame). The one rule of models.data.track_votes, which the tracker's summaries and
    the YouTube-VIS results follow too. Objects and tracked segments both count."""
    votes: dict[int, TrackVotes] = {}
    for frame in sorted(frames, key=lambda f: f.frame_index):
        for track_id, (category, score) in frame_tracks(frame).items():
            votes.setdefault(track_id, TrackVotes()).add(frame.frame_index, category, score)
    return [
        TrackSummary(
            track_id=track_id,
            category=track.category,
            score=track.score,
            first_frame=track.first_frame,
            last_frame=track.last_frame,
            num_frames=track.num_frames,
        )
        for track_id, track in sorted(votes.items())
    ]


def build_response(
    events: Iterable[Event],
    *,
    width: int,
    height: int,
    fps: float,
    model: str | None = None,
    model_version: str | None = None,
    stages: list[Stage] | None = None,
) -> SegmentResponse:
    """The whole answer of a session from the events it yielded, in any order: REST's JSON,
    gRPC's SegmentVideo and `vidserve segment` all build it here.

    - `frames`: the FrameResults by frame index;
    - each ActionsResult is merged into the objects of its key frame: an object whose track id
      has labels there gets them in `actions`, with `key_frame` set (labels already on the
      object are not repeated); `actions` keeps every ActionsResult, by key frame, so labels of
      a track absent from its key frame (or of a key frame not among the frames) are not lost;
    - `tracks`: summarize_tracks of the frames;
    - `model`, `model_version` and `stages`: given, else those of the first frame (else of the
      first ActionsResult). No events and no model is a ValueError.
    """
    frames: list[FrameResult] = []
    actions: list[ActionsResult] = []
    for event in events:
        (actions if isinstance(event, ActionsResult) else frames).append(event)
    frames.sort(key=lambda f: f.frame_index)
    actions.sort(key=lambda a: a.key_frame)
    first = frames[0] if frames else actions[0] if actions else None
    if first is None and (model is None or model_version is None):
        raise ValueError("a response needs at least one event, or its model and version")
    if actions:
        frames = _merge_actions(frames, actions)
    return SegmentResponse(
        model=model if model is not None else first.model,
        model_version=model_version if model_version is not None else first.model_version,
        width=width,
        height=height,
        fps=fps,
        frames=frames,
        tracks=summarize_tracks(frames),
        stages=list(stages) if stages is not None else list(first.stages) if first else [],
        actions=actions,
    )


def _merge_actions(frames: list[FrameResult], actions: list[ActionsResult]) -> list[FrameResult]:
    """Copies of the frames whose objects have labels in `actions` (the inputs are unchanged)."""
    labels: dict[tuple[int, int], list[ActionLabel]] = {}
    for result in actions:
        for track in result.tracks:
            labels.setdefault((result.key_frame, track.track_id), []).extend(
                label
                if label.key_frame is not None
                else label.model_copy(update={"key_frame": result.key_frame})
                for label in track.actions
            )
    out = []
    for frame in frames:
        if not any((frame.frame_index, o.track_id) in labels for o in frame.objects):
            out.append(frame)
            continue
        objects = []
        for obj in frame.objects:
            new = labels.get((frame.frame_index, obj.track_id), [])
            added = [label for label in new if label not in obj.actions]
            objects.append(
                obj.model_copy(update={"actions": [*obj.actions, *added]}) if added else obj
            )
        out.append(frame.model_copy(update={"objects": objects}))
    return out
