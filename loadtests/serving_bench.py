"""Serving overhead: frames per second through REST and gRPC against the same model called
directly in a loop, with the same batch policy and the same frames, in one run.

    uv run python loadtests/serving_bench.py [--streams 8] [--frames 24] [--rounds 3]
                                             [--json report.json]

Each round, against one `vidserve serve` started here:
1. direct: the model's runner over `streams` sessions, batches of `max_batch_size` frames
   (the worker's policy at saturation), in this process;
2. grpc: `streams` concurrent StreamFrames calls;
3. rest: `streams` concurrent POST /v1/segment of the same video;
4. direct again. A round's ratios divide by the mean of its two direct runs: this machine's
   speed drifts by 10-30% over minutes, so a served figure is only compared with the model's
   rate around it.
Then the latency at one stream: one frame at a time over gRPC (send, wait for its result) against
one frame at a time directly; the difference is what serving adds (p50, p99).

Prints each round's ratios and their medians and writes a JSON report.
"""

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import median

import httpx
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import (  # noqa: E402
    bench_frames,
    bench_world,
    percentile,
    start_server,
    stop_server,
)

from models.data.video import write_mp4  # noqa: E402
from service.gateway.grpc_gen import vidserve_pb2 as pb  # noqa: E402
from service.gateway.grpc_gen import vidserve_pb2_grpc as pb_grpc  # noqa: E402
from service.settings import SHIPPED_CHECKPOINTS  # noqa: E402
from service.worker.runner import WorkItem, run_frames  # noqa: E402
from service.worker.runners import load_runner_from_store  # noqa: E402


def direct_fps(runner, frames: np.ndarray, streams: int, batch: int) -> float:
    """Frames of `streams` sessions, taken round-robin into batches of `batch` frames."""
    states = [runner.open_session({}) for _ in range(streams)]
    queue = [(s, t) for t in range(len(frames)) for s in range(streams)]
    started = time.perf_counter()
    for k in range(0, len(queue), batch):
        items = [WorkItem(str(s), t, t / 8, frames[t], states[s]) for s, t in queue[k : k + batch]]
        run_frames(runner, items)
    return len(queue) / (time.perf_counter() - started)


def direct_latencies(runner, frames: np.ndarray) -> list[float]:
    state = runner.open_session({})
    out = []
    for t, frame in enumerate(frames):
        started = time.perf_counter()
        run_frames(runner, [WorkItem("one", t, t / 8, frame, state)])
        out.append(time.perf_counter() - started)
    return out


async def grpc_stream(target: str, encoded: list[bytes], lockstep: bool) -> list[float]:
    """Send a stream's frames; lockstep: one at a time (latency). Returns per-frame seconds."""
    import grpc

    async with grpc.aio.insecure_channel(target) as channel:
        call = pb_grpc.VideoSegmentationStub(channel).StreamFrames()
        await call.write(pb.StreamRequest(config=pb.SessionConfig()))
        await call.initial_metadata()
        latencies = []
        if lockstep:
            for image in encoded:
                started = time.perf_counter()
                await call.write(pb.StreamRequest(frame=pb.ImageFrame(image=image)))
                await call.read()
                latencies.append(time.perf_counter() - started)
            await call.done_writing()
        else:

            async def send():
                for image in encoded:
                    await call.write(pb.StreamRequest(frame=pb.ImageFrame(image=image)))
                await call.done_writing()

            sender = asyncio.create_task(send())
            async for _ in call:
                pass
            await sender
        return latencies


def grpc_fps(target: str, encoded: list[bytes], streams: int) -> float:
    async def run():
        await asyncio.gather(*(grpc_stream(target, encoded, False) for _ in range(streams)))

    started = time.perf_counter()
    asyncio.run(run())
    return streams * len(encoded) / (time.perf_counter() - started)


