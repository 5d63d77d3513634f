"""Still images as uploads (POST /v1/segment, POST /v1/jobs) against the shared `vidserve serve`:
a JPEG or PNG answers one frame through the session code of a one-frame video, in every output
format, and every bad image gets its status from its header before anything is decoded."""

import io
import json
import struct
import zipfile
import zlib

import av
import cv2
import httpx
import numpy as np
import pytest
from PIL import Image

from models.data.davis import read_palette_png, write_palette_png
from models.data.rle import decode_rle
from models.data.synthetic.export import generate_video
from service.gateway.image_input import MIN_SIDE, probe_image
from service.gateway.video_input import InputError, VideoLimits, probe_video
from tests.service.conftest import VIDEO_WORLD
from tests.service.test_jobs import accepted, submit, wait_until
from tests.service.test_rest import LOW, assert_same_frames

LIMIT = "400x300"  # the shared server's VIDSERVE_MAX_WIDTH x VIDSERVE_MAX_HEIGHT


def post(server, content: bytes, data=None, headers=None, filename="upload.bin", prompt=None):
    files = {"video": (filename, content, "application/octet-stream")}
    if prompt is not None:
        files["prompt"] = ("mask.png", prompt, "image/png")
    return httpx.post(
        f"{server.url}/v1/segment",
        files=files,
        data=data or {},
        headers=headers or {},
        timeout=120,
    )


def encoded(image: np.ndarray | Image.Image, fmt: str, **options) -> bytes:
    picture = image if isinstance(image, Image.Image) else Image.fromarray(image)
    out = io.BytesIO()
    picture.save(out, fmt, **options)
    return out.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(width: int, height: int, size: int = 600) -> bytes:
    """A PNG signature and a valid IHDR claiming width x height, then garbage (no image data):
    decoding it would fail (422), so a different answer shows the header was read first."""
    head = b"\x89PNG\r\n\x1a\n" + png_chunk(
        b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    )
    return head + bytes(np.random.default_rng(1).integers(0, 256, size - len(head), np.uint8))


def jpeg_header_only(width: int, height: int, size: int = 600) -> bytes:
    """SOI and a baseline SOF0 claiming width x height, then garbage (no tables, no scan)."""
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x22\x00" * 3
    head = b"\xff\xd8" + sof
    return head + bytes(np.random.default_rng(2).integers(0, 256, size - len(head), np.uint8))


@pytest.fixture(scope="module")
def world():
    """The first frame of the `video_file` fixture's world (320x240 RGB) and its object ids."""
    video = generate_video(VIDEO_WORLD, 4242, 0)
    return video.frames[0], video.object_map[0].astype(np.uint8)


@pytest.fixture(scope="module")
def first_frame_png(video_file) -> bytes:
    """The video's frame 0 as the server decodes it, losslessly as a PNG."""
    with av.open(str(video_file)) as container:
        frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
    return encoded(frame, "PNG")


def palette_prompt(ids: np.ndarray, tmp_path) -> bytes:
    path = tmp_path / "00000.png"
    write_palette_png(path, ids)
    return path.read_bytes()


def one_frame(body: dict) -> dict:
    assert (body["width"], body["height"], body["fps"]) == (320, 240, 0.0)
    assert len(body["frames"]) == 1
    frame = body["frames"][0]
    assert (frame["frame_index"], frame["time"]) == (0, 0.0)
    return frame


# --- the good path ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fmt, filename", [("JPEG", "photo.jpg"), ("PNG", "frame.png"), ("PNG", "named-as.mp4")]
)
def test_an_image_answers_one_frame_with_masks(server, world, fmt, filename):
    image, _ = world
    options = {"quality": 95} if fmt == "JPEG" else {}
    data = {**LOW, "model": "masktrack-instance"}
    response = post(server, encoded(image, fmt, **options), data, filename=filename)
    assert response.status_code == 200, response.text
    frame = one_frame(response.json())
    assert all(obj["mask"]["size"] == [240, 320] for obj in frame["objects"])
    areas = [int(decode_rle(obj["mask"]).sum()) for obj in frame["objects"]]
    assert max(areas, default=0) > 0, "the model finds the synthetic objects in one image"


