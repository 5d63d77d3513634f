"""Video object segmentation over the API, against a real server with the shipped STCN: prompts
as PNG and as RLE over REST, DAVIS PNGs, every bad prompt, prompts on later frames over gRPC, and
the local command giving what REST gives."""

import io
import json
import struct
import zipfile
import zlib

import grpc
import httpx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from models.data.davis import read_palette_png, write_palette_png
from models.data.rle import decode_rle, encode_mask
from models.data.synthetic.export import generate_video
from models.data.video import read_video
from service.cli import app
from service.gateway.grpc_convert import frame_from_proto as from_proto
from service.gateway.grpc_gen import vidserve_pb2 as pb
from service.gateway.grpc_gen import vidserve_pb2_grpc as pb_grpc
from tests.service.conftest import VIDEO_WORLD
from tests.service.test_grpc import png
from tests.service.test_rest import assert_same_frames

STCN = {"model": "stcn"}
LATER = 4  # the frame a second object is prompted on


@pytest.fixture(scope="module")
def truth():
    """Object ids (H, W) of every frame of the `video_file` fixture's video."""
    return generate_video(VIDEO_WORLD, 4242, 0).object_map.astype(np.uint8)


@pytest.fixture(scope="module")
def prompt_png(truth, tmp_path_factory) -> bytes:
    """The DAVIS prompt of frame 0: a palette PNG of the objects in view."""
    path = tmp_path_factory.mktemp("prompt") / "00000.png"
    write_palette_png(path, truth[0])
    return path.read_bytes()


def first_ids(truth) -> list[int]:
    return [int(i) for i in np.unique(truth[0]) if i]


def segment(server, video_file, data=None, prompt: bytes | None = None, headers=None):
    files = {"video": ("v.mp4", video_file.read_bytes())}
    if prompt is not None:
        files["prompt"] = ("mask.png", prompt, "image/png")
    return httpx.post(
        f"{server.url}/v1/segment",
        files=files,
        data={**STCN, **(data or {})},
        headers=headers or {},
        timeout=120,
    )


def masks_of(frame: dict) -> dict[int, np.ndarray]:
    return {o["track_id"]: decode_rle(o["mask"]).astype(bool) for o in frame["objects"]}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / max(1, (a | b).sum())


def test_png_prompt_gives_each_object_on_every_frame(server, video_file, prompt_png, truth):
    response = segment(server, video_file, prompt=prompt_png)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "stcn" and len(body["frames"]) == VIDEO_WORLD.frames
    first = masks_of(body["frames"][0])
    assert sorted(first) == first_ids(truth)
    for object_id, mask in first.items():  # the prompt comes back as given
        np.testing.assert_array_equal(mask, truth[0] == object_id)
    ious = [
        iou(mask, truth[t] == object_id)
        for t, frame in enumerate(body["frames"][1:], start=1)
        for object_id, mask in masks_of(frame).items()
    ]
    assert np.mean(ious) > 0.7, ious
    assert all(o["category"] == "object" for f in body["frames"] for o in f["objects"])
    assert [t["track_id"] for t in body["tracks"]] == first_ids(truth)


def test_rle_prompt_on_a_later_frame(server, video_file, truth):
    object_id = first_ids(truth)[0]
    rle = {str(object_id): encode_mask(truth[LATER] == object_id)}
    response = segment(server, video_file, {"prompt_rle": json.dumps(rle), "prompt_frame": LATER})
    assert response.status_code == 200, response.text
    frames = response.json()["frames"]
    assert all(f["objects"] == [] for f in frames[:LATER])
    np.testing.assert_array_equal(masks_of(frames[LATER])[object_id], truth[LATER] == object_id)
    assert all(object_id in masks_of(f) for f in frames[LATER + 1 :])


def test_davis_zip_holds_one_palette_png_per_frame(server, video_file, prompt_png):
    as_json = segment(server, video_file, prompt=prompt_png).json()
    response = segment(server, video_file, prompt=prompt_png, headers={"Accept": "application/zip"})
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        names = archive.namelist()
        assert names == [f"{t:05d}.png" for t in range(VIDEO_WORLD.frames)]
        for name, frame in zip(names, as_json["frames"], strict=True):
            ids = read_palette_png(io.BytesIO(archive.read(name)))
            for object_id, mask in masks_of(frame).items():
                np.testing.assert_array_equal(ids == object_id, mask)


