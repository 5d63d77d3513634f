"""`vidserve serve` in a process of its own, for the benchmarks that score what the service
answers (instance_quality.py, panoptic_quality.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


class served:
    """`vidserve serve --store store` on free ports while the block runs; yields its URL.
    Its gRPC target is `.grpc_target` and its process `.process` (for its pid)."""

    def __init__(self, store: Path):
        self.store = store

    def __enter__(self) -> str:
        port, grpc_port = _free_port(), _free_port()
        self.grpc_target = f"127.0.0.1:{grpc_port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--store", str(self.store)]
            + ["--port", str(port), "--grpc-port", str(grpc_port)],
            cwd=ROOT,
            env={**os.environ, "VIDSERVE_HOST": "127.0.0.1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.__exit__()
        raise RuntimeError("vidserve serve did not become ready")

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
