"""REST against a real `vidserve serve` process: results, formats, and every bad input."""

import io
import json

import av
import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from models.data.rle import decode_rle
from service.cli import app
from tests.service.conftest import VIDEO_WORLD

LOW = {"score_threshold": "0.05"}  # enough objects to compare, also from a young model


def post(server, video_bytes: bytes, data=None, headers=None, filename="v.mp4"):
    return httpx.post(
        f"{server.url}/v1/segment",
        files={"video": (filename, video_bytes)},
        data=data or {},
        headers=headers or {},
        timeout=120,
    )


def assert_same_frames(a: list[dict], b: list[dict]) -> None:
    """Same objects, ids and masks; scores and boxes up to float noise of other batch sizes."""
    assert [f["frame_index"] for f in a] == [f["frame_index"] for f in b]
    for fa, fb in zip(a, b, strict=True):
        assert [o["track_id"] for o in fa["objects"]] == [o["track_id"] for o in fb["objects"]]
        assert [o["category"] for o in fa["objects"]] == [o["category"] for o in fb["objects"]]
        for oa, ob in zip(fa["objects"], fb["objects"], strict=True):
            assert abs(oa["score"] - ob["score"]) < 2e-3
            np.testing.assert_allclose(oa["box"], ob["box"], atol=0.5)
            ma, mb = decode_rle(oa["mask"]), decode_rle(ob["mask"])
            assert (ma != mb).sum() <= 0.01 * max(1, ma.sum())


def test_segment_matches_the_local_command(server, video_file, tmp_path):
    response = post(server, video_file.read_bytes(), LOW)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["width"] == 320 and body["height"] == 240 and body["fps"] == VIDEO_WORLD.fps
    assert body["model"] == "masktrack" and body["model_version"]
    assert len(body["frames"]) == VIDEO_WORLD.frames
    assert all(f["model_version"] == body["model_version"] for f in body["frames"])
    objects = [o for f in body["frames"] for o in f["objects"]]
    assert objects, "the model finds objects in the synthetic video"
    for obj in objects:
        assert obj["mask"]["size"] == [240, 320]
        x1, y1, x2, y2 = obj["box"]
        assert 0 <= x1 <= x2 <= 320 and 0 <= y1 <= y2 <= 240
    out = tmp_path / "local.json"
    # The command's own code in this process (as tests/service/test_vos_api.py runs it): a
    # subprocess would add a Python start and a torch import and show nothing more.
    local = CliRunner().invoke(
        app,
        ["segment", str(video_file), "--out", str(out), "--score-threshold", "0.05"]
        + ["--ytvis-out", str(tmp_path / "ytvis.json")],
    )
    assert local.exit_code == 0, local.output
    expected = json.loads(out.read_text())
    assert_same_frames(body["frames"], expected["frames"])
    assert body["tracks"] == expected["tracks"] or len(body["tracks"]) == len(expected["tracks"])
    ytvis = json.loads((tmp_path / "ytvis.json").read_text())
    assert len(ytvis) == len(expected["tracks"])
    assert all(len(e["segmentations"]) == VIDEO_WORLD.frames for e in ytvis)


