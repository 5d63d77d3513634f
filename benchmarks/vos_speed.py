"""Frames per second of the shipped STCN through the worker's runner, for 1, 4 and 8 concurrent
streams: each round is one forward pass with a frame of every stream, so one key-encoder pass serves
all streams, then each stream's memory step runs.

    uv run python benchmarks/vos_speed.py [--store checkpoints] [--warmup 80] [--frames 40]
                                          [--threads N]

Streams are synthetic 320x240 videos (played forwards and backwards for as long as needed),
their first-frame objects prompted. The warm-up fills each stream's memory to its budget (16
frames: after 16 frames at mem_every 1, after 80 at mem_every 5), so the timing is that of a
long stream. Then, where a round's time goes: the batched key encoder against the sessions' own
steps.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.data.rle import decode_rle, encode_mask  # noqa: E402
from models.data.synthetic.export import generate_video  # noqa: E402
from models.data.synthetic.world import WorldConfig  # noqa: E402
from models.vos import VosSession, encode_key_batch  # noqa: E402
from service.settings import SHIPPED_CHECKPOINTS  # noqa: E402
from service.worker.runner import WorkItem, run_frames  # noqa: E402
from service.worker.runners import load_runner_from_store  # noqa: E402

WORLD = WorldConfig(width=320, height=240, frames=24)


def stream_video(seed: int) -> tuple[np.ndarray, dict[int, dict]]:
    """Frames of a ping-pong stream and the RLE prompt of its first frame."""
    video = generate_video(WORLD, seed, 0)
    ids = video.object_map[0]
    prompt = {int(i): encode_mask(ids == i) for i in np.unique(ids) if i}
    frames = np.concatenate([video.frames, video.frames[-2:0:-1]])
    return frames, prompt


def run_streams(runner, videos, warmup: int, timed: int) -> float:
    """Seconds for `timed` rounds (one frame of every stream each) after `warmup` rounds."""
    states = [runner.open_session({}) for _ in videos]
    started = 0.0
    for t in range(warmup + timed):
        if t == warmup:
            started = time.perf_counter()
        items = []
        for k, ((frames, prompt), state) in enumerate(zip(videos, states, strict=True)):
            frame = frames[t % len(frames)]
            items.append(WorkItem(f"s{k}", t, t / 8, frame, state, prompt if t == 0 else None))
        for result in run_frames(runner, items):
            if isinstance(result, Exception):
                raise result
    seconds = time.perf_counter() - started
    for state in states:
        runner.close_session(state)
    return seconds


def time_split(runner, videos, warmup: int, timed: int) -> tuple[float, float]:
    """Seconds per round in the batched key encoder and in the sessions' own steps (memory
    readout, decoder, memorising), the same rounds as run_streams without the runner around."""
    sessions = [VosSession(runner.model, runner.settings) for _ in videos]
    for session, (_, prompt) in zip(sessions, videos, strict=True):
        session.add_prompt(0, {k: decode_rle(rle).astype(bool) for k, rle in prompt.items()})
    keys = steps = 0.0
    for t in range(warmup + timed):
        prepared = [
            session.prepare(frames[t % len(frames)])
            for session, (frames, _) in zip(sessions, videos, strict=True)
        ]
        started = time.perf_counter()
        features = encode_key_batch(runner.model, prepared)
        encoded = time.perf_counter()
        for session, frame, feature in zip(sessions, prepared, features, strict=True):
            session.step(frame, feature)
        if t >= warmup:
            keys += encoded - started
            steps += time.perf_counter() - encoded
    return keys / timed, steps / timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, default=SHIPPED_CHECKPOINTS)
    parser.add_argument("--warmup", type=int, default=80)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    runner = load_runner_from_store(args.store, "stcn", "cpu")
    config = runner.model.config
    videos = [stream_video(500 + k) for k in range(max(args.streams))]
    objects = np.mean([len(prompt) for _, prompt in videos])
    print(
        f"stcn {runner.info.version}: {WORLD.width}x{WORLD.height} (working short edge "
        f"{config.short_edge}), {objects:.1f} objects per stream on average, memory budget "
        f"{runner.settings.max_memory_frames} frames, {torch.get_num_threads()} threads, cpu"
    )
    for count in args.streams:
        seconds = run_streams(runner, videos[:count], args.warmup, args.frames)
        per_stream = args.frames / seconds
        print(
            f"{count} stream(s): {per_stream:6.1f} frames/s per stream, "
            f"{per_stream * count:6.1f} frames/s in total"
        )
    for count in args.streams:
        keys, steps = time_split(runner, videos[:count], args.warmup, args.frames)
        print(
            f"{count} stream(s), a round: key encoder (batched) {keys * 1e3:6.1f} ms, "
            f"sessions' steps {steps * 1e3:6.1f} ms"
        )


if __name__ == "__main__":
    main()
