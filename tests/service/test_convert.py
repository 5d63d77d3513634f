"""Typed results <-> gRPC messages (service.gateway.grpc_convert), and the one response builder
(service.schemas.build_response): events in, REST's answer out; gRPC carries the same."""

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

from models.data.rle import encode_mask
from service.gateway.grpc_convert import (
    event_from_proto,
    event_to_proto,
    frame_from_proto,
    mask_from_proto,
    mask_to_proto,
    response_from_proto,
    response_to_proto,
    summary_to_proto,
)
from service.gateway.grpc_gen import vidserve_pb2 as pb
from service.schemas import (
    ActionLabel,
    ActionsResult,
    DetectedObject,
    FrameResult,
    Mask,
    Segment,
    Stage,
    TrackActions,
    TrackSummary,
    build_response,
    summarize_tracks,
)

H, W = 24, 32
STAGES = [Stage(name="masktrack", version="v1"), Stage(name="slowfast", version="v2")]


def rect(y1, y2, x1, x2) -> Mask:
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[y1:y2, x1:x2] = 1
    return Mask(**encode_mask(mask))


def obj(track_id, category="person", score=0.75, actions=()) -> DetectedObject:
    # Scores and boxes are exact in float32, as the proto carries them.
    return DetectedObject(
        track_id=track_id,
        category=category,
        score=score,
        box=(2.0, 3.0, 10.5, 12.0),
        mask=rect(3, 12, 2, 10),
        actions=list(actions),
    )


def frame(index, objects=(), segments=()) -> FrameResult:
    return FrameResult(
        frame_index=index,
        time=index / 8,
        objects=list(objects),
        segments=list(segments),
        model="masktrack",
        model_version="v1",
        stages=STAGES,
    )


SEGMENTS = [
    Segment(
        id=1,
        category="person",
        isthing=True,
        score=0.875,
        area=72,
        mask=rect(3, 12, 2, 10),
        track_id=4,
    ),
    Segment(id=2, category="sky", isthing=False, score=0.5, area=96, mask=rect(0, 3, 0, 32)),
]
ACTIONS = ActionsResult(
    key_frame=2,
    time=0.25,
    tracks=[
        TrackActions(
            track_id=1,
            actions=[ActionLabel(label="walk", score=0.75), ActionLabel(label="talk", score=0.25)],
        ),
        TrackActions(track_id=9, actions=[ActionLabel(label="run", score=0.5, key_frame=2)]),
    ],
    model="masktrack",
    model_version="v1",
    stages=STAGES,
)


@pytest.mark.parametrize(
    "event",
    [
        frame(0, [obj(1), obj(None, "car", 0.5)]),
        frame(1, [obj(1, actions=[ActionLabel(label="walk", score=0.5, key_frame=1)])]),
        frame(3, segments=SEGMENTS),
        frame(4),
        ACTIONS,
    ],
    ids=["objects", "actions-on-objects", "segments", "empty", "actions-event"],
)
def test_event_round_trips_through_its_message(event):
    message = event_to_proto(event)
    wire = pb.FrameResult.FromString(message.SerializeToString())
    assert event_from_proto(wire) == event


def test_event_kinds_and_the_key_frame_of_an_actions_event():
    assert event_to_proto(frame(0, [obj(1)])).kind == pb.FrameResult.FRAME
    message = event_to_proto(ACTIONS)
    assert message.kind == pb.FrameResult.ACTIONS
    assert message.frame_index == 2 and not message.objects
    assert [t.track_id for t in message.track_actions] == [1, 9]
    assert not message.track_actions[0].actions[0].HasField("key_frame")  # None stays None
    assert message.track_actions[1].actions[0].key_frame == 2
    with pytest.raises(ValueError, match="ACTIONS"):
        frame_from_proto(message)


def test_summary_event_round_trips():
    tracks = [
        TrackSummary(
            track_id=1, category="person", score=0.75, first_frame=0, last_frame=3, num_frames=4
        ),
        TrackSummary(
            track_id=5, category="car", score=0.5, first_frame=2, last_frame=2, num_frames=1
        ),
    ]
    message = summary_to_proto(tracks, model="masktrack", model_version="v1")
    assert message.kind == pb.FrameResult.SUMMARY and message.model == "masktrack"
    assert event_from_proto(pb.FrameResult.FromString(message.SerializeToString())) == tracks
    assert event_from_proto(summary_to_proto([])) == []


def test_a_mask_has_the_same_keys_in_rest_json_and_in_grpc_without_deprecated_fields():
    mask = rect(1, 5, 2, 9)
    rest = frame(0, [obj(1)], SEGMENTS).model_dump(mode="json")
    grpc = json_format.MessageToDict(
        event_to_proto(frame(0, [obj(1)], SEGMENTS)), preserving_proto_field_name=True
    )
    deprecated = {f.name for f in pb.Mask.DESCRIPTOR.fields if f.GetOptions().deprecated}
    assert deprecated == {"height", "width"}

    def without_deprecated(d):
        return {k: v for k, v in d.items() if k not in deprecated}

    for rest_mask, grpc_mask in [
        (rest["objects"][0]["mask"], grpc["objects"][0]["mask"]),
        (rest["segments"][0]["mask"], grpc["segments"][0]["mask"]),
    ]:
        assert without_deprecated(grpc_mask) == rest_mask
    message = json_format.MessageToDict(mask_to_proto(mask), preserving_proto_field_name=True)
    assert without_deprecated(message) == mask.model_dump(mode="json")
    assert set(without_deprecated(message)) == {"size", "counts"}


