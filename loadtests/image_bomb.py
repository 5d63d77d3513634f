"""Image bombs against a real server: what a tiny JPEG that claims 16000x16000 costs.

Starts `vidserve serve`, then, side by side in one run:
1. a lockstep gRPC stream (one 320x240 frame at a time) alone: its frame latencies;
2. the same stream while another client sends bombs back to back over gRPC: its frame latencies,
   how long each bomb takes to be refused (and with what status), and the server's RSS before and
   after.

    uv run python loadtests/image_bomb.py [--frames 40] [--bombs 50] [--json report.json]
"""

import argparse
import asyncio
import json
import struct
import sys
import time
from pathlib import Path

import cv2
import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadtests.serving_bench import start_server  # noqa: E402
from models.data.synthetic.export import generate_video  # noqa: E402
from models.data.synthetic.world import WorldConfig  # noqa: E402
from service.gateway.grpc_gen import vidserve_pb2 as pb  # noqa: E402
from service.gateway.grpc_gen import vidserve_pb2_grpc as pb_grpc  # noqa: E402


def jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def lockstep(stub, frames: list[bytes]) -> list[float]:
    """One frame at a time; seconds from sending each frame to its result."""
    call = stub.StreamFrames()
    await call.write(pb.StreamRequest(config=pb.SessionConfig()))
    out = []
    for index, frame in enumerate(frames):
        started = time.perf_counter()
        await call.write(pb.StreamRequest(frame=pb.ImageFrame(image=frame, frame_index=index)))
        await call.read()
        out.append(time.perf_counter() - started)
    await call.done_writing()
    return out


async def bombs(stub, count: int, stop: asyncio.Event) -> list[tuple[float, str]]:
    bomb = jpeg_claiming(16000, 16000)
    out = []
    for _ in range(count):
        if stop.is_set():
            break
        started = time.perf_counter()
        call = stub.StreamFrames()
        await call.write(pb.StreamRequest(config=pb.SessionConfig()))
        await call.write(pb.StreamRequest(frame=pb.ImageFrame(image=bomb)))
        await call.done_writing()
        try:
            async for _ in call:
                pass
            code = "OK"
        except grpc.aio.AioRpcError as error:
            code = error.code().name
        out.append((time.perf_counter() - started, code))
    return out


async def measure(target: str, frames: list[bytes], count: int, pid: int) -> dict:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.VideoSegmentationStub(channel)
        await lockstep(stub, frames[:4])  # warm up
        alone = await lockstep(stub, frames)
        rss_before = rss_mb(pid)
        stop = asyncio.Event()
        bomber = asyncio.create_task(bombs(stub, count, stop))
        beside = await lockstep(stub, frames)
        stop.set()
        refused = await bomber
        rss_after = rss_mb(pid)
    ms = lambda v: round(1000 * v, 1)  # noqa: E731
    return {
        "frame_latency_alone_ms": {"p50": ms(np.median(alone)), "max": ms(max(alone))},
        "frame_latency_beside_bombs_ms": {"p50": ms(np.median(beside)), "max": ms(max(beside))},
        "bombs_sent": len(refused),
        "bomb_answer_ms": {
            "p50": ms(np.median([s for s, _ in refused])),
            "max": ms(max(s for s, _ in refused)),
        },
        "bomb_status": sorted({code for _, code in refused}),
        "server_rss_mb": {"before": round(rss_before, 1), "after": round(rss_after, 1)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--bombs", type=int, default=50)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    world = WorldConfig(width=320, height=240, frames=args.frames, fps=8)
    frames = [
        cv2.imencode(".jpg", f[..., ::-1])[1].tobytes()
        for f in generate_video(world, 2024, 0).frames
    ]
    process, _, target = start_server(8, 4)
    try:
        report = asyncio.run(measure(target, frames, args.bombs, process.pid))
    finally:
        process.terminate()
        process.wait(timeout=30)
    report["command"] = "uv run python loadtests/image_bomb.py " + " ".join(sys.argv[1:])
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
