"""The load generators: their statistics, and a few seconds of each against a real embedded
server (the 60 s runs whose figures are in the README are the same commands)."""

import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.deploy.files import ROOT, tool


def _load(name: str):
    """A module of loadtests/ (scripts, not a package) under a name of its own."""
    spec = importlib.util.spec_from_file_location(
        f"loadtests_{name}", ROOT / "loadtests" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


stats = _load("stats")
Recorder, percentile, summarize_ms = stats.Recorder, stats.percentile, stats.summarize_ms

SMALL = ["--synthetic-size", "160x120", "--synthetic-frames", "6"]


def test_percentiles_are_numpys():
    rng = random.Random(3)
    for n in (1, 2, 7, 100, 1001):
        values = sorted(rng.expovariate(1.0) for _ in range(n))
        for q in (0, 50, 95, 99, 100):
            assert percentile(values, q) == pytest.approx(np.percentile(values, q))
    assert summarize_ms([]) == {
        "count": 0,
        "mean": None,
        "p50": None,
        "p95": None,
        "p99": None,
        "max": None,
    }


def test_a_report_has_every_figure():
    recorder = Recorder()
    for k in range(100):
        recorder.frame((k + 1) / 1000)
    recorder.first_result(0.25)
    recorder.request(1.5)
    recorder.error("http_429")
    recorder.error("http_429")
    recorder.stop()
    report = recorder.report("test", "nowhere", {"a": 1})
    assert report["frames"] == 100 and report["requests_ok"] == 1
    assert report["frame_latency_ms"]["p50"] == pytest.approx(50.5)
    assert report["frame_latency_ms"]["p99"] == pytest.approx(99.01)
    assert report["time_to_first_result_ms"]["p50"] == 250.0
    assert report["errors"] == {"http_429": 2} and report["error_count"] == 2
    assert report["throughput_fps"] > 0
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["cpu"]


# `server` is the test session's shared embedded server (tests/conftest.py): the generators'
# small videos (160x120, 6 frames) are within its limits.


def test_grpc_streams_writes_its_report(server, tmp_path):
    report_path = tmp_path / "grpc.json"
    result = subprocess.run(
        [
            sys.executable,
            "loadtests/grpc_streams.py",
            "--target",
            server.grpc_target,
            "--streams",
            "2",
            "--fps",
            "4",
            "--duration",
            "3",
            "--session-seconds",
            "1.5",
            "--size",
            "160x120",
            "--frames",
            "6",
            "--warmup-frames",
            "1",
            "--report",
            str(report_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["generator"] == "grpc-streams" and report["error_count"] == 0, report
    assert report["frames"] > 0 and report["frame_latency_ms"]["count"] == report["frames"]
    assert report["time_to_first_result_ms"]["count"] >= 2, "a session per stream at least"
    assert report["sessions_ok"] >= 2
    assert "" not in report["model_versions_seen"], "every result names its model version"
    assert "grpc-streams:" in result.stdout


def test_locust_writes_its_report(server, tmp_path):
    report_path = tmp_path / "rest.json"
    result = subprocess.run(
        [
            tool("locust"),
            "-f",
            "loadtests/locustfile.py",
            "--headless",
            "--host",
            server.url,
            "--users",
            "2",
            "--spawn-rate",
            "2",
            "--run-time",
            "5s",
            "--only-summary",
            "--synthetic-videos",
            "2",
            *SMALL,
            "--report",
            str(report_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["generator"] == "rest-locust" and report["error_count"] == 0, report
    assert report["requests_ok"] >= 1 and report["frames"] >= 6
    assert report["time_to_first_result_ms"]["count"] >= report["requests_ok"]
    assert report["config"]["users"] == 2
    assert Path(report_path).stat().st_size > 0
