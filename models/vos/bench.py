"""Time per frame of a VOS session (key encoding included), e.g. on a CPU:

    uv run python -m models.vos.bench --config small --size 320x240 --objects 1 2 --threads 1

Frames are noise and weights random: the cost of STCN does not depend on either. The warm-up
fills the memory to its budget (16 frames by default: 80 frames at mem_every 5), so the timing
is that of a long stream; timed frames include value encoding every mem_every-th frame.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from models.vos.config import VosConfig
from models.vos.inference import SessionSettings, VosSession, prepare_for_inference
from models.vos.network import STCN

CONFIGS = {"small": VosConfig.small, "reference": VosConfig}


def seconds_per_frame(
    model: STCN,
    objects: int,
    size: tuple[int, int],
    frames: int = 40,
    warmup: int = 80,
    settings: SessionSettings | None = None,
) -> tuple[float, float]:
    """(wall, CPU) seconds of session.step per frame over `frames` frames after `warmup`.

    CPU time (of this process, all threads) is the steadier number on a shared machine.
    """
    height, width = size
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (warmup + frames, height, width, 3), dtype=np.uint8)
    session = VosSession(model, settings)
    session.add_prompt(0, _stripes(objects, height, width))
    for frame in video[:warmup]:
        session.step(frame)
    wall, cpu = time.perf_counter(), time.process_time()
    for frame in video[warmup:]:
        session.step(frame)
    return (time.perf_counter() - wall) / frames, (time.process_time() - cpu) / frames


def _stripes(objects: int, height: int, width: int) -> dict[int, np.ndarray]:
    """One horizontal band per object, as prompt masks."""
    masks = {}
    band = height // (objects + 1)
    for number in range(objects):
        mask = np.zeros((height, width), dtype=bool)
        mask[number * band : (number + 1) * band, width // 4 : 3 * width // 4] = True
        masks[number + 1] = mask
    return masks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="small")
    parser.add_argument("--size", default="320x240", help="WxH of the frames")
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    width, height = (int(side) for side in args.size.lower().split("x"))
    torch.manual_seed(0)
    model = prepare_for_inference(STCN(CONFIGS[args.config]()))
    parameters = sum(parameter.numel() for parameter in model.parameters())
    print(
        f"{args.config}: {parameters:,} parameters, {width}x{height}, "
        f"{torch.get_num_threads()} threads"
    )
    for objects in args.objects:
        wall, cpu = seconds_per_frame(model, objects, (height, width), args.frames)
        print(
            f"{objects} object(s): {wall * 1000:.1f} ms/frame wall ({1 / wall:.1f} FPS), "
            f"{cpu * 1000:.1f} ms/frame CPU"
        )


if __name__ == "__main__":
    main()
