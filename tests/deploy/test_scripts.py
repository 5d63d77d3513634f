"""The scripts the containers run: seeding the store, the trainer's entry, the healthcheck."""

import os
import subprocess
import sys

import httpx
import pytest

from service.metrics import Metrics
from service.worker.health import WorkerHealthServer
from tests.deploy.files import ROOT

SEED = ROOT / "deploy" / "seed-checkpoints.sh"
TRAIN = ROOT / "deploy" / "train.sh"
HEALTHCHECK = ROOT / "deploy" / "healthcheck.py"


def write_version(store, version, weights="w"):
    folder = store / "vis" / "masktrack" / version
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text("{}")
    (folder / "model.safetensors").write_text(weights)
    return folder


def seed(source, target, env=None):
    return subprocess.run(
        ["sh", str(SEED), str(source), str(target)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=30,
    )


def test_seeding_copies_missing_versions_once_and_keeps_existing_ones(tmp_path):
    shipped, store = tmp_path / "shipped", tmp_path / "store"
    write_version(shipped, "v1")
    write_version(shipped, "v2")
    (shipped / "vis" / "masktrack" / ".partial").mkdir()  # never a complete checkpoint
    write_version(store, "v2", weights="trained here")

    first = seed(shipped, store)
    assert first.returncode == 0, first.stderr
    assert "1 version(s) copied" in first.stdout
    assert (store / "vis/masktrack/v1/model.safetensors").read_text() == "w"
    assert (store / "vis/masktrack/v2/model.safetensors").read_text() == "trained here"
    assert sorted(p.name for p in (store / "vis/masktrack").iterdir()) == ["v1", "v2"]

    again = seed(shipped, store)
    assert again.returncode == 0 and "0 version(s) copied" in again.stdout


def test_seeding_without_shipped_checkpoints_fails(tmp_path):
    result = seed(tmp_path / "missing", tmp_path / "store")
    assert result.returncode == 1 and "no shipped checkpoints" in result.stderr


@pytest.fixture
def fake_vidserve(tmp_path):
    """A `vidserve` on PATH that records its arguments, one call per line."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir()
    script = bin_dir / "vidserve"
    script.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    script.chmod(0o755)
    return bin_dir, calls


def run_train(bin_dir, tmp_path, args, **env):
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("VIDSERVE_", "TRAIN_"))}
    environment = {
        **inherited,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "VIDSERVE_CHECKPOINT_STORE": str(tmp_path / "store"),
        "TRAIN_DATA": str(tmp_path / "data"),
        "TRAIN_WORK_DIR": str(tmp_path / "run"),
        **env,
    }
    return subprocess.run(
        ["sh", str(TRAIN), *args], env=environment, capture_output=True, text=True, timeout=30
    )


def test_the_trainer_entry_makes_data_then_trains_publishes_and_announces(fake_vidserve, tmp_path):
    bin_dir, calls = fake_vidserve
    result = run_train(
        bin_dir,
        tmp_path,
        ["--iters", "3"],
        VIDSERVE_REDIS_URL="redis://redis:6379",
        TRAIN_VIDEOS="3",
        TRAIN_SIZE="128x96",
    )
    assert result.returncode == 0, result.stderr
    synth, train = calls.read_text().splitlines()
    assert synth == f"synth --out {tmp_path}/data --videos 3 --frames 24 --size 128x96 --seed 100"
    assert train == (
        f"train vis --data {tmp_path}/data --out {tmp_path}/store --work-dir {tmp_path}/run "
        "--redis-url redis://redis:6379 --iters 3"
    )


def test_the_trainer_entry_reuses_a_dataset_and_needs_a_store(fake_vidserve, tmp_path):
    bin_dir, calls = fake_vidserve
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "meta.json").write_text("{}")
    result = run_train(bin_dir, tmp_path, [])
    assert result.returncode == 0, result.stderr
    assert calls.read_text().splitlines() == [
        f"train vis --data {tmp_path}/data --out {tmp_path}/store --work-dir {tmp_path}/run"
    ]
    missing = run_train(bin_dir, tmp_path, [], VIDSERVE_CHECKPOINT_STORE="")
    assert missing.returncode != 0 and "VIDSERVE_CHECKPOINT_STORE" in missing.stderr


def test_the_trainer_entry_trains_the_family_it_is_told(fake_vidserve, tmp_path):
    bin_dir, calls = fake_vidserve
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "meta.json").write_text("{}")
    result = run_train(bin_dir, tmp_path, ["--iters", "9"], TRAIN_FAMILY="panoptic")
    assert result.returncode == 0, result.stderr
    assert calls.read_text().splitlines() == [
        f"train panoptic --data {tmp_path}/data --out {tmp_path}/store --work-dir {tmp_path}/run "
        "--iters 9"
    ]


class _Worker:
    def __init__(self, loaded: bool):
        self.loaded = loaded

    def models(self):
        info = type("Info", (), {"name": "masktrack", "version": "v1"})
        return [info()] if self.loaded else []

    def queue_depth(self):
        return 3

    def session_count(self):
        return 2


def healthcheck(port, *args, variable="VIDSERVE_WORKER_PORT"):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDSERVE_")}
    env[variable] = str(port)
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), *args], env=env, capture_output=True, timeout=30
    ).returncode


@pytest.mark.parametrize("loaded", [True, False])
def test_worker_health_port_and_the_image_healthcheck(loaded):
    server = WorkerHealthServer(_Worker(loaded), Metrics(), "127.0.0.1", 0, "w1")
    server.start()
    try:
        assert healthcheck(server.port) == 0
        assert healthcheck(server.port, "/readyz") == (0 if loaded else 1)
        assert healthcheck(server.port, "/nowhere") == 1
        metrics = httpx.get(f"http://127.0.0.1:{server.port}/metrics").text
        assert "vidserve_queue_depth 3.0" in metrics and "vidserve_open_sessions 2.0" in metrics
        if loaded:
            ready = httpx.get(f"http://127.0.0.1:{server.port}/readyz").json()
            assert ready == {"status": "ready", "worker": "w1", "models": {"masktrack": "v1"}}
    finally:
        server.stop()
    assert healthcheck(server.port) == 1, "nothing listening: unhealthy"
