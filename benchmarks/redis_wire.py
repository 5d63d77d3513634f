"""Frames through Redis at 1280x720: bytes on the wire and frames/s, raw RGB against the encoding
the transport uses (service/queue/redis_streams.py).

    uv run python benchmarks/redis_wire.py [--frames 48] [--json]

It starts a redis-server of its own on a free port (`redis-server` on PATH; nothing saved), takes
the frames of a 1280x720 synthetic video decoded from H.264 (what REST sends), and for each way:

- before: the frame as raw RGB bytes in the entry (protocol 1), read back with `np.frombuffer`;
- after:  `encode_message` (lossless WebP) on the gateway side, `RedisWorkerTransport.fetch`
          (XREADGROUP, then decode with the header check, in its decoding threads) on the worker
          side, each frame acknowledged as the worker does.

All frames are added (XADD, timed with their encoding) then all read (XREADGROUP + decode +
acknowledge): frames/s is the frame count over both times together, one process, one client each.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.redis_server

from models.data.synthetic.export import generate_video  # noqa: E402
from models.data.synthetic.world import WorldConfig  # noqa: E402
from models.data.video import read_video, write_mp4  # noqa: E402
from service.queue.messages import Frame  # noqa: E402
from service.queue.redis_streams import (  # noqa: E402
    GROUP,
    RedisWorkerTransport,
    encode_message,
    work_stream,
)
from service.worker.runner import ModelInfo  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

WIDTH, HEIGHT = 1280, 720
MODEL = ModelInfo("bench", "instance", "v1", ("a",), stateful=False)


class _OneModel:
    def models(self):
        return [MODEL]

    def session_count(self) -> int:
        return 0


def video_frames(folder: Path, count: int) -> np.ndarray:
    world = WorldConfig(width=WIDTH, height=HEIGHT, frames=count, fps=8, max_objects=3)
    path = folder / "v720.mp4"
    write_mp4(path, generate_video(world, 5, 0).frames, world.fps)
    frames, _ = read_video(path)
    return frames


def entry_bytes(fields: dict) -> int:
    return sum(len(k) + len(v) for k, v in fields.items())


def raw_fields(frame: Frame) -> dict:
    """Protocol 1: the pixels as they are."""
    meta = {"type": "frame", "session_id": frame.session_id, "index": frame.index,
            "time": frame.time, "prompt": None, "model": frame.model, "options": {},
            "reply_to": "bench", "shape": list(frame.image.shape)}  # fmt: skip
    return {"meta": json.dumps(meta), "image": frame.image.tobytes()}


def run_before(client: redis.Redis, frames: np.ndarray) -> dict:
    stream = work_stream(MODEL.name)
    client.delete(stream)
    client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    sizes = []
    started = time.perf_counter()
    for index, image in enumerate(frames):
        fields = raw_fields(Frame("s", index, 0.0, image, model=MODEL.name))
        sizes.append(entry_bytes(fields))
        client.xadd(stream, fields)
    added = time.perf_counter()
    got = 0
    while got < len(frames):
        for _, entries in client.xreadgroup(GROUP, "w", {stream: ">"}, count=16, block=1000):
            for entry_id, fields in entries:
                meta = json.loads(fields[b"meta"])
                image = np.frombuffer(fields[b"image"], np.uint8).reshape(meta["shape"])
                assert image.shape == (HEIGHT, WIDTH, 3)
                client.xack(stream, GROUP, entry_id)
                client.xdel(stream, entry_id)
                got += 1
    read = time.perf_counter()
    return summary("raw RGB", sizes, len(frames), added - started, read - added)


def run_after(url: str, client: redis.Redis, frames: np.ndarray) -> dict:
    stream = work_stream(MODEL.name)
    client.delete(stream)
    worker = RedisWorkerTransport(url, _OneModel(), WIDTH, HEIGHT)
    worker.start()
    try:
        worker.fetch(0.01)  # makes the consumer group, as a running worker has
        sizes = []
        started = time.perf_counter()
        for index, image in enumerate(frames):
            fields = encode_message(Frame("s", index, 0.0, image, model=MODEL.name))
            sizes.append(entry_bytes(fields))
            client.xadd(stream, fields)
        added = time.perf_counter()
        got = 0
        while got < len(frames):
            for message in worker.fetch(1.0):
                assert message.image.shape == (HEIGHT, WIDTH, 3)
                worker.done(message)
                got += 1
        read = time.perf_counter()
    finally:
        worker.stop()
    return summary("lossless WebP", sizes, len(frames), added - started, read - added)


def summary(name: str, sizes: list[int], count: int, add_s: float, read_s: float) -> dict:
    return {
        "encoding": name,
        "bytes_per_frame": int(np.mean(sizes)),
        "max_bytes_per_frame": max(sizes),
        "add_ms_per_frame": round(add_s / count * 1000, 2),
        "read_ms_per_frame": round(read_s / count * 1000, 2),
        "frames_per_s": round(count / (add_s + read_s), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=48, help="distinct 720p frames sent")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="redis-wire-") as folder:
        frames = video_frames(Path(folder), args.frames)
        server = RedisServer(Path(folder) / "redis")
        try:
            client = server.client()
            load_before = os.getloadavg()[0]
            results = [run_before(client, frames), run_after(server.url(), client, frames)]
            load_after = os.getloadavg()[0]
        finally:
            server.stop()
    report = {
        "frame": f"{WIDTH}x{HEIGHT}",
        "frames": len(frames),
        "cpus": os.cpu_count(),
        "load_average_1min": [round(load_before, 2), round(load_after, 2)],
        "results": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"{report['frames']} frames of {report['frame']} through Redis; {report['cpus']} CPUs, "
        f"load {load_before:.2f} -> {load_after:.2f}"
    )
    print(f"{'encoding':16s}{'bytes/frame':>14s}{'add ms':>10s}{'read ms':>10s}{'frames/s':>10s}")
    for r in results:
        print(
            f"{r['encoding']:16s}{r['bytes_per_frame']:>14,d}{r['add_ms_per_frame']:>10.1f}"
            f"{r['read_ms_per_frame']:>10.1f}{r['frames_per_s']:>10.1f}"
        )


if __name__ == "__main__":
    main()