def rest_fps(url: str, video: bytes, frames: int, streams: int) -> float:
    def one(_):
        response = httpx.post(f"{url}/v1/segment", files={"video": ("v.mp4", video)}, timeout=600)
        response.raise_for_status()

    started = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:
        list(pool.map(one, range(streams)))
    return streams * frames / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--batch", type=int, default=8, help="max batch size, both sides")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the report's medians")
    parser.add_argument("--json", type=Path, default=Path("loadtests/serving_bench.json"))
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for the server only (e.g. VIDSERVE_GATEWAY_NICE=10)",
    )
    args = parser.parse_args()
    server_env = dict(item.split("=", 1) for item in args.server_env)

    load_before = os.getloadavg()[0]
    world = bench_world(args.frames)
    # The server decodes the JPEGs: the direct loop gets the same decoded pixels.
    frames, encoded, decoded = bench_frames(args.frames)
    with tempfile.TemporaryDirectory() as tmp:
        video_path = Path(tmp) / "bench.mp4"
        write_mp4(video_path, frames, world.fps)
        video = video_path.read_bytes()

    runner = load_runner_from_store(SHIPPED_CHECKPOINTS, "masktrack", "cpu")
    process, url, target = start_server(args.batch, args.streams, server_env)
    try:
        # Both sides warm up on full batches first (a cold first batch of 8 runs 10-15% slower:
        # it would lower the direct figure the ratios divide by).
        direct_fps(runner, decoded[:2], args.streams, args.batch)
        grpc_fps(target, encoded[:2], args.streams)
        rounds = []
        for number in range(1, args.rounds + 1):
            rounds.append(bench_round(runner, decoded, encoded, video, url, target, args))
            print(f"round {number}: {json.dumps(rounds[-1])}", flush=True)
        direct_lat = direct_latencies(runner, decoded)
        grpc_lat = asyncio.run(grpc_stream(target, encoded, True))
    finally:
        stop_server(process)

    report = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"torch threads, {platform.system()}",
        "server_env": server_env,
        "load_average_before": round(load_before, 2),
        "model": f"masktrack {runner.info.version}",
        "streams": args.streams,
        "frames_per_stream": args.frames,
        "max_batch_size": args.batch,
        "frame_size": "320x240",
        "rounds": rounds,
        "direct_fps": median(r["direct_fps"] for r in rounds),
        "grpc_fps": median(r["grpc_fps"] for r in rounds),
        "rest_fps": median(r["rest_fps"] for r in rounds),
        "grpc_ratio": median(r["grpc_ratio"] for r in rounds),
        "rest_ratio": median(r["rest_ratio"] for r in rounds),
        "one_stream_latency_ms": {
            "direct_p50": round(percentile(direct_lat, 50), 2),
            "direct_p99": round(percentile(direct_lat, 99), 2),
            "grpc_p50": round(percentile(grpc_lat, 50), 2),
            "grpc_p99": round(percentile(grpc_lat, 99), 2),
            "added_p50": round(percentile(grpc_lat, 50) - percentile(direct_lat, 50), 2),
            "added_p99": round(percentile(grpc_lat, 99) - percentile(direct_lat, 99), 2),
        },
        "command": "uv run python loadtests/serving_bench.py " + " ".join(sys.argv[1:]),
    }
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(
        f"\nserving / direct at saturation, median of {args.rounds} rounds: gRPC "
        f"{report['grpc_ratio']:.3f}, REST {report['rest_ratio']:.3f} (target >= 0.95)"
    )


def bench_round(runner, decoded, encoded, video: bytes, url: str, target: str, args) -> dict:
    """direct, gRPC, REST, direct; the served rates over the mean of the two direct ones."""
    load = os.getloadavg()[0]
    direct = direct_fps(runner, decoded, args.streams, args.batch)
    via_grpc = grpc_fps(target, encoded, args.streams)
    via_rest = rest_fps(url, video, args.frames, args.streams)
    direct_again = direct_fps(runner, decoded, args.streams, args.batch)
    direct_mean = (direct + direct_again) / 2
    return {
        "load_average_before": round(load, 2),
        "direct_fps": round(direct_mean, 2),
        "direct_fps_runs": [round(direct, 2), round(direct_again, 2)],
        "grpc_fps": round(via_grpc, 2),
        "rest_fps": round(via_rest, 2),
        "grpc_ratio": round(via_grpc / direct_mean, 3),
        "rest_ratio": round(via_rest / direct_mean, 3),
    }


if __name__ == "__main__":
    main()