def png_bytes(ids: np.ndarray, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(ids.astype(np.uint8)).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "case, status, words",
    [
        ("wrong_size", 422, "the video is 320x240"),
        ("empty_mask", 422, "empty"),
        ("empty_rle", 422, "empty"),
        ("id_not_a_number", 400, "not a number"),
        ("frame_beyond_video", 422, "does not exist"),
        ("frame_beyond_max_frames", 422, "beyond the 3 frames"),
        ("model_takes_none", 400, "takes no prompt"),
        ("no_prompt", 400, "needs a prompt"),
        ("png_and_rle", 400, "not both"),
        ("rgb_png", 400, "mode rgb"),
        ("not_json", 400, "not json"),
        ("option_not_taken", 400, "unknown option"),
        ("zip_of_masktrack", 406, "vos models"),
        ("rle_claiming_a_huge_mask", 422, "100000x100000, over 400x300"),
        ("png_claiming_a_huge_image", 422, "30000x30000, over 400x300"),
    ],
)
def test_bad_prompts_get_clear_problems(server, video_file, prompt_png, truth, case, status, words):
    mask = encode_mask(truth[0] == first_ids(truth)[0])
    cases = {
        "wrong_size": ({}, png_bytes(truth[0][:120, :160]), {}),
        "empty_mask": ({}, png_bytes(np.zeros((240, 320))), {}),
        "empty_rle": (
            {"prompt_rle": json.dumps({"1": encode_mask(np.zeros((240, 320)))})},
            None,
            {},
        ),
        "id_not_a_number": ({"prompt_rle": json.dumps({"car": mask})}, None, {}),
        "frame_beyond_video": ({"prompt_frame": "50"}, prompt_png, {}),
        "frame_beyond_max_frames": ({"prompt_frame": "5", "max_frames": "3"}, prompt_png, {}),
        "model_takes_none": ({"model": "masktrack"}, prompt_png, {}),
        "no_prompt": ({}, None, {}),
        "png_and_rle": ({"prompt_rle": json.dumps({"1": mask})}, prompt_png, {}),
        "rgb_png": ({}, png_bytes(truth[0], "RGB"), {}),
        "not_json": ({"prompt_rle": "{1: nope"}, None, {}),
        "option_not_taken": ({"score_threshold": "0.5"}, prompt_png, {}),
        "zip_of_masktrack": ({"model": "masktrack"}, None, {"Accept": "application/zip"}),
        # A few bytes that claim a huge size are refused before anything is allocated.
        "rle_claiming_a_huge_mask": (
            {"prompt_rle": json.dumps({"1": {"size": [100000, 100000], "counts": "0"}})},
            None,
            {},
        ),
        "png_claiming_a_huge_image": ({}, png_claiming(30000, 30000), {}),
    }
    data, prompt, headers = cases[case]
    response = segment(server, video_file, data, prompt, headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert words in response.json()["detail"].lower()


def png_claiming(width: int, height: int) -> bytes:
    """A real 1x1 grayscale PNG whose header (IHDR, CRC fixed) claims another size."""
    data = bytearray(png_bytes(np.ones((1, 1))))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def prompts_of(masks: dict[int, np.ndarray]) -> list:
    prompts = []
    for object_id, mask in masks.items():
        rle = encode_mask(mask)
        prompts.append(
            pb.ObjectPrompt(
                object_id=object_id,
                mask=pb.Mask(height=rle["size"][0], width=rle["size"][1], counts=rle["counts"]),
            )
        )
    return prompts


def stream(server, frames, prompts: dict[int, dict], model="stcn") -> list[dict]:
    def requests():
        yield pb.StreamRequest(config=pb.SessionConfig(model=model))
        for t, frame in enumerate(frames):
            image = pb.ImageFrame(image=png(frame), frame_index=t, prompts=prompts.get(t, []))
            yield pb.StreamRequest(frame=image)

    with grpc.insecure_channel(server.grpc_target) as channel:
        replies = pb_grpc.VideoSegmentationStub(channel).StreamFrames(requests(), timeout=60)
        return [from_proto(r).model_dump(mode="json") for r in replies]


def test_grpc_stream_takes_a_second_object_on_a_later_frame(server, video_file, truth):
    frames, _ = read_video(video_file)
    first, second = first_ids(truth)[:2]
    results = stream(
        server,
        frames,
        {
            0: prompts_of({first: truth[0] == first}),
            LATER: prompts_of({second: truth[LATER] == second}),
        },
    )
    assert [r["frame_index"] for r in results] == list(range(VIDEO_WORLD.frames))
    assert all(sorted(masks_of(r)) == [first] for r in results[:LATER])
    assert sorted(masks_of(results[LATER])) == [first, second]
    np.testing.assert_array_equal(masks_of(results[LATER])[second], truth[LATER] == second)
    assert all(second in masks_of(r) for r in results[LATER + 1 :])


@pytest.mark.parametrize(
    "case, words",
    [
        ("empty_mask", "frame 1: the mask of object(s) [3] is empty"),
        ("wrong_size", "the video is 320x240"),
        ("id_zero", "outside 1..255"),
        ("model_takes_none", "takes no prompt"),
        ("rle_claiming_a_huge_mask", "100000x100000, over 320x240"),
    ],
)
def test_bad_grpc_prompts_are_invalid_arguments(server, video_file, truth, case, words):
    frames, _ = read_video(video_file, max_frames=3)
    cases = {
        "empty_mask": ({1: prompts_of({3: np.zeros((240, 320), bool)})}, "stcn"),
        "wrong_size": ({0: prompts_of({1: np.ones((120, 160), bool)})}, "stcn"),
        "id_zero": ({0: prompts_of({0: truth[0] > 0})}, "stcn"),
        "model_takes_none": ({0: prompts_of({1: truth[0] > 0})}, "masktrack"),
        "rle_claiming_a_huge_mask": (
            {0: [pb.ObjectPrompt(object_id=1, mask=pb.Mask(size=[100000, 100000], counts="0"))]},
            "stcn",
        ),
    }
    prompts, model = cases[case]
    with pytest.raises(grpc.RpcError) as raised:
        stream(server, frames, prompts, model)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in raised.value.details()


def test_local_command_gives_the_rest_masks(server, video_file, prompt_png, tmp_path):
    rest = segment(server, video_file, prompt=prompt_png, headers={"Accept": "application/zip"})
    prompt = tmp_path / "prompt.png"
    prompt.write_bytes(prompt_png)
    davis = tmp_path / "davis"
    result = CliRunner().invoke(
        app,
        ["segment", str(video_file), "--model", "stcn", "--prompt", str(prompt)]
        + ["--davis-out", str(davis), "--out", str(tmp_path / "local.json")],
    )
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in davis.iterdir())
    assert written == [f"{t:05d}.png" for t in range(VIDEO_WORLD.frames)]
    with zipfile.ZipFile(io.BytesIO(rest.content)) as archive:
        for name in written:
            served = read_palette_png(io.BytesIO(archive.read(name)))
            np.testing.assert_array_equal(read_palette_png(davis / name), served)
    local = json.loads((tmp_path / "local.json").read_text())["frames"]
    assert_same_frames(local, segment(server, video_file, prompt=prompt_png).json()["frames"])


def test_segment_video_refuses_a_model_that_needs_a_prompt(server, video_file):
    def chunks():
        yield pb.VideoChunk(config=pb.VideoConfig(session=pb.SessionConfig(model="stcn")))
        yield pb.VideoChunk(data=video_file.read_bytes())

    with grpc.insecure_channel(server.grpc_target) as channel, pytest.raises(grpc.RpcError) as e:
        pb_grpc.VideoSegmentationStub(channel).SegmentVideo(chunks())
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "StreamFrames" in e.value.details()
