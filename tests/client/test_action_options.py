"""The client's options for action models (slowfast-acrn) and timed stream frames.

First without a server: the form fields of segment()/submit(), the SessionConfig and ImageFrames
of stream(), and ModelInfo.actions. Then against the shared `vidserve serve` (tests/conftest.py),
which serves no action model: an action option sent to masktrack must reach the service, which
refuses it (400 / INVALID_ARGUMENT), and a stream's frame times must come back as sent."""

import asyncio

import numpy as np
import pytest
from vidserve_client import AsyncClient, BadInput, Client, ModelInfo
from vidserve_client._base import Options, StreamState, categories_text, session_config
from vidserve_client._proto import vidserve_pb2 as pb

from models.data.video import read_video
from tests.service.test_grpc import png

ACTION_FIELDS = ("action_stride", "action_categories", "action_min_score")


# --- REST form fields ----------------------------------------------------------------------------
def test_action_options_are_form_fields_only_when_given():
    # An existing caller's form is unchanged: no action field at all.
    plain = Options("masktrack", score_threshold=0.5).form()
    assert plain == {"model": "masktrack", "score_threshold": "0.5"}
    form = Options(
        "slowfast-acrn", action_stride=0.5, action_categories="person", action_min_score=0.2
    ).form()
    assert form == {
        "model": "slowfast-acrn",
        "action_stride": "0.5",
        "action_categories": "person",
        "action_min_score": "0.2",
    }
    # Zero is a value (every label), not "left out".
    assert Options(action_min_score=0.0).form() == {"action_min_score": "0.0"}


def test_a_list_of_categories_is_sent_comma_separated():
    assert Options(action_categories=["person", "dog"]).form() == {
        "action_categories": "person,dog"
    }
    assert Options(action_categories=("star",)).form() == {"action_categories": "star"}
    assert categories_text("person,dog") == "person,dog"  # a str goes as it is


@pytest.mark.parametrize(
    "categories, message",
    [
        ([], "leave it out"),
        (["person", ""], "not a category name"),
        (["person,dog"], "without commas"),
        (["person", 3], "not a category name"),
    ],
)
def test_a_list_of_categories_that_cannot_be_sent_is_refused(categories, message):
    with pytest.raises(ValueError, match=message):
        Options(action_categories=categories).form()


# --- gRPC SessionConfig and ImageFrame -----------------------------------------------------------
def test_session_config_leaves_the_options_not_given_unset():
    config = session_config("masktrack", None, False).config
    assert config.model == "masktrack" and config.action_categories == ""
    for name in ("score_threshold", "fps", "action_stride", "action_min_score"):
        assert not config.HasField(name), name


def test_session_config_carries_fps_and_the_action_options():
    config = session_config(
        "slowfast-acrn",
        0.4,
        True,
        fps=30.0,
        action_stride=0.5,
        action_categories=["person", "dog"],
        action_min_score=0.25,
    ).config
    assert (config.model, config.summary, config.action_categories) == (
        "slowfast-acrn",
        True,
        "person,dog",
    )
    # The proto's floats are 32-bit: 0.4 comes back as its nearest float32.
    assert config.score_threshold == pytest.approx(0.4)
    assert (config.fps, config.action_stride, config.action_min_score) == (30.0, 0.5, 0.25)
    assert config.HasField("action_min_score")


def test_frames_with_and_without_a_time():
    """An item is a frame, or a (frame, seconds) pair; a frame alone has no time (the service
    counts index / fps)."""
    state = StreamState(prompts={})
    plain = state.request(b"jpeg bytes", 0).frame
    assert (plain.image, plain.frame_index, plain.HasField("time")) == (b"jpeg bytes", 0, False)
    timed = state.request((b"jpeg bytes", 1.25), 1).frame
    assert (timed.image, timed.frame_index, timed.time) == (b"jpeg bytes", 1, 1.25)
    assert state.request((b"x", 2), 2).frame.time == 2.0  # an int is seconds too
    image = np.zeros((4, 6, 3), np.uint8)
    array = state.request((image, 3.5), 3).frame
    assert array.image.startswith(b"\x89PNG") and array.time == 3.5


