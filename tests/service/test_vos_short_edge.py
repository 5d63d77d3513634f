"""A VOS session's working size (`short_edge`): smaller than the checkpoint's for speed, never
larger; taken over REST, gRPC, the Python client and `vidserve segment`, refused clearly where it
does not fit."""

import json

import grpc
import numpy as np
import pytest
from typer.testing import CliRunner
from vidserve_client import Client

from models.data.video import read_video
from service.cli import app
from service.gateway.grpc_gen import vidserve_pb2 as pb
from service.gateway.grpc_gen import vidserve_pb2_grpc as pb_grpc
from service.settings import SHIPPED_CHECKPOINTS
from service.worker.runner import OptionError
from service.worker.runners import load_runner_from_store
from tests.service.test_grpc import png
from tests.service.test_rest import assert_same_frames
from tests.service.test_vos_api import (  # noqa: F401 - fixtures
    iou,
    masks_of,
    prompt_png,
    prompts_of,
    segment,
    truth,
)

SMALL = 120  # the short side asked for: a quarter of the shipped 360's positions
FEW = {"max_frames": "8"}  # enough frames to follow the objects, few enough to be quick


@pytest.fixture(scope="module")
def runner():
    return load_runner_from_store(SHIPPED_CHECKPOINTS, "stcn", "cpu")


def test_a_session_works_at_the_short_edge_it_asks_for(runner):
    frame = np.zeros((240, 320, 3), np.uint8)
    shipped = runner.model.config.short_edge
    assert runner.open_session({}).prepare(frame).working_size == (shipped, shipped * 4 // 3)
    small = runner.open_session({"short_edge": SMALL})
    assert small.prepare(frame).working_size == (SMALL, SMALL * 4 // 3)
    assert runner.open_session({"short_edge": str(SMALL)}).short_edge == SMALL  # a form's text


@pytest.mark.parametrize(
    "value, words",
    [
        (10_000, "short_edge=10000 is outside [64, {shipped}]"),  # costlier than the checkpoint
        (63, "short_edge=63 is outside [64, {shipped}]"),
        ("big", "option short_edge='big' is not a int"),
    ],
)
def test_a_short_edge_out_of_range_is_refused(runner, value, words):
    with pytest.raises(OptionError) as refused:
        runner.open_session({"short_edge": value})
    assert words.format(shipped=runner.model.config.short_edge) in str(refused.value)


def test_another_option_is_refused_naming_the_one_it_takes(runner):
    with pytest.raises(OptionError) as refused:
        runner.open_session({"score_threshold": 0.5})
    assert "unknown option(s) score_threshold; this model takes short_edge" in str(refused.value)


def test_rest_segments_at_a_smaller_short_edge(server, video_file, prompt_png, truth):  # noqa: F811
    default = segment(server, video_file, FEW, prompt=prompt_png)
    small = segment(server, video_file, {**FEW, "short_edge": str(SMALL)}, prompt=prompt_png)
    assert small.status_code == 200, small.text
    frames = small.json()["frames"]
    assert len(frames) == len(default.json()["frames"])
    ious = [
        iou(mask, truth[t] == object_id)
        for t, frame in enumerate(frames[1:], start=1)
        for object_id, mask in masks_of(frame).items()
    ]
    assert np.mean(ious) > 0.6, ious  # still the objects, at the video's own size
    assert all(mask.shape == (240, 320) for f in frames for mask in masks_of(f).values())
    differing = [
        object_id
        for a, b in zip(frames[1:], default.json()["frames"][1:], strict=True)
        for object_id, mask in masks_of(a).items()
        if object_id in masks_of(b) and not np.array_equal(mask, masks_of(b)[object_id])
    ]
    assert differing, "coarser masks at a quarter of the positions: the option took effect"
    # The client and the local command send it the same way, and get the same masks.
    with Client(server.url) as client:
        prompt = {i: truth[0] == i for i in np.unique(truth[0]) if i}
        result = client.segment(video_file, "stcn", prompt=prompt, short_edge=SMALL, max_frames=8)
    assert_same_frames([f.to_dict() for f in result.frames], frames)


@pytest.mark.parametrize(
    "data, words",
    [
        ({"short_edge": "10000"}, "short_edge=10000 is outside [64, "),
        ({"short_edge": "0"}, "short_edge=0 is outside [64, "),
        ({"short_edge": "wide"}, "short_edge"),
        ({"model": "masktrack", "short_edge": "120"}, "unknown option(s) short_edge"),
    ],
)
def test_rest_refuses_a_bad_short_edge(server, video_file, prompt_png, data, words):  # noqa: F811
    response = segment(server, video_file, data, prompt=None if "model" in data else prompt_png)
    assert response.status_code == 400, response.text
    assert words in response.json()["detail"]


def stream_config(server, frames, config: pb.SessionConfig, prompts) -> list:
    def requests():
        yield pb.StreamRequest(config=config)
        for t, frame in enumerate(frames):
            yield pb.StreamRequest(
                frame=pb.ImageFrame(image=png(frame), frame_index=t, prompts=prompts.get(t, []))
            )

    with grpc.insecure_channel(server.grpc_target) as channel:
        return list(pb_grpc.VideoSegmentationStub(channel).StreamFrames(requests(), timeout=60))


def test_grpc_takes_a_short_edge_and_refuses_a_bad_one(server, video_file, truth):  # noqa: F811
    frames, _ = read_video(video_file, max_frames=4)
    first = int(truth[0].max())
    prompts = {0: prompts_of({first: truth[0] == first})}
    replies = stream_config(
        server, frames, pb.SessionConfig(model="stcn", short_edge=SMALL), prompts
    )
    assert [r.frame_index for r in replies] == [0, 1, 2, 3]
    assert all(any(o.track_id == first for o in r.objects) for r in replies)
    with pytest.raises(grpc.RpcError) as refused:
        stream_config(server, frames, pb.SessionConfig(model="stcn", short_edge=8), prompts)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "short_edge=8 is outside [64, " in refused.value.details()


def test_the_local_command_takes_a_short_edge(server, video_file, prompt_png, tmp_path):  # noqa: F811
    prompt = tmp_path / "prompt.png"
    prompt.write_bytes(prompt_png)
    out = tmp_path / "local.json"
    command = ["segment", str(video_file), "--model", "stcn", "--prompt", str(prompt)]
    command += ["--max-frames", FEW["max_frames"]]
    result = CliRunner().invoke(app, command + ["--short-edge", str(SMALL), "--out", str(out)])
    assert result.exit_code == 0, result.output
    served = segment(server, video_file, {**FEW, "short_edge": str(SMALL)}, prompt=prompt_png)
    assert_same_frames(json.loads(out.read_text())["frames"], served.json()["frames"])
    refused = CliRunner().invoke(app, command + ["--short-edge", "9999", "--out", str(out)])
    assert refused.exit_code != 0 and "short_edge=9999 is outside" in refused.output
