"""A slow model beside the detector on one worker: what share of its solo speed the detector keeps.

The worker's one scheduler interleaves the batches of every model on the device, choosing the
queue that has used the least device time. This runs the shipped `masktrack` detector alone, then
beside a model whose every batch burns about 500 ms of CPU (matrix products, not sleep) and whose
sessions keep it saturated, through the real worker and the gateway's session code (in-process
queue, no HTTP), and prints the detector's frames/s in both rounds, their ratio, the slow model's
batches, and the longest wait for any frame of either.

    uv run python benchmarks/scheduler_fairness.py [--seconds 30] [--streams 2] [--json out.json]
"""

import argparse
import asyncio
import json
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.checkpoints.store import CheckpointStore  # noqa: E402
from models.data.synthetic.export import generate_video  # noqa: E402
from models.data.synthetic.world import WorldConfig  # noqa: E402
from service.gateway.pipeline import InputFrame, run_session  # noqa: E402
from service.queue.inprocess import InProcessTransport  # noqa: E402
from service.settings import SHIPPED_CHECKPOINTS  # noqa: E402
from service.worker.runner import (  # noqa: E402
    BatchedForward,
    FrameOutput,
    ModelInfo,
    ModelRunner,
)
from service.worker.runners import load_runners  # noqa: E402
from service.worker.worker import Worker, WorkerConfig  # noqa: E402

BURN_SECONDS = 0.5


class BurnForward(BatchedForward):
    """Matrix products for about BURN_SECONDS of CPU per batch, whatever its size."""

    name = "burn"

    def __init__(self):
        self.batches = 0
        self.a = torch.randn(384, 384)
        self.products = self._calibrate()

    def _calibrate(self) -> int:
        started, count = time.process_time(), 0
        while time.process_time() - started < 0.2:
            self.a @ self.a
            count += 1
        return max(1, int(count * BURN_SECONDS / 0.2))

    def run(self, items):
        for _ in range(self.products):
            self.a @ self.a
        self.batches += 1
        return [None] * len(items)


class BurnRunner(ModelRunner):
    def __init__(self):
        self.forward = BurnForward()
        self.info = ModelInfo("burn", "instance", "1", (), stateful=False)

    def open_session(self, options):
        return None

    def step(self, item, output):
        return [FrameOutput(item.index, item.time)]


async def stream(transport, model: str, frames, until: float, window: int, stats: dict):
    """One closed-loop stream: frames as fast as the window lets them go, until `until`."""

    async def source():
        index = 0
        while time.monotonic() < until:
            yield InputFrame(index, index / 8, frames[index % len(frames)])
            index += 1

    last = time.monotonic()
    async for _ in run_session(transport, model, {}, source(), window):
        now = time.monotonic()
        stats["frames"] += 1
        stats["longest_wait_s"] = max(stats["longest_wait_s"], now - last)
        last = now


async def round_(transport, detector_streams: int, burn_streams: int, seconds: float, frames):
    until = time.monotonic() + seconds
    det = {"frames": 0, "longest_wait_s": 0.0}
    burn = {"frames": 0, "longest_wait_s": 0.0}
    tasks = [stream(transport, "masktrack", frames, until, 8, det) for _ in range(detector_streams)]
    tasks += [stream(transport, "burn", frames, until, 8, burn) for _ in range(burn_streams)]
    started = time.monotonic()
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - started
    return {
        "detector_fps": det["frames"] / elapsed,
        "detector_longest_wait_s": det["longest_wait_s"],
        "burn_frames": burn["frames"],
        "burn_longest_wait_s": burn["longest_wait_s"],
        "seconds": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--streams", type=int, default=2, help="detector streams")
    parser.add_argument("--burn-streams", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    version = CheckpointStore(SHIPPED_CHECKPOINTS).latest("vis", "masktrack")
    burn = BurnRunner()
    transport = InProcessTransport()
    worker = Worker(transport, WorkerConfig(max_batch_size=8, max_wait_ms=5))
    transport.attach(worker)
    for runner in [*load_runners(version, "masktrack", "cpu"), burn]:
        worker.install(runner)
    threading.Thread(target=worker.run, daemon=True).start()
    frames = generate_video(WorldConfig(width=320, height=240, frames=24), 3, 0).frames
    print(f"torch threads {torch.get_num_threads()}, burn batch {BURN_SECONDS} s CPU")

    asyncio.run(round_(transport, args.streams, 0, 5, frames))  # warm up
    solo = asyncio.run(round_(transport, args.streams, 0, args.seconds, frames))
    print(f"detector alone:      {solo['detector_fps']:.1f} frames/s")
    shared = asyncio.run(round_(transport, args.streams, args.burn_streams, args.seconds, frames))
    ratio = shared["detector_fps"] / solo["detector_fps"]
    print(
        f"beside the burner:   {shared['detector_fps']:.1f} frames/s = {ratio:.2f} of solo; "
        f"burner {burn.forward.batches} batches; longest wait for a frame: detector "
        f"{shared['detector_longest_wait_s']:.2f} s, burner {shared['burn_longest_wait_s']:.2f} s"
    )
    worker.stop()
    report = {"solo": solo, "shared": shared, "ratio": ratio, "burn_batches": burn.forward.batches}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
