"""REST load test (Locust): each user uploads a real video to POST /v1/segment, over and over, and
reads the answer as NDJSON as the frames finish.

    uv run locust -f loadtests/locustfile.py --headless -H http://127.0.0.1:8000 \\
        --users 4 --spawn-rate 4 --run-time 60s --report loadtests/reports/rest.json

Options of this file: --videos FILE_OR_FOLDER (repeatable; default: 4 synthetic 320x240 videos of
24 frames, made at start), --model, --score-threshold, --report (JSON written at the end).
Locust's own options (--users, --run-time, --csv, --html, web UI without --headless) work as usual.

The JSON report (loadtests/stats.py) has, from every sample: throughput (frames and requests per
second), per-frame latency p50/p95/p99 (from handing the frame over to its result, as for gRPC:
an upload hands all its frames over at once, so a frame's latency is the time from the request's
start to its NDJSON line), time to first result, whole-request latency and errors by kind. Users
run back to back (no think time): --users is the concurrency.
"""

import json
import random
import sys
import time
from pathlib import Path

from locust import HttpUser, constant, events, task

sys.path.insert(0, str(Path(__file__).resolve().parent))

from media import synthetic_videos, video_files  # noqa: E402
from stats import Recorder, summary_line, write_report  # noqa: E402

NDJSON = "application/x-ndjson"
recorder = Recorder()
videos: list[tuple[str, bytes]] = []
versions: dict[str, int] = {}


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    group = parser.add_argument_group("vidserve")
    group.add_argument(
        "--videos",
        action="append",
        default=[],
        help="a video file or a folder of videos to upload (repeatable) [synthetic videos]",
    )
    group.add_argument("--synthetic-videos", type=int, default=4, help="how many to make [4]")
    group.add_argument("--synthetic-size", default="320x240", help="their size [320x240]")
    group.add_argument("--synthetic-frames", type=int, default=24, help="their length [24]")
    group.add_argument("--model", default="", help="model to ask for [the service's default]")
    group.add_argument("--score-threshold", default="", help="score threshold [model default]")
    group.add_argument(
        "--report", default="loadtests/reports/rest.json", help="JSON report to write"
    )


@events.init.add_listener
def _load_videos(environment, **_) -> None:
    options = environment.parsed_options
    if options is None:
        return
    if options.videos:
        videos.extend(video_files([Path(v) for v in options.videos]))
    else:
        videos.extend(
            synthetic_videos(
                options.synthetic_videos, options.synthetic_size, options.synthetic_frames, 1234
            )
        )


@events.test_start.add_listener
def _started(environment, **_) -> None:
    recorder.start()


@events.test_stop.add_listener
def _stopped(environment, **_) -> None:
    recorder.stop()


@events.quitting.add_listener
def _write_report(environment, **_) -> None:
    options = environment.parsed_options
    if options is None or not options.report:
        return
    config = {
        "users": options.num_users,
        "spawn_rate": options.spawn_rate,
        "run_time_s": options.run_time,
        "model": options.model or "(default)",
        "videos": [name for name, _ in videos],
        "video_bytes": [len(data) for _, data in videos],
        "frame_latency": "from the start of the upload (which hands every frame over) to the "
        "frame's NDJSON line",
        "model_versions_seen": dict(versions),
        "command": " ".join(["locust", *sys.argv[1:]]),
    }
    report = recorder.report("rest-locust", environment.host or "", config)
    write_report(Path(options.report), report)
    print(summary_line(report))
    print(f"report: {options.report}")


class SegmentUser(HttpUser):
    """Uploads videos back to back and reads each answer as it streams."""

    wait_time = constant(0)

    @task
    def segment(self) -> None:
        options = self.environment.parsed_options
        name, data = random.choice(videos)
        form = {}
        if options.model:
            form["model"] = options.model
        if options.score_threshold:
            form["score_threshold"] = options.score_threshold
        started = time.perf_counter()
        try:
            with self.client.post(
                "/v1/segment",
                files={"video": (name, data, "video/mp4")},
                data=form,
                headers={"Accept": NDJSON},
                stream=True,
                catch_response=True,
                name="/v1/segment",
            ) as response:
                if response.status_code != 200:
                    recorder.error(f"http_{response.status_code}")
                    response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                    return
                problem = self._read_stream(response, started)
                if problem:
                    recorder.error(problem)
                    response.failure(problem)
                else:
                    recorder.request(time.perf_counter() - started)
                    response.success()
        except Exception as e:  # connection refused or reset, timeouts
            recorder.error(type(e).__name__)
            raise

    def _read_stream(self, response, started: float) -> str | None:
        """Time every frame line; returns an error kind, or None when the answer is whole."""
        frames, summary = 0, None
        for line in response.iter_lines(chunk_size=None):
            if not line:
                continue
            now = time.perf_counter()
            try:
                item = json.loads(line)
            except ValueError:
                return "bad_ndjson"
            if "frame" in item:
                if frames == 0:
                    recorder.first_result(now - started)
                recorder.frame(now - started)
                frames += 1
                version = item["frame"].get("model_version", "")
                versions[version] = versions.get(version, 0) + 1
            elif "summary" in item:
                summary = item["summary"]
            elif "error" in item:  # a problem after the status line: reported in the stream
                return f"stream_error_{item['error'].get('status', 'unknown')}"
        if summary is None:
            return "no_summary"
        if frames == 0:
            return "no_frames"
        return None
