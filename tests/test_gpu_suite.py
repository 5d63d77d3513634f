"""The GPU path on the CPU: benchmarks/gpu_suite.py --smoke end to end, the precision setting
(VIDSERVE_PRECISION) from the environment to the scheduler's forward and step, and the runners in
bf16 against fp32 with the comparison tests/test_cuda.py makes on a GPU."""

import json
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from benchmarks.gpu_suite import MODELS, PRECISIONS, unpack_wheels
from service.settings import Settings
from service.worker.runner import (
    BatchedForward,
    ForwardContext,
    ModelInfo,
    ModelRunner,
    WorkItem,
    forward_context,
)
from service.worker.scheduler import Scheduler
from tests.test_cuda import assert_same_objects, run_streams

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.gpu_smoke
def test_the_smoke_run_writes_every_figure_of_the_report(tmp_path):
    out = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_suite.py", "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert report["ok"] and report["smoke"]
    assert report["device"] == "cpu" and report["torch"] == torch.__version__
    assert report["device_name"] is not None and len(report["load_average"]) == 3
    for name in MODELS:
        rates = report["batching"][name]["rates"]
        assert [rate["streams"] for rate in rates] == [1, 2]
        assert all(rate["frames_per_s"] > 0 for rate in rates)
        assert report["batching"][name]["gain"] > 0
    assert "CUDA only" in report["host_to_device"]["skipped"]
    stcn = report["stcn_full"]
    assert [stcn[p]["ran_as"] for p in PRECISIONS] == ["fp32", "fp32", "bf16"]  # no fp16 on CPU
    assert all(stcn[p]["ms_per_frame"] > 0 for p in PRECISIONS)
    tests = report["cuda_tests"]
    assert tests["runner"] == "pytest" and tests["returncode"] == 0
    assert "skipped" in tests["summary"][0]  # every CUDA test was collected, none ran here


def test_wheels_are_unpacked_first_on_the_import_path(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", "")
    with zipfile.ZipFile(tmp_path / "carried-1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr("carried_module_for_test.py", "ANSWER = 42\n")
    target = unpack_wheels(tmp_path)
    assert sys.path[0] == str(target)
    assert str(target) in __import__("os").environ["PYTHONPATH"]
    assert __import__("carried_module_for_test").ANSWER == 42
    sys.modules.pop("carried_module_for_test")
    assert unpack_wheels(tmp_path / "none") is None


def test_the_precision_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("VIDSERVE_PRECISION", raising=False)
    assert Settings().precision == "fp32"
    monkeypatch.setenv("VIDSERVE_PRECISION", "bf16")
    assert Settings().precision == "bf16"


def test_an_unknown_precision_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("VIDSERVE_PRECISION", "fp8")
    with pytest.raises(ValidationError, match="'fp32', 'fp16' or 'bf16'"):
        Settings()
    with pytest.raises(ValueError, match="precision must be one of fp32, fp16, bf16, got 'half'"):
        forward_context("cpu", "half")


def test_fp16_falls_back_to_fp32_off_cuda_with_a_warning(caplog):
    context = forward_context("cpu", "fp16")
    assert context.precision == "fp32"
    assert "fp16 needs CUDA" in caplog.text
    with context.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert forward_context("cpu", "bf16").precision == "bf16"


class DtypeForward(BatchedForward):
    """Answers, per item, the dtype a matmul gets inside `run` and the type of the image."""

    name = "dtype"

    def __init__(self, device_frames: bool):
        self.device_frames = device_frames

    def run(self, items):
        dtype = (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        return [(dtype, type(item.image)) for item in items]


class DtypeRunner(ModelRunner):
    def __init__(self, forward: DtypeForward):
        self.forward = forward
        self.info = ModelInfo("dtype", "instance", "1", (), stateful=False)

    def open_session(self, options):
        return None

    def step(self, item, output):
        return [(*output, (torch.ones(2, 2) @ torch.ones(2, 2)).dtype)]


@pytest.mark.parametrize("device_frames", [False, True])
def test_the_scheduler_runs_forward_and_step_in_the_precision(device_frames):
    done, answers = threading.Event(), []

    def on_done(runner, item, result):
        answers.append(result)
        done.set()

    scheduler = Scheduler(4, 0.0, on_done, context=forward_context("cpu", "bf16"))
    runner = DtypeRunner(DtypeForward(device_frames))
    scheduler.add_runner(runner)
    scheduler.session_opened(runner)
    scheduler.submit(runner, WorkItem("s", 0, 0.0, np.zeros((4, 6, 3), np.uint8), None))
    try:
        assert done.wait(10)
    finally:
        scheduler.stop()
    forward_dtype, image_type, step_dtype = answers[0][0]
    assert forward_dtype == step_dtype == torch.bfloat16
    assert image_type is (torch.Tensor if device_frames else np.ndarray)


def test_device_frames_stay_views_of_the_array_on_the_cpu():
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    frame = ForwardContext("cpu").to_device(image)
    assert frame.device.type == "cpu" and np.shares_memory(frame.numpy(), image)


@pytest.mark.parametrize("name", ["masktrack-instance", "stcn"])  # masktrack: the same detector
def test_bf16_on_the_cpu_answers_as_fp32(name):
    """A runner under the worker's bf16 autocast, compared as test_cuda compares the GPU's."""
    expected = run_streams(name, "cpu", frames=2, streams=1)
    assert any(objects for round_ in expected for objects in round_)
    in_bf16 = run_streams(name, "cpu", "bf16", frames=2, streams=1)
    assert_same_objects(expected, in_bf16, min_iou=0.8, score_tol=0.05)