@pytest.mark.parametrize("model", ["masktrack", "masktrack-instance"])
def test_an_image_answers_what_the_video_answers_for_that_frame(
    server, video_file, first_frame_png, model
):
    """A tracked model and a per-frame one: the PNG of the video's frame 0 answers what the
    video's first frame answers (the same session code, one frame long)."""
    data = {**LOW, "model": model}
    as_image = post(server, first_frame_png, data)
    as_video = post(server, video_file.read_bytes(), {**data, "max_frames": "1"})
    assert as_image.status_code == as_video.status_code == 200, as_image.text
    frames = one_frame(as_image.json()), as_video.json()["frames"][0]
    assert frames[0]["objects"], "the synthetic objects are found"
    assert_same_frames([frames[0]], [frames[1]])
    assert all(track["num_frames"] == 1 for track in as_image.json()["tracks"])


def test_a_prompted_model_answers_the_image_with_its_prompt(server, world, tmp_path):
    image, ids = world
    prompt = palette_prompt(ids, tmp_path)
    response = post(server, encoded(image, "PNG"), {"model": "stcn"}, prompt=prompt)
    assert response.status_code == 200, response.text
    frame = one_frame(response.json())
    prompted = sorted(int(i) for i in np.unique(ids) if i)
    assert sorted(o["track_id"] for o in frame["objects"]) == prompted


def test_a_prompt_on_a_later_frame_of_an_image_is_422(server, world, tmp_path):
    image, ids = world
    data = {"model": "stcn", "prompt_frame": "1"}
    response = post(server, encoded(image, "PNG"), data, prompt=palette_prompt(ids, tmp_path))
    assert response.status_code == 422, response.text
    assert "1 frame(s)" in response.json()["detail"]


def test_the_davis_zip_of_an_image_holds_one_frame(server, world, tmp_path):
    image, ids = world
    response = post(
        server,
        encoded(image, "PNG"),
        {"model": "stcn"},
        headers={"Accept": "application/zip"},
        prompt=palette_prompt(ids, tmp_path),
    )
    assert response.status_code == 200, response.text
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert archive.namelist() == ["00000.png"]
        answered = read_palette_png(io.BytesIO(archive.read("00000.png")))
    assert answered.shape == (240, 320)
    assert set(np.unique(answered)) - {0} == set(np.unique(ids)) - {0}