def test_ndjson_streams_frames_then_summary(server, video_file):
    with httpx.stream(
        "POST",
        f"{server.url}/v1/segment",
        timeout=120,
        files={"video": ("v.mp4", video_file.read_bytes())},
        data={**LOW, "max_frames": "4", "frame_stride": "2"},
        headers={"Accept": "application/x-ndjson"},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert [line["frame"]["frame_index"] for line in lines[:-1]] == [0, 2, 4, 6]
    assert "summary" in lines[-1] and lines[-1]["summary"]["width"] == 320


def test_annotated_mp4(server, video_file):
    response = post(
        server, video_file.read_bytes(), {**LOW, "max_frames": "5"}, {"Accept": "video/mp4"}
    )
    assert response.status_code == 200 and response.headers["content-type"] == "video/mp4"
    with av.open(io.BytesIO(response.content)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert sum(1 for _ in container.decode(stream)) == 5


def test_models_health_ready_metrics(server, video_file):
    models = httpx.get(f"{server.url}/v1/models").json()["models"]
    by_name = {m["name"]: m for m in models}
    assert by_name["masktrack"]["task"] == "vis" and "disc" in by_name["masktrack"]["classes"]
    assert by_name["masktrack-instance"]["task"] == "instance"
    version = by_name["masktrack"]["version"]
    assert by_name["masktrack"]["stages"] == [{"name": "masktrack", "version": version}]
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    # The server is shared by the session: this test makes the request its metrics count, and
    # compares the counters with what they were before it, whatever ran earlier.
    ok = 'vidserve_requests_total{endpoint="/v1/segment",status="200"}'
    frames = 'vidserve_frames_total{model="masktrack"}'
    before = metric_values(server, ok, frames)
    answer = post(server, video_file.read_bytes(), {"max_frames": "1"})
    assert answer.status_code == 200, answer.text
    after = metric_values(server, ok, frames)
    assert after[ok] == before[ok] + 1 and after[frames] == before[frames] + 1
    metrics = httpx.get(f"{server.url}/metrics").text
    for name in [
        "vidserve_requests_total",
        "vidserve_batch_size_bucket",
        "vidserve_queue_depth",
        'vidserve_stage_seconds_bucket{le="0.001",stage="decode"}',
    ]:
        assert name in metrics


def metric_values(server, *series: str) -> dict[str, float]:
    """The current value of each series (name and labels as /metrics writes them; 0 if absent)."""
    values = dict.fromkeys(series, 0.0)
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in values:
            values[name] = float(value)
    return values


def test_docs_have_examples(server):
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert "/v1/segment" in spec["paths"]
    assert httpx.get(f"{server.url}/docs").status_code == 200


def truncated(video_file) -> bytes:
    data = video_file.read_bytes()
    return data[: len(data) // 2]


def zero_frame_video(tmp_path) -> bytes:
    """A Matroska file with a video track and no frame (mp4 drops a track without samples)."""
    path = tmp_path / "empty.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()
    return path.read_bytes()


@pytest.mark.parametrize(
    "case, status, words",
    [
        ("text", 415, "not a video"),
        ("png", 422, "cannot be decoded"),
        ("truncated", 422, "cannot be decoded"),
        ("zero_frames", 422, "no frames"),
        ("empty", 400, "empty"),
        ("too_large", 413, "exceeds"),
        ("unknown_model", 404, "not served"),
        ("threshold_above_1", 400, "score_threshold"),
        ("threshold_not_number", 400, "score_threshold"),
        ("stride_zero", 400, "frame_stride"),
        ("max_frames_negative", 400, "max_frames"),
        ("too_long", 413, "more than 40 frames"),
        ("too_wide", 413, "exceeds the limit of 400x300"),
    ],
)
def test_bad_input_gets_a_clear_problem(server, video_file, tmp_path, case, status, words):
    good = video_file.read_bytes
    cases = {
        "text": lambda: (b"hello, I am not a video\n" * 10, {}),
        "png": lambda: (b"\x89PNG\r\n\x1a\n" + b"\0" * 100, {}),
        "truncated": lambda: (truncated(video_file), {}),
        "zero_frames": lambda: (zero_frame_video(tmp_path), {}),
        "empty": lambda: (b"", {}),
        "too_large": lambda: (b"\0\0\0\x18ftypisom" + b"\0" * (3 * 1024 * 1024 + 10), {}),
        "unknown_model": lambda: (good(), {"model": "no-such-model"}),
        "threshold_above_1": lambda: (good(), {"score_threshold": "2"}),
        "threshold_not_number": lambda: (good(), {"score_threshold": "high"}),
        "stride_zero": lambda: (good(), {"frame_stride": "0"}),
        "max_frames_negative": lambda: (good(), {"max_frames": "-3"}),
        "too_long": lambda: (long_video(tmp_path), {}),
        "too_wide": lambda: (long_video(tmp_path, frames=2, size=(320, 480)), {}),
    }
    content, data = cases[case]()
    response = post(server, content, data)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status and words in problem["detail"].lower()


def long_video(tmp_path, frames: int = 45, size: tuple[int, int] = (48, 64)) -> bytes:
    from models.data.video import write_mp4

    path = tmp_path / "long.mp4"
    write_mp4(path, np.zeros((frames, *size, 3), np.uint8), 8)
    return path.read_bytes()


def test_missing_video_field(server):
    response = httpx.post(f"{server.url}/v1/segment", data={"model": "masktrack"})
    assert response.status_code == 400 and "video" in response.json()["detail"]


def test_bad_input_leaves_the_service_working(server, video_file):
    for _ in range(2):
        post(server, b"garbage" * 100)
        post(server, truncated(video_file))
    response = post(server, video_file.read_bytes(), {**LOW, "max_frames": "3"})
    assert response.status_code == 200 and len(response.json()["frames"]) == 3


def test_bad_input_does_not_disturb_requests_in_flight(server, video_file, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    good = video_file.read_bytes()
    bad = [b"not a video" * 50, truncated(video_file), b"", zero_frame_video(tmp_path)]
    with ThreadPoolExecutor(6) as pool:
        in_flight = [pool.submit(post, server, good, LOW) for _ in range(2)]
        refused = [pool.submit(post, server, content) for content in bad]
        statuses = sorted(f.result().status_code for f in refused)
        answers = [f.result() for f in in_flight]
    assert statuses == [400, 415, 422, 422]
    assert [r.status_code for r in answers] == [200, 200]
    # The same answer, up to the last rounded digit of a box: the two requests' frames may share
    # batches differently, and a batch's float sums round differently (100.45 against 100.46).
    first, second = (
        [
            [(o["track_id"], o["category"], o["box"]) for o in f["objects"]]
            for f in a.json()["frames"]
        ]
        for a in answers
    )
    assert [[o[:2] for o in f] for f in first] == [[o[:2] for o in f] for f in second]
    for a, b in zip(first, second, strict=True):
        for (_, _, box_a), (_, _, box_b) in zip(a, b, strict=True):
            assert box_a == pytest.approx(box_b, abs=0.05)
