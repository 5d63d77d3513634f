"""What the serving benchmarks share (serving_bench.py, ray_peer.py): the frames they send, a
`vidserve serve` they start and stop, and percentiles in milliseconds."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.data.synthetic.export import generate_video  # noqa: E402
from models.data.synthetic.world import WorldConfig  # noqa: E402

BENCH_SEED = 2024
JPEG_QUALITY = 95


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_world(frames: int) -> WorldConfig:
    return WorldConfig(width=320, height=240, frames=frames, fps=8)


def bench_frames(frames: int) -> tuple[np.ndarray, list[bytes], np.ndarray]:
    """One synthetic 320x240 video: its RGB frames, each as JPEG (quality 95) and those JPEGs
    decoded again (the pixels a server that receives them computes on)."""
    rgb = generate_video(bench_world(frames), BENCH_SEED, 0).frames
    encoded = [
        cv2.imencode(".jpg", f[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1].tobytes()
        for f in rgb
    ]
    decoded = np.stack(
        [cv2.imdecode(np.frombuffer(e, np.uint8), cv2.IMREAD_COLOR)[..., ::-1] for e in encoded]
    )
    return rgb, encoded, decoded


def start_server(
    batch: int, streams: int, env: dict[str, str] | None = None, log=None
) -> tuple[subprocess.Popen, str, str]:
    """`vidserve serve` (embedded worker, shipped checkpoints) on free ports, max batch `batch`,
    admission for `streams` streams; `env` adds variables. Returns (process, url, gRPC target)
    once /readyz answers."""
    port, grpc_port = free_port(), free_port()
    environment = {
        **os.environ,
        "VIDSERVE_HOST": "127.0.0.1",
        "VIDSERVE_MAX_BATCH_SIZE": str(batch),
        "VIDSERVE_MAX_FRAMES_IN_FLIGHT": str(8 * streams + 8),
        **(env or {}),
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service.cli",
            "serve",
            "--port",
            str(port),
            "--grpc-port",
            str(grpc_port),
        ],
        cwd=ROOT,
        env=environment,
        stdout=log or subprocess.DEVNULL,
        stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return process, url, f"127.0.0.1:{grpc_port}"
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_server(process)
    raise SystemExit("the server did not become ready")


def stop_server(process: subprocess.Popen, timeout: float = 30) -> None:
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile of durations in seconds, in milliseconds."""
    return float(np.percentile(np.asarray(values) * 1000, q))
