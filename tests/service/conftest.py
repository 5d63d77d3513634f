"""Fixtures of the serving tests: real processes on real ports, real videos."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from models.data.synthetic.export import generate_video
from models.data.synthetic.world import WorldConfig
from models.data.video import write_mp4
from service.settings import SHIPPED_CHECKPOINTS

ROOT = Path(__file__).resolve().parents[2]
VIDEO_WORLD = WorldConfig(width=320, height=240, frames=10, fps=8, max_objects=3)


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
def video_file(tmp_path_factory) -> Path:
    """A 10-frame synthetic video (320x240 H.264)."""
    path = tmp_path_factory.mktemp("videos") / "objects.mp4"
    write_mp4(path, generate_video(VIDEO_WORLD, 4242, 0).frames, VIDEO_WORLD.fps)
    return path


@pytest.fixture(scope="session")
def other_video_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("videos") / "other.mp4"
    write_mp4(path, generate_video(VIDEO_WORLD, 4242, 1).frames, VIDEO_WORLD.fps)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = open(tmp_path_factory.mktemp("logs") / "server.log", "w")  # noqa: SIM115
    srv = Server(
        env={
            "VIDSERVE_MAX_UPLOAD_BYTES": str(3 * 1024 * 1024),
            "VIDSERVE_MAX_FRAMES_IN_FLIGHT": "128",
            "VIDSERVE_MAX_VIDEO_FRAMES": "40",
            "VIDSERVE_MAX_WIDTH": "400",
            "VIDSERVE_MAX_HEIGHT": "300",
        },
        log=log,
    )
    yield srv
    srv.stop()
    log.close()
