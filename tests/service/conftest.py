"""Fixtures of the serving tests: real processes on real ports, real videos."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from models.data.synthetic.world import WorldConfig
from service.settings import SHIPPED_CHECKPOINTS

ROOT = Path(__file__).resolve().parents[2]
VIDEO_WORLD = WorldConfig(width=320, height=240, frames=10, fps=8, max_objects=3)
# For servers and workers of tests that send only to masktrack (and masktrack-instance): loading
# just its checkpoint starts them in half the time of the whole shipped store.
MASKTRACK_ONLY = {"VIDSERVE_MODELS": "masktrack"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not ready after {timeout} s")


class Server:
    """`vidserve serve` in a subprocess, as a user starts it."""

    def __init__(self, store: Path = SHIPPED_CHECKPOINTS, extra_args=(), env=None, log=None):
        self.store = store
        self.port, self.grpc_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        environment = {**os.environ, "VIDSERVE_HOST": "127.0.0.1", **(env or {})}
        self.log = log
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service.cli",
                "serve",
                "--store",
                str(store),
                "--port",
                str(self.port),
                "--grpc-port",
                str(self.grpc_port),
                *extra_args,
            ],
            cwd=ROOT,
            env=environment,
            stdout=log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_ready(self.url, self.process)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def metric(self, name: str) -> str:
        text = httpx.get(f"{self.url}/metrics").text
        return "\n".join(line for line in text.splitlines() if line.startswith(name))


@pytest.fixture(scope="session")
def panoptic_server(tmp_path_factory):
    """`vidserve serve` on a store holding only the tiny MaskFormer (as `maskformer` and
    `maskformer-video`), for the panoptic serving tests."""
    from models.checkpoints.store import CheckpointStore
    from tests.service.panoptic_fixtures import MODEL, STUFF, THINGS, tiny_maskformer

    store = tmp_path_factory.mktemp("store")
    model, config = tiny_maskformer()
    CheckpointStore(store).publish(
        model,
        family="panoptic",
        name=MODEL,
        version="20250101T000000Z",
        architecture=config.to_dict(),
        class_names=THINGS + STUFF,
    )
    with open(tmp_path_factory.mktemp("logs") / "server.log", "w") as log:
        server = Server(store=store, env={"VIDSERVE_DEFAULT_MODEL": MODEL}, log=log)
        yield server
        server.stop()


# The fixtures `video_file`, `other_video_file` and `server` live in tests/conftest.py, so that
# every folder (service, deploy, client, web) shares one video and one server per test session.
# They stay importable from here by their old names; a module-level __getattr__ keeps them out of
# this module's namespace, where pytest would register a second copy (a second server).
SHARED_FIXTURES = ("video_file", "other_video_file", "server")


def __getattr__(name: str):
    if name in SHARED_FIXTURES:
        import tests.conftest

        return getattr(tests.conftest, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