# The fields the previous proto had, per message: what an old client's generated code knows.
PREVIOUS_FIELDS = {
    "Mask": {"height", "width", "counts"},
    "ActionLabel": {"label", "score"},
    "DetectedObject": {"track_id", "category", "score", "box", "mask", "actions"},
    "FrameResult": {"frame_index", "time", "objects", "model", "model_version"},
}


def previous_frame_result_class():
    """FrameResult as a client generated from the previous proto has it (a pool of its own)."""
    file = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(file)
    for message in file.message_type:
        if message.name in PREVIOUS_FIELDS:
            kept = [f for f in message.field if f.name in PREVIOUS_FIELDS[message.name]]
            # proto3 `optional` fields have a oneof of their own: keep those of kept fields.
            oneofs = sorted({f.oneof_index for f in kept if f.HasField("oneof_index")})
            decls = [message.oneof_decl[i] for i in oneofs]
            for f in kept:
                if f.HasField("oneof_index"):
                    f.oneof_index = oneofs.index(f.oneof_index)
            del message.field[:], message.oneof_decl[:]
            message.field.extend(kept)
            message.oneof_decl.extend(decls)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("vidserve.v1.FrameResult"))


def test_old_clients_read_height_and_width_and_old_senders_are_read():
    event = frame(0, [obj(1, actions=[ActionLabel(label="walk", score=0.5, key_frame=0)])])
    data = event_to_proto(event).SerializeToString()
    old_view = previous_frame_result_class().FromString(data)
    assert {f.name for f in old_view.DESCRIPTOR.fields} == PREVIOUS_FIELDS["FrameResult"]
    mask = old_view.objects[0].mask
    assert (mask.height, mask.width, mask.counts) == (H, W, event.objects[0].mask.counts)
    assert (old_view.frame_index, old_view.model, old_view.objects[0].track_id) == (
        0,
        "masktrack",
        1,
    )
    assert (old_view.objects[0].actions[0].label, old_view.objects[0].actions[0].score) == (
        "walk",
        0.5,
    )
    # A sender of the previous proto fills only height / width: the reader falls back to them.
    old_mask = pb.Mask(height=H, width=W, counts=rect(0, 1, 0, 1).counts)
    assert mask_from_proto(old_mask) == rect(0, 1, 0, 1)
    with pytest.raises(ValueError, match="height, width"):
        mask_from_proto(pb.Mask(size=[H], counts="0"))


def test_build_response_sorts_frames_merges_actions_and_summarises():
    events = [
        frame(2, [obj(1), obj(2, "dog", 0.5)]),
        frame(0, [obj(1)]),
        ACTIONS,
        frame(1, [obj(1)], [SEGMENTS[0]]),
    ]
    response = build_response(events, width=W, height=H, fps=8.0)
    assert [f.frame_index for f in response.frames] == [0, 1, 2]
    assert (response.model, response.model_version, response.stages) == ("masktrack", "v1", STAGES)
    key = response.frames[2]
    assert [(a.label, a.key_frame) for a in key.objects[0].actions] == [
        ("walk", 2),
        ("talk", 2),
    ]
    assert key.objects[1].actions == []  # track 2 has no labels
    assert response.actions == [ACTIONS]  # track 9 is not on frame 2: kept here
    assert events[0].objects[0].actions == []  # the events themselves are unchanged
    # Tracks: objects and tracked segments (track 4 on frame 1) both count.
    assert [(t.track_id, t.num_frames, t.first_frame, t.last_frame) for t in response.tracks] == [
        (1, 3, 0, 2),
        (2, 1, 2, 2),
        (4, 1, 1, 1),
    ]
    assert response.tracks == summarize_tracks(response.frames)
    # Merging twice adds nothing.
    again = build_response([*response.frames, ACTIONS], width=W, height=H, fps=8.0)
    assert again.frames == response.frames


def test_build_response_model_and_empty_sessions():
    response = build_response([], width=W, height=H, fps=8.0, model="m", model_version="1")
    assert (response.frames, response.tracks, response.stages) == ([], [], [])
    with pytest.raises(ValueError, match="at least one event"):
        build_response([], width=W, height=H, fps=8.0)
    named = build_response([frame(0)], width=W, height=H, fps=8.0, model="other", stages=STAGES[:1])
    assert (named.model, named.model_version, named.stages) == ("other", "v1", STAGES[:1])


def test_track_summary_tie_break_is_summed_score_then_first_seen():
    def votes(*pairs):
        return summarize_tracks(
            frame(i, [obj(1, category, score)]) for i, (category, score) in enumerate(pairs)
        )[0]

    majority = votes(("cat", 0.5), ("dog", 0.25), ("dog", 0.25))
    assert majority.category == "dog"  # 2 votes beat 1, whatever the scores
    assert majority.score == pytest.approx(1 / 3)
    assert votes(("cat", 0.5), ("dog", 0.75), ("cat", 0.5), ("dog", 0.5)).category == "dog"
    assert votes(("dog", 0.5), ("cat", 0.5), ("cat", 0.5), ("dog", 0.5)).category == "dog"
    assert votes(("cat", 0.5), ("dog", 0.5), ("dog", 0.5), ("cat", 0.5)).category == "cat"


def test_response_round_trips_through_segment_response():
    response = build_response(
        [frame(0, [obj(1)]), frame(1, [obj(1)], SEGMENTS), ACTIONS, frame(2, [obj(1)])],
        width=W,
        height=H,
        fps=8.0,
    )
    message = response_to_proto(response)
    wire = pb.SegmentResponse.FromString(message.SerializeToString())
    assert [a.kind for a in wire.actions] == [pb.FrameResult.ACTIONS]
    assert response_from_proto(wire) == response
    # And what REST answers is what gRPC answers.
    assert response_from_proto(wire).model_dump(mode="json") == response.model_dump(mode="json")