def test_a_timed_frame_keeps_its_prompts():
    state = StreamState(prompts={0: [pb.ObjectPrompt(object_id=1)]})
    frame = state.request((b"x", 0.0), 0).frame
    assert [p.object_id for p in frame.prompts] == [1] and frame.HasField("time")
    state.check_prompts_sent()  # frame 0's prompt counts as sent


@pytest.mark.parametrize(
    "item, error, message",
    [
        ((b"x", float("nan")), ValueError, "finite"),
        ((b"x", float("inf")), ValueError, "finite"),
        ((b"x", "1.0"), ValueError, "seconds"),
        ((b"x", True), ValueError, "seconds"),
        ((b"x", 1.0, 2), TypeError, r"\(frame, time\)"),
        (("frame.png", 1.0), TypeError, "encoded image"),
    ],
)
def test_a_timed_frame_that_is_not_one_is_refused(item, error, message):
    with pytest.raises(error, match=message):
        StreamState(prompts={}).request(item, 0)


# --- models --------------------------------------------------------------------------------------
def test_model_info_carries_the_action_labels():
    answer = {
        "name": "slowfast-acrn",
        "task": "action",
        "version": "v1",
        "classes": ["person"],
        "takes_prompt": False,
        "stages": [{"name": "masktrack", "version": "v0"}],
        "actions": ["stand", "walk"],
    }
    assert ModelInfo.from_dict(answer).actions == ["stand", "walk"]
    older = {key: value for key, value in answer.items() if key != "actions"}
    assert ModelInfo.from_dict(older).actions == []  # a service from before actions
    message = pb.ModelInfo(name="slowfast-acrn", task="action", actions=["stand", "walk"])
    assert ModelInfo.from_proto(message).actions == ["stand", "walk"]


# --- against the shared server (no action model there) -------------------------------------------
@pytest.fixture(scope="module")
def client(server):
    with Client(server.url, grpc_target=server.grpc_target) as client:
        yield client


@pytest.fixture(scope="module")
def frames(video_file) -> np.ndarray:
    return read_video(video_file)[0]


def test_models_without_an_action_head_list_no_actions(client):
    models = {m.name: m for m in client.models()}
    assert models["masktrack"].actions == [] and models["stcn"].actions == []
    assert all(m.actions for m in models.values() if m.task == "action")


def test_an_action_option_reaches_the_service(client, video_file, frames):
    """masktrack has no action stage: the service refuses each option, so each was sent."""
    with pytest.raises(BadInput) as rest:
        client.segment(video_file, "masktrack", action_stride=0.5)
    assert rest.value.status == 400 and "action_stride" in rest.value.detail
    with pytest.raises(BadInput) as grpc_error:
        list(client.stream([frames[0]], "masktrack", action_categories=["star"]))
    assert grpc_error.value.grpc_code == "INVALID_ARGUMENT"
    assert "action_categories" in grpc_error.value.detail


def test_the_async_client_sends_the_action_options_and_times_too(server, video_file, frames):
    async def segment():
        async with AsyncClient(server.url, grpc_target=server.grpc_target) as client:
            await client.segment(video_file, "masktrack", action_min_score=0.5)

    async def stream():
        # arrays with times: PNG-encoded off the event loop, their times kept
        timed = [(frame, 2.0 + index) for index, frame in enumerate(frames[:2])]
        async with AsyncClient(server.url, grpc_target=server.grpc_target) as client:
            return [r.time async for r in client.stream(timed, "masktrack")]

    with pytest.raises(BadInput, match="action_min_score"):
        asyncio.run(segment())
    assert asyncio.run(stream()) == [2.0, 3.0]


def test_stream_frames_keep_the_times_sent(client, frames):
    timed = [(png(frame), 10.0 + index / 4) for index, frame in enumerate(frames[:3])]
    results = list(client.stream(timed, "masktrack"))
    assert [r.time for r in results] == [10.0, 10.25, 10.5]
    # Without times, fps sets the clock: index / fps.
    results = list(client.stream(list(frames[:3]), "masktrack", fps=4.0))
    assert [r.time for r in results] == [0.0, 0.25, 0.5]
