"""The typed results of service.schemas to and from the gRPC messages of proto/vidserve.proto, in
one place (the gateway sends with it, clients and tests read with it).

A session's events travel as FrameResult messages with a `kind`: FRAME (a FrameResult), ACTIONS
(an ActionsResult: frame_index = the key frame, labels in track_actions) and SUMMARY (the track
summary, the last event of a stream whose SessionConfig asks for it).

Masks: written with `size` ([height, width], as REST's JSON) and the deprecated `height` and
`width` (for clients that read those); read from `size`, else from `height` and `width`.
"""

from collections.abc import Iterable

from service.gateway.grpc_gen import vidserve_pb2 as pb
from service.schemas import (
    ActionLabel,
    ActionsResult,
    DetectedObject,
    Event,
    FrameResult,
    Mask,
    Segment,
    SegmentResponse,
    Stage,
    TrackActions,
    TrackSummary,
)

FRAME = pb.FrameResult.FRAME
ACTIONS = pb.FrameResult.ACTIONS
SUMMARY = pb.FrameResult.SUMMARY


# --- masks, labels, stages -----------------------------------------------------------------------
def mask_to_proto(mask: Mask) -> pb.Mask:
    height, width = mask.size
    return pb.Mask(size=[height, width], height=height, width=width, counts=mask.counts)


def mask_from_proto(message: pb.Mask) -> Mask:
    """`size` when set, else the deprecated `height` and `width` (older senders)."""
    if len(message.size) not in (0, 2):
        raise ValueError(f"mask size {list(message.size)} is not [height, width]")
    size = tuple(message.size) if message.size else (message.height, message.width)
    return Mask(size=size, counts=message.counts)


def _label_to_proto(label: ActionLabel) -> pb.ActionLabel:
    return pb.ActionLabel(label=label.label, score=label.score, key_frame=label.key_frame)


def _label_from_proto(message: pb.ActionLabel) -> ActionLabel:
    key_frame = message.key_frame if message.HasField("key_frame") else None
    return ActionLabel(label=message.label, score=message.score, key_frame=key_frame)


def stages_to_proto(stages: Iterable[Stage]) -> list[pb.Stage]:
    return [pb.Stage(name=s.name, version=s.version) for s in stages]


def stages_from_proto(messages: Iterable[pb.Stage]) -> list[Stage]:
    return [Stage(name=s.name, version=s.version) for s in messages]


def _track_actions_to_proto(track: TrackActions) -> pb.TrackActions:
    return pb.TrackActions(
        track_id=track.track_id, actions=[_label_to_proto(a) for a in track.actions]
    )


def _track_actions_from_proto(message: pb.TrackActions) -> TrackActions:
    return TrackActions(
        track_id=message.track_id, actions=[_label_from_proto(a) for a in message.actions]
    )


# --- objects and segments ------------------------------------------------------------------------
def _object_to_proto(obj: DetectedObject) -> pb.DetectedObject:
    return pb.DetectedObject(
        track_id=obj.track_id,
        category=obj.category,
        score=obj.score,
        box=list(obj.box),
        mask=mask_to_proto(obj.mask),
        actions=[_label_to_proto(a) for a in obj.actions],
    )


def _object_from_proto(message: pb.DetectedObject) -> DetectedObject:
    return DetectedObject(
        track_id=message.track_id if message.HasField("track_id") else None,
        category=message.category,
        score=message.score,
        box=tuple(message.box),
        mask=mask_from_proto(message.mask),
        actions=[_label_from_proto(a) for a in message.actions],
    )


def _segment_to_proto(segment: Segment) -> pb.Segment:
    return pb.Segment(
        id=segment.id,
        category=segment.category,
        isthing=segment.isthing,
        score=segment.score,
        area=segment.area,
        mask=mask_to_proto(segment.mask),
        track_id=segment.track_id,
    )


def _segment_from_proto(message: pb.Segment) -> Segment:
    return Segment(
        id=message.id,
        category=message.category,
        isthing=message.isthing,
        score=message.score,
        area=message.area,
        mask=mask_from_proto(message.mask),
        track_id=message.track_id if message.HasField("track_id") else None,
    )


