"""Frames per second of the shipped STCN through the worker's runner, for 1, 4 and 8 concurrent
streams: each round is one forward pass with a frame of every stream (the key encoder over all
frames, then the memory readout, decoder and value encoder over all sessions: step_round), then
each stream's commit.

    uv run python benchmarks/vos_speed.py [--store checkpoints] [--warmup 80] [--frames 40]
                                          [--threads N] [--profile]

Streams are synthetic 320x240 videos (played forwards and backwards for as long as needed),
their first-frame objects prompted. The warm-up fills each stream's memory to its budget (16
frames: after 16 frames at mem_every 1, after 80 at mem_every 5), so the timing is that of a
long stream. Then, where a round's time goes: the batched key encoder, the batched rest of the
round (step_round) and the sessions' commits; with --profile, the torch profiler's top
operators of the timed rounds of each stream count.
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
from models.vos import VosSession, encode_key_batch, step_round  # noqa: E402
from service.settings import SHIPPED_CHECKPOINTS  # noqa: E402
from service.worker.runner import WorkItem, run_frames  # noqa: E402
from service.worker.runners import load_runner_from_store  # noqa: E402

WORLD = WorldConfig(width=320, height=240, frames=24)
# The profiled stages: the benchmark's own, then those step_round marks.
STAGES = [
    "key encoder",
    "round",
    "vos.readout",
    "vos.decoder",
    "vos.value_encoder",
    "vos.results",
    "commits",
]


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


def time_split(
    runner, videos, warmup: int, timed: int, profile: bool = False
) -> tuple[float, float, float]:
    """Seconds per round in the batched key encoder, in the batched rest of the round (memory
    readout, decoder, memorising: step_round) and in the sessions' commits, the same rounds as
    run_streams without the runner around."""
    sessions = [VosSession(runner.model, runner.settings) for _ in videos]
    for session, (_, prompt) in zip(sessions, videos, strict=True):
        session.add_prompt(0, {k: decode_rle(rle).astype(bool) for k, rle in prompt.items()})
    keys = rounds = commits = 0.0
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
    for t in range(warmup + timed):
        if profile and t == warmup:
            profiler.start()
        prepared = [
            session.prepare(frames[t % len(frames)])
            for session, (frames, _) in zip(sessions, videos, strict=True)
        ]
        started = time.perf_counter()
        with torch.profiler.record_function("key encoder"):
            features = encode_key_batch(runner.model, prepared)
        encoded = time.perf_counter()
        with torch.profiler.record_function("round"):
            plans = [
                session.plan(frame, feature)
                for session, frame, feature in zip(sessions, prepared, features, strict=True)
            ]
            steps = step_round(runner.model, plans)
        computed = time.perf_counter()
        with torch.profiler.record_function("commits"):
            for session, step in zip(sessions, steps, strict=True):
                session.commit(step)
        if t >= warmup:
            keys += encoded - started
            rounds += computed - encoded
            commits += time.perf_counter() - computed
    if profile:
        profiler.stop()
        averages = profiler.key_averages()
        stages = [event for event in averages if event.key in STAGES]
        print(f"profile of {len(videos)} stream(s), {timed} rounds, ms per round:")
        for event in sorted(stages, key=lambda event: STAGES.index(event.key)):
            print(f"  {event.key:<20} {event.cpu_time_total / 1e3 / timed:7.1f}")
        print(averages.table(sort_by="self_cpu_time_total", row_limit=20))
    return keys / timed, rounds / timed, commits / timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, default=SHIPPED_CHECKPOINTS)
    parser.add_argument("--warmup", type=int, default=80)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--profile", action="store_true", help="torch profiler per stage")
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
        keys, rounds, commits = time_split(
            runner, videos[:count], args.warmup, args.frames, args.profile
        )
        print(
            f"{count} stream(s), a round: key encoder (batched) {keys * 1e3:6.1f} ms, "
            f"readout, decoder and memorising (batched) {rounds * 1e3:6.1f} ms, "
            f"commits {commits * 1e3:5.1f} ms"
        )


if __name__ == "__main__":
    main()
