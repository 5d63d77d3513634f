"""Bytes a VOS session holds against the number of frames it has seen: the bounded memory
(vidserve's default budget of 16 frames) beside STCN's own unbounded memory, on one stream.

    uv run python benchmarks/vos_memory.py [--store checkpoints] [--frames 2000] [--threads N]
                                           [--mem-every N]

--mem-every overrides the checkpoint's setting for both sessions: the unbounded memory of a
checkpoint that memorises every frame grows so large that 2,000 frames take hours on a CPU.

Both sessions see the same synthetic 320x240 stream (a video played forwards and backwards) with
its first-frame objects prompted, and share each frame's key features, so the only difference
is the memory. Bytes are the keys and values the memory holds (what grows with the stream).
"""

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.data.synthetic.export import generate_video  # noqa: E402
from models.data.synthetic.world import WorldConfig  # noqa: E402
from models.vos import VosSession, encode_key_batch  # noqa: E402
from service.settings import SHIPPED_CHECKPOINTS  # noqa: E402
from service.worker.runners import load_runner_from_store  # noqa: E402

REPORT_AT = (1, 10, 50, 100, 250, 500, 1000, 1500, 2000, 5000, 10000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, default=SHIPPED_CHECKPOINTS)
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--mem-every", type=int, default=None, help="default: the checkpoint's")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    runner = load_runner_from_store(args.store, "stcn", "cpu")
    video = generate_video(WorldConfig(width=320, height=240, frames=24), 501, 0)
    first = video.object_map[0]
    prompt = {int(i): first == i for i in np.unique(first) if i}
    frames = np.concatenate([video.frames, video.frames[-2:0:-1]])
    settings = dataclasses.replace(runner.settings, mem_every=args.mem_every)
    bounded = VosSession(runner.model, settings)
    unbounded = VosSession(
        runner.model, dataclasses.replace(settings, max_memory_frames=None, max_memory_bytes=None)
    )
    for session in (bounded, unbounded):
        session.add_prompt(0, prompt)
    print(
        f"stcn {runner.info.version}, 320x240, {len(prompt)} objects, mem_every "
        f"{bounded.mem_every}; bounded budget {runner.settings.max_memory_frames} frames"
    )
    print(f"{'frames':>7} {'bounded bytes':>14} {'unbounded bytes':>16} {'ratio':>6} {'s':>6}")
    started = time.perf_counter()
    for t in range(1, args.frames + 1):
        prepared = bounded.prepare(frames[(t - 1) % len(frames)])
        [features] = encode_key_batch(runner.model, [prepared])
        bounded.step(prepared, features)
        unbounded.step(prepared, features)
        if t in REPORT_AT or t == args.frames:
            small, large = bounded.memory_bytes(), unbounded.memory_bytes()
            print(
                f"{t:7d} {small:14,d} {large:16,d} {large / small:6.1f} "
                f"{time.perf_counter() - started:6.0f}"
            )


if __name__ == "__main__":
    main()
