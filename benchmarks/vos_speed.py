"""Frames per second of the shipped STCN through the worker's runner, for 1, 4 and 8 concurrent
streams: each round is one forward pass over a frame of every stream (the key encoder, then the
memory readouts, the decoder and the value encoder, each one batched pass over all streams),
then each stream's step commits its frame.

    uv run python benchmarks/vos_speed.py [--store checkpoints] [--warmup 80] [--frames 40]
                                          [--threads N] [--sessions-per-pass 0 1]

Streams are synthetic 320x240 videos (played forwards and backwards for as long as needed),
their first-frame objects prompted. The warm-up fills each stream's memory to its budget (16
frames: after 16 frames at mem_every 1, after 80 at mem_every 5), so the timing is that of a
long stream. Then, where a round's time goes: the batched key encoder, the batched readout and
decoder, the batched value encoder and the sessions' commits, per round and per stream-frame (a
cost per stream-frame that does not fall as streams are added is compute that batching cannot
share: on a CPU, convolutions already run near the cores' peak at a batch of one). Each is run
with every round's sessions in one pass (--sessions-per-pass 0) and one session per pass (1, the
runner's default on a CPU), side by side.
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
from models.vos import Segmentation, VosSession, encode_key_batch  # noqa: E402
from models.vos.inference import memorised_values, predict_from_memory  # noqa: E402
from service.settings import SHIPPED_CHECKPOINTS  # noqa: E402
from service.worker.runner import WorkItem, run_frames  # noqa: E402
from service.worker.runners import load_runner_from_store  # noqa: E402
from service.worker.runners.vos import SessionsForward  # noqa: E402

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


PHASES = ("key encoder", "readout+decoder", "value encoder", "commits")


def time_split(runner, videos, warmup: int, timed: int, per_pass: int | None) -> list[float]:
    """Seconds per round in each of PHASES, the same rounds as run_streams with the runner's
    calls made one phase at a time (segment_batch is predict_from_memory then
    memorised_values, per pass of `per_pass` sessions; each session then commits)."""
    sessions = [VosSession(runner.model, runner.settings) for _ in videos]
    for session, (_, prompt) in zip(sessions, videos, strict=True):
        session.add_prompt(0, {k: decode_rle(rle).astype(bool) for k, rle in prompt.items()})
    totals = [0.0] * len(PHASES)
    for t in range(warmup + timed):
        prepared = [
            session.prepare(frames[t % len(frames)])
            for session, (frames, _) in zip(sessions, videos, strict=True)
        ]
        if t == 0:  # the prompted frame: segmented in its step, as the runner does
            features = encode_key_batch(runner.model, prepared)
            for session, frame, feature in zip(sessions, prepared, features, strict=True):
                session.step(frame, feature)
            continue
        marks = [time.perf_counter()]
        features = encode_key_batch(runner.model, prepared)
        marks.append(time.perf_counter())
        passes = [
            slice(start, start + (per_pass or len(sessions)))
            for start in range(0, len(sessions), per_pass or len(sessions))
        ]
        probs = [p for part in passes for p in predict_from_memory(sessions[part], features[part])]
        marks.append(time.perf_counter())
        values = [
            v
            for part in passes
            for v in memorised_values(sessions[part], prepared[part], features[part], probs[part])
        ]
        marks.append(time.perf_counter())
        for session, frame, feature, frame_probs, frame_values in zip(
            sessions, prepared, features, probs, values, strict=True
        ):
            segmentation = Segmentation(
                session.next_frame_index, session.object_ids, frame_probs, frame_values
            )
            session.commit(frame, feature, segmentation)
        marks.append(time.perf_counter())
        if t >= warmup:
            for phase in range(len(PHASES)):
                totals[phase] += marks[phase + 1] - marks[phase]
    return [total / timed for total in totals]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, default=SHIPPED_CHECKPOINTS)
    parser.add_argument("--warmup", type=int, default=80)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--sessions-per-pass",
        type=int,
        nargs="+",
        default=[0, 1],
        help="sessions in one pass of readout, decoder and value encoder (0: all of a round)",
    )
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
    for per_pass in args.sessions_per_pass:
        runner.forward = SessionsForward(runner.model, runner.info.name, per_pass or None)
        label = "all sessions" if not per_pass else f"{per_pass} session(s)"
        print(f"-- {label} per pass of readout, decoder and value encoder")
        for count in args.streams:
            seconds = run_streams(runner, videos[:count], args.warmup, args.frames)
            per_stream = args.frames / seconds
            print(
                f"{count} stream(s): {per_stream:6.1f} frames/s per stream, "
                f"{per_stream * count:6.1f} frames/s in total"
            )
        print("where a round goes, ms per round (ms per stream-frame):")
        for count in args.streams:
            phases = time_split(runner, videos[:count], args.warmup, args.frames, per_pass or None)
            parts = ", ".join(
                f"{name} {seconds * 1e3:6.1f} ({seconds * 1e3 / count:5.1f})"
                for name, seconds in zip(PHASES, phases, strict=True)
            )
            total = sum(phases)
            print(
                f"{count} stream(s): {parts}; total {total * 1e3:6.1f} ({total * 1e3 / count:5.1f})"
            )


if __name__ == "__main__":
    main()