# --- events --------------------------------------------------------------------------------------
def event_to_proto(event: Event) -> pb.FrameResult:
    """A FrameResult as a FRAME event, an ActionsResult as an ACTIONS event."""
    if isinstance(event, ActionsResult):
        return pb.FrameResult(
            kind=ACTIONS,
            frame_index=event.key_frame,
            time=event.time,
            model=event.model,
            model_version=event.model_version,
            stages=stages_to_proto(event.stages),
            track_actions=[_track_actions_to_proto(t) for t in event.tracks],
        )
    return pb.FrameResult(
        kind=FRAME,
        frame_index=event.frame_index,
        time=event.time,
        model=event.model,
        model_version=event.model_version,
        stages=stages_to_proto(event.stages),
        objects=[_object_to_proto(o) for o in event.objects],
        segments=[_segment_to_proto(s) for s in event.segments],
    )


def summary_to_proto(
    tracks: Iterable[TrackSummary], *, model: str = "", model_version: str = ""
) -> pb.FrameResult:
    """The SUMMARY event that ends a stream whose SessionConfig has `summary` set."""
    return pb.FrameResult(
        kind=SUMMARY,
        model=model,
        model_version=model_version,
        tracks=[_summary_to_proto(t) for t in tracks],
    )


def event_from_proto(message: pb.FrameResult) -> Event | list[TrackSummary]:
    """The inverse of event_to_proto and summary_to_proto: a FrameResult, an ActionsResult, or
    the track summaries of a SUMMARY event."""
    if message.kind == SUMMARY:
        return [_summary_from_proto(t) for t in message.tracks]
    if message.kind == ACTIONS:
        return ActionsResult(
            key_frame=message.frame_index,
            time=message.time,
            tracks=[_track_actions_from_proto(t) for t in message.track_actions],
            model=message.model,
            model_version=message.model_version,
            stages=stages_from_proto(message.stages),
        )
    return frame_from_proto(message)


def frame_from_proto(message: pb.FrameResult) -> FrameResult:
    """A FRAME event's FrameResult (ValueError for another kind)."""
    if message.kind != FRAME:
        kind = pb.FrameResult.EventKind.Name(message.kind)
        raise ValueError(f"a {kind} event is not a frame (use event_from_proto)")
    return FrameResult(
        frame_index=message.frame_index,
        time=message.time,
        model=message.model,
        model_version=message.model_version,
        stages=stages_from_proto(message.stages),
        objects=[_object_from_proto(o) for o in message.objects],
        segments=[_segment_from_proto(s) for s in message.segments],
    )


def _summary_to_proto(track: TrackSummary) -> pb.TrackSummary:
    return pb.TrackSummary(**track.model_dump())


def _summary_from_proto(message: pb.TrackSummary) -> TrackSummary:
    return TrackSummary(
        track_id=message.track_id,
        category=message.category,
        score=message.score,
        first_frame=message.first_frame,
        last_frame=message.last_frame,
        num_frames=message.num_frames,
    )


# --- a whole video -------------------------------------------------------------------------------
def response_to_proto(response: SegmentResponse) -> pb.SegmentResponse:
    return pb.SegmentResponse(
        model=response.model,
        model_version=response.model_version,
        width=response.width,
        height=response.height,
        fps=response.fps,
        frames=[event_to_proto(f) for f in response.frames],
        tracks=[_summary_to_proto(t) for t in response.tracks],
        stages=stages_to_proto(response.stages),
        actions=[event_to_proto(a) for a in response.actions],
    )


def response_from_proto(message: pb.SegmentResponse) -> SegmentResponse:
    return SegmentResponse(
        model=message.model,
        model_version=message.model_version,
        width=message.width,
        height=message.height,
        fps=message.fps,
        frames=[frame_from_proto(f) for f in message.frames],
        tracks=[_summary_from_proto(t) for t in message.tracks],
        stages=stages_from_proto(message.stages),
        actions=[event_from_proto(a) for a in message.actions],
    )
