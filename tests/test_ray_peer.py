"""loadtests/ray_peer.py, the peer benchmark against Ray Serve, in a tiny smoke mode: the vidserve
side (its own `vidserve serve`, closed-loop gRPC streams) and its check of every answer against the
runner called directly. The Ray side runs only where the optional `ray` group is installed
(`uv sync --group ray`); CI's plain `uv sync` does not install it, and it is skipped there."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--streams", "1,2", "--frames", "2", "--warmup", "1", "--video-frames", "4"]


def run_peer(tmp_path: Path, systems: str) -> dict:
    report = tmp_path / "ray_peer.json"
    result = subprocess.run(
        [sys.executable, "loadtests/ray_peer.py", *TINY, "--rounds", "1", "--systems", systems]
        + ["--json", str(report), "--log", str(tmp_path / "servers.log")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "results identical within tolerance: True" in result.stdout
    return json.loads(report.read_text())


def check_side(report: dict, system: str) -> None:
    [entry] = report["rounds"]
    assert len(entry["load_average_before"]) == 3
    for n, streams in (("1", 1), ("2", 2)):
        figures = entry[system]["by_streams"][n]
        assert figures["frames"] == 2 * streams  # timed frames only, warm-up left out
        assert figures["fps"] > 0 and 0 < figures["p50_ms"] <= figures["p99_ms"]
        assert report["summary"][system][n]["fps"] == figures["fps"]
    check = report["results_check"][f"{system}_vs_direct"]
    # every answer, warm-up included: 1 + 2 streams x 3 frames
    assert check["answers"] == 9 and check["answers_out_of_tolerance"] == 0
    assert check["objects"] > 0 and check["min_mask_iou"] == 1.0


def test_vidserve_side_and_its_results_check(tmp_path):
    report = run_peer(tmp_path, "vidserve")
    check_side(report, "vidserve")
    assert report["results_check"]["identical"] is True
    assert report["batch_policy"] == {"max_batch_size": 8, "max_wait_ms": 5.0}
    assert "vidserve_over_ray" not in report["rounds"][0]  # one system: no ratios


def test_the_answers_check_finds_a_difference():
    spec = importlib.util.spec_from_file_location("ray_peer", ROOT / "loadtests" / "ray_peer.py")
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)
    mask = ("star", 0.9, (1.0, 2.0, 30.0, 40.0), (8, 8), "0@0")
    reference = {0: [mask]}
    moved = ("star", 0.9, (1.0, 2.0, 30.5, 40.0), (8, 8), "0@0")
    renamed = ("cross", 0.9, (1.0, 2.0, 30.0, 40.0), (8, 8), "0@0")
    answers = {"vidserve": {1: {0: [[mask], [moved]]}}, "ray": {1: {0: [[renamed]]}}}
    check = peer.check_results(reference, answers)
    assert check["identical"] is False
    assert check["vidserve_vs_direct"]["answers_out_of_tolerance"] == 1
    assert check["vidserve_vs_direct"]["max_box_diff_px"] == 0.5
    assert check["ray_vs_direct"]["object_mismatches"] == 1
    assert check["vidserve_vs_ray"]["answers_out_of_tolerance"] == 1


@pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="Ray is not installed: it is the optional group `ray` (uv sync --group ray), "
    "not in the default install nor in CI",
)
def test_ray_side(tmp_path):
    report = run_peer(tmp_path, "ray")
    check_side(report, "ray")
    assert report["rounds"][0]["ray"]["by_streams"]["1"]["torch_threads"] == [1]