def test_accept_image_png_draws_the_results_on_the_image(server, world):
    image, _ = world
    data = {**LOW, "model": "masktrack-instance"}
    response = post(server, encoded(image, "PNG"), data, headers={"Accept": "image/png"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    drawn = np.array(Image.open(io.BytesIO(response.content)).convert("RGB"))
    assert drawn.shape == image.shape, "the full size: no crop"
    assert (drawn != image).any(), "masks and labels are drawn"


def test_accept_video_mp4_of_an_image_is_a_one_frame_mp4(server, world):
    image, _ = world
    odd = np.ascontiguousarray(image[:239, :319])  # H.264 needs even sizes: cropped
    data = {**LOW, "model": "masktrack-instance"}
    response = post(server, encoded(odd, "PNG"), data, headers={"Accept": "video/mp4"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "video/mp4"
    with av.open(io.BytesIO(response.content)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 1 and frames[0].shape == (238, 318, 3)


def test_ndjson_of_an_image_is_one_frame_then_the_summary(server, world):
    image, _ = world
    data = {**LOW, "model": "masktrack-instance"}
    headers = {"Accept": "application/x-ndjson"}
    response = post(server, encoded(image, "JPEG"), data, headers=headers)
    assert response.status_code == 200, response.text
    lines = [json.loads(line) for line in response.content.splitlines()]
    assert [next(iter(line)) for line in lines] == ["frame", "summary"]
    assert lines[0]["frame"]["frame_index"] == 0 and lines[1]["summary"]["fps"] == 0.0


def test_a_job_takes_an_image(server, world):
    image, _ = world
    job_id = accepted(submit(server, encoded(image, "PNG"), {**LOW, "model": "masktrack-instance"}))
    done = wait_until(server, job_id)[-1]
    assert done["status"] == "done", done
    assert done["frames_done"] == done["frames_total"] == 1
    assert one_frame(done["result"])["objects"]


def test_a_job_refuses_a_bad_image_before_accepting_it(server):
    response = submit(server, png_header_only(16000, 16000))
    assert response.status_code == 413, response.text


def test_grpc_segment_video_takes_an_image(server, first_frame_png):
    """SegmentVideo reads its upload through the same probe: one frame, as REST answers it."""
    import grpc

    from service.gateway.grpc_convert import frame_from_proto
    from service.gateway.grpc_gen import vidserve_pb2 as pb
    from service.gateway.grpc_gen import vidserve_pb2_grpc as pb_grpc

    def chunks():
        config = pb.SessionConfig(score_threshold=float(LOW["score_threshold"]))
        yield pb.VideoChunk(config=pb.VideoConfig(session=config))
        yield pb.VideoChunk(data=first_frame_png)

    with grpc.insecure_channel(server.grpc_target) as channel:
        response = pb_grpc.VideoSegmentationStub(channel).SegmentVideo(chunks())
    rest = post(server, first_frame_png, LOW).json()
    assert (response.width, response.height, len(response.frames)) == (320, 240, 1)
    ours = [frame_from_proto(f).model_dump(mode="json") for f in response.frames]
    assert ours[0]["objects"] and ours[0]["time"] == 0.0
    assert_same_frames(ours, rest["frames"])


# --- 16-bit PNG, CMYK JPEG: converted to 8-bit RGB -----------------------------------------------
def test_a_16_bit_png_answers_what_its_8_bit_image_answers(server, world):
    image, _ = world
    deep = image.astype(np.uint16) * 257  # v * 257 >> 8 == v: the same 8-bit pixels
    ok, png16 = cv2.imencode(".png", cv2.cvtColor(deep, cv2.COLOR_RGB2BGR))
    assert ok and png16.tobytes()[24] == 16, "bit depth 16 in IHDR"
    data = {**LOW, "model": "masktrack-instance"}
    answers = [post(server, content, data) for content in (png16.tobytes(), encoded(image, "PNG"))]
    assert [a.status_code for a in answers] == [200, 200], answers[0].text
    assert_same_frames(*[a.json()["frames"] for a in answers])
    assert answers[0].json()["frames"][0]["objects"]


def test_a_16_bit_png_keeps_the_high_byte(tmp_path):
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    path = tmp_path / "deep.png"
    path.write_bytes(encoded(ramp, "PNG"))  # mode I;16: 16-bit grayscale
    probe = probe_image(path, VideoLimits(1, 400, 300))
    assert probe.image.dtype == np.uint8 and probe.image.shape == (64, 64, 3)
    for channel in range(3):
        np.testing.assert_array_equal(probe.image[..., channel], ramp >> 8)


def test_a_cmyk_jpeg_comes_out_as_its_rgb(tmp_path):
    colours = [(0, 255, 255, 0), (255, 0, 0, 0), (0, 0, 0, 128), (30, 60, 90, 20)]
    cmyk = Image.new("CMYK", (64 * len(colours), 32))
    for k, colour in enumerate(colours):
        cmyk.paste(colour, (64 * k, 0, 64 * (k + 1), 32))
    path = tmp_path / "cmyk.jpg"
    path.write_bytes(encoded(cmyk, "JPEG", quality=95))
    expected = np.array(Image.open(path).convert("RGB")).astype(int)
    got = probe_image(path, VideoLimits(1, 400, 300)).image.astype(int)
    assert np.abs(got - expected).max() <= 3  # red comes out red, not cyan


def test_a_cmyk_jpeg_is_served(server, world):
    image, _ = world
    cmyk = encoded(Image.fromarray(image).convert("CMYK"), "JPEG", quality=95)
    response = post(server, cmyk, {**LOW, "model": "masktrack-instance"})
    assert response.status_code == 200, response.text
    assert one_frame(response.json())["objects"]


# --- bad images ----------------------------------------------------------------------------------
def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (32, 32), colour) for colour in ("red", "green")]
    return encoded(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def half(content: bytes) -> bytes:
    return content[: len(content) // 2]


def noise(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (height, width, 3), np.uint8)


BAD_IMAGES = {
    # corrupt: a valid signature, garbage after (a corrupt video is 422 "cannot be decoded")
    "garbage_png": (lambda: b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 2, 422, "cannot be decoded"),
    "garbage_jpeg": (lambda: b"\xff\xd8\xff" + bytes(range(256)) * 2, 422, "cannot be decoded"),
    "cut_png": (lambda: half(encoded(noise(64, 64), "PNG")), 422, "cannot be decoded"),
    "cut_jpeg": (lambda: half(encoded(noise(64, 64), "JPEG")), 422, "cannot be decoded"),
    # over the limit, from the header: 600 bytes claiming 16000x16000, which would not decode
    "huge_png": (
        lambda: png_header_only(16000, 16000),
        413,
        f"16000x16000, over the limit {LIMIT}",
    ),
    "huge_jpeg": (
        lambda: jpeg_header_only(16000, 16000),
        413,
        f"16000x16000, over the limit {LIMIT}",
    ),
    "wide_png": (lambda: encoded(noise(300, 401), "PNG"), 413, f"401x300, over the limit {LIMIT}"),
    # too small (MIN_SIDE): also from the header (the garbage body would be 422 otherwise)
    "1x1_png": (lambda: encoded(noise(1, 1), "PNG"), 422, f"at least {MIN_SIDE} pixels"),
    "1x1_header_only": (lambda: png_header_only(1, 1), 422, "the image is 1x1"),
    "15x64_jpeg": (lambda: encoded(noise(15, 64), "JPEG"), 422, "the image is 64x15"),
    # not a still image of a supported format: refused by type, nothing decoded
    "animated_gif": (lambda: animated("GIF"), 415, "gif is not supported"),
    "still_gif": (lambda: encoded(noise(32, 32), "GIF"), 415, "jpeg, png, webp or bmp"),
    "gif_signature_only": (lambda: b"GIF89a" + bytes(200), 415, "gif is not supported"),
    "animated_png": (lambda: animated("PNG"), 415, "animated png"),
    "animated_webp": (lambda: animated("WEBP"), 415, "animated webp"),
    "text": (
        lambda: b"hello, I am not a video\n" * 10,
        415,
        "nor an image (jpeg, png, webp or bmp)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_a_bad_image_gets_its_problem(server, case):
    make, status, words = BAD_IMAGES[case]
    content = make()
    response = post(server, content, {"model": "masktrack-instance"})
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status and words in problem["detail"].lower(), problem


def test_header_only_files_are_small():
    """The size cases above are refused from 600 bytes that would not decode."""
    for content in (png_header_only(16000, 16000), jpeg_header_only(16000, 16000)):
        assert len(content) == 600
        assert cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_COLOR) is None


def test_the_smallest_image_is_served(server):
    response = post(
        server, encoded(noise(MIN_SIDE, MIN_SIDE), "PNG"), {"model": "masktrack-instance"}
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["frames"]) == 1


def test_probe_refuses_from_the_header_alone(tmp_path):
    """probe_image on files that cannot decode: the header's answer, not the decoder's."""
    path = tmp_path / "claim.png"
    for content, status in ((png_header_only(16000, 16000), 413), (png_header_only(2, 2), 422)):
        path.write_bytes(content)
        with pytest.raises(InputError) as refused:
            probe_image(path, VideoLimits(1, 400, 300))
        assert refused.value.status == status and "decode" not in refused.value.detail


@pytest.mark.parametrize("fmt, options", [("WEBP", {"lossless": True}), ("BMP", {})])
def test_webp_and_bmp_are_images_too(tmp_path, world, fmt, options):
    image, _ = world
    path = tmp_path / "still"
    path.write_bytes(encoded(image, fmt, **options))
    probe = probe_video(path, VideoLimits(1, 400, 300))
    assert (probe.width, probe.height, probe.fps, probe.frames) == (320, 240, 0.0, 1)
    np.testing.assert_array_equal(probe.image, image)


def test_vidserve_segment_renders_an_image_as_a_png(world, tmp_path):
    from typer.testing import CliRunner

    from service.cli import app

    image, _ = world
    source, drawn = tmp_path / "frame.png", tmp_path / "drawn.png"
    source.write_bytes(encoded(image, "PNG"))
    result = CliRunner().invoke(
        app,
        ["segment", str(source), "--model", "masktrack-instance", "--render", str(drawn)]
        + ["--score-threshold", "0.3"],
    )
    assert result.exit_code == 0, result.output
    rendered = np.asarray(Image.open(drawn))
    assert rendered.shape == image.shape
    assert (rendered != image).any(axis=2).mean() > 0.01  # masks drawn over the objects
