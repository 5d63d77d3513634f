"""Action latency and server memory on a live gRPC stream to `slowfast-acrn`.

Starts `vidserve serve` on the given store (benchmarks/served.py) and streams a synthetic 320x240
video over StreamFrames: one generated clip at 8 fps played forwards, then backwards, and again,
as long as --frames asks, each frame carrying `time` = index / fps. Frames go as fast as gRPC's
flow control takes them (a frame counts as sent when the stream takes it from our iterator), or
at --rate frames a second.

What it measures:
- per key frame (the first frame at or after each whole second of the stream's clock, as the
  action head picks them): the delay from sending its last needed frame (the first frame at or
  after key time + look-ahead; the look-ahead from the checkpoint's manifest, as the head
  computes it) to receiving its ACTIONS event. Key frames whose look-ahead runs past the end of
  the stream are answered when it ends and are not timed; key frames with no tracked actor get
  no ACTIONS event at all;
- per frame: the delay from sending it to receiving its FRAME event, for comparison;
- the server process's RSS every --rss-every frames (as their FRAME events arrive): first,
  last, max, and the slope over the second half of the stream (MB per 1000 frames; flat memory
  is a slope near 0).

    uv run python benchmarks/action_stream.py --store checkpoints --frames 2000
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vidserve_client._proto import vidserve_pb2 as pb  # noqa: E402
from vidserve_client._proto import vidserve_pb2_grpc as pb_grpc  # noqa: E402
from vidserve_client.png import encode_rgb  # noqa: E402

from benchmarks.served import served  # noqa: E402
from models.action.config import ActionConfig  # noqa: E402
from models.action.inference import look_ahead_s  # noqa: E402
from models.checkpoints.checkpoint import read_manifest  # noqa: E402
from models.checkpoints.store import CheckpointStore  # noqa: E402
from models.data.synthetic.export import generate_video  # noqa: E402
from models.data.synthetic.world import WorldConfig  # noqa: E402
from service.worker.runners.action import AVA_FPS, MAX_RATE_FACTOR, TIME_EPSILON  # noqa: E402

MODEL = "slowfast-acrn"
FPS = 8  # the synthetic world's frame rate: the stream's clock
CLIP_FRAMES = 48  # distinct frames generated (6 s), looped forwards and backwards
SEED = 977
KEY_STRIDE_S = 1.0  # the head's default action_stride: key frames at whole seconds
ACTIONS, FRAME = pb.FrameResult.ACTIONS, pb.FrameResult.FRAME


# --- what the stream should answer, from the checkpoint alone ----------------------------------
@dataclass(frozen=True)
class Clock:
    """What the action head's timing depends on, from the checkpoint's manifest."""

    look_ahead_s: float  # seconds past a key frame that its clip reaches
    training_fps: float  # the clock of the frames the model was trained on


def manifest_clock(store: Path) -> Clock:
    """The served (newest) checkpoint's clock: its architecture's clip on the rate of the frames
    it was trained on, as the head computes it."""
    folder = CheckpointStore(store).latest("action", MODEL)
    if folder is None:
        raise SystemExit(f"{store} has no action/{MODEL} checkpoint")
    manifest = read_manifest(folder)
    fps = float(manifest.training.get("fps") or AVA_FPS)
    return Clock(look_ahead_s(ActionConfig.from_dict(manifest.architecture), fps), fps)


def key_frames(times: list[float], stride_s: float = KEY_STRIDE_S) -> list[int]:
    """The indices of the key frames: the first frame, then the first frame at or after each
    following multiple of the stride (the action head's rule)."""
    keys, next_time = [], None
    for index, t in enumerate(times):
        if next_time is None or t >= next_time - TIME_EPSILON:
            keys.append(index)
            next_time = (math.floor((t + TIME_EPSILON) / stride_s) + 1) * stride_s
    return keys


def buffered_frames(times: list[float], training_fps: float) -> list[int]:
    """The frames the head keeps in its clip buffer: it drops a frame closer than
    1 / (MAX_RATE_FACTOR x the training rate) after the last one kept (a faster stream is
    thinned)."""
    gap = 1.0 / (MAX_RATE_FACTOR * training_fps) - TIME_EPSILON
    kept: list[int] = []
    for index, t in enumerate(times):
        if not kept or t - times[kept[-1]] >= gap:
            kept.append(index)
    return kept


def last_needed_frame(times: list[float], key: int, clock: Clock) -> int | None:
    """The frame whose arrival lets the head answer the key frame: the first frame at or after
    key time + look-ahead that it buffers (the first such frame of the stream unless the head
    thins the stream). None: the stream ends before (the key frame is answered at its end)."""
    due = times[key] + clock.look_ahead_s - TIME_EPSILON
    kept = buffered_frames(times, clock.training_fps)
    return next((i for i in kept if i >= key and times[i] >= due), None)


def ping_pong(index: int, length: int) -> int:
    """The clip's frame shown at stream frame `index`: 0..length-1, then back down, and again."""
    if length == 1:
        return 0
    period = 2 * (length - 1)
    step = index % period
    return step if step < length else period - step


# --- the stream ------------------------------------------------------------------------------
@dataclass
class Timings:
    """perf_counter() stamps of the stream, written by its sender and reader threads."""

    sent: dict[int, float] = field(default_factory=dict)  # frame index -> sent
    frame_received: dict[int, float] = field(default_factory=dict)  # frame index -> FRAME
    actions_received: dict[int, float] = field(default_factory=dict)  # key frame -> ACTIONS
    rss_mb: list[tuple[int, float]] = field(default_factory=list)  # (frame index, MB)
    # frames sent and not yet answered, at each FRAME event: the queue that a stream at full
    # speed builds (its frames' latency is mostly this queue's wait)
    in_flight: list[int] = field(default_factory=list)


def requests(images: list[bytes], frames: int, rate: float | None, timings: Timings):
    """The config, then the frames; each is stamped as gRPC takes it (flow control decides when),
    or at its slot of --rate."""
    yield pb.StreamRequest(config=pb.SessionConfig(model=MODEL, fps=float(FPS)))
    start = time.perf_counter()
    for index in range(frames):
        if rate:
            time.sleep(max(0.0, start + index / rate - time.perf_counter()))
        image = images[ping_pong(index, len(images))]
        request = pb.StreamRequest(
            frame=pb.ImageFrame(image=image, frame_index=index, time=index / FPS)
        )
        timings.sent[index] = time.perf_counter()
        yield request


def rss_reader(pid: int):
    """A function giving the process's resident memory in MB: psutil's if installed, else
    /proc/<pid>/status VmRSS (Linux)."""
    try:
        import psutil

        process = psutil.Process(pid)
        return lambda: process.memory_info().rss / 2**20
    except ImportError:
        status = Path(f"/proc/{pid}/status")

        def from_proc() -> float:
            line = next(x for x in status.read_text().splitlines() if x.startswith("VmRSS:"))
            return int(line.split()[1]) / 1024  # kB

        return from_proc


def run_stream(target: str, pid: int, images: list[bytes], args) -> Timings:
    timings = Timings()
    rss = rss_reader(pid)
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.VideoSegmentationStub(channel)
        call = stub.StreamFrames(requests(images, args.frames, args.rate, timings))
        for event in call:
            now = time.perf_counter()
            if event.kind == ACTIONS:
                timings.actions_received[event.frame_index] = now
            elif event.kind == FRAME:
                timings.frame_received[event.frame_index] = now
                timings.in_flight.append(len(timings.sent) - len(timings.frame_received))
                last = event.frame_index == args.frames - 1
                if event.frame_index % args.rss_every == 0 or last:
                    timings.rss_mb.append((event.frame_index, rss()))
    return timings


# --- the report --------------------------------------------------------------------------------
def percentiles_ms(delays_s: list[float]) -> dict:
    if not delays_s:
        return {"count": 0, "p50_ms": None, "p99_ms": None}
    ms = np.array(delays_s) * 1000
    return {
        "count": len(ms),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
    }


def memory_summary(samples: list[tuple[int, float]]) -> dict:
    """First, last and max RSS, and the least-squares slope over the second half of the stream
    (the first half holds start-up: warm-up allocations, the buffer filling)."""
    if not samples:
        return {"samples": 0}
    frames = np.array([f for f, _ in samples], dtype=float)
    mb = np.array([m for _, m in samples])
    half = frames >= frames[-1] / 2
    slope = None
    if half.sum() >= 2 and np.ptp(frames[half]) > 0:
        slope = round(float(np.polyfit(frames[half], mb[half], 1)[0]) * 1000, 2)
    return {
        "samples": len(samples),
        "first_mb": round(float(mb[0]), 1),
        "last_mb": round(float(mb[-1]), 1),
        "max_mb": round(float(mb.max()), 1),
        "slope_mb_per_1000_frames_second_half": slope,
        "series": [[int(f), round(float(m), 1)] for f, m in samples],
    }


def build_report(timings: Timings, frames: int, clock: Clock, wall_s: float, args) -> dict:
    times = [i / FPS for i in range(frames)]
    keys = key_frames(times)
    action_delays, untimed, unanswered = [], [], []
    for key in keys:
        needed = last_needed_frame(times, key, clock)
        if key not in timings.actions_received:
            unanswered.append(key)  # no tracked actor on it (or the stream broke off)
        elif needed is None:
            untimed.append(key)  # answered at the stream's end
        else:
            action_delays.append(timings.actions_received[key] - timings.sent[needed])
    frame_delays = [timings.frame_received[i] - timings.sent[i] for i in timings.frame_received]
    return {
        "model": MODEL,
        "store": str(args.store),
        "frames": frames,
        "fps": FPS,
        "rate": args.rate,
        "look_ahead_s": clock.look_ahead_s,
        "training_fps": clock.training_fps,
        "wall_s": round(wall_s, 2),
        "frames_per_s": round(len(timings.frame_received) / wall_s, 2),
        "frame_events": len(timings.frame_received),
        "key_frames": len(keys),
        "actions_latency": percentiles_ms(action_delays),
        "key_frames_answered_at_end": untimed,
        "key_frames_without_actions": unanswered,
        "frame_latency": percentiles_ms(frame_delays),
        "frames_in_flight": {
            "p50": float(np.median(timings.in_flight)) if timings.in_flight else None,
            "max": max(timings.in_flight, default=None),
        },
        "rss": memory_summary(timings.rss_mb),
    }


def print_report(report: dict) -> None:
    actions, frame, rss = report["actions_latency"], report["frame_latency"], report["rss"]
    print(
        f"{report['frames']} frames at {report['fps']} fps, "
        f"look-ahead {report['look_ahead_s']:.3f} s, {report['wall_s']} s "
        f"({report['frames_per_s']} frames/s)"
    )
    print(
        f"ACTIONS latency (last needed frame sent -> event): p50 {actions['p50_ms']} ms, "
        f"p99 {actions['p99_ms']} ms, {actions['count']} of {report['key_frames']} key frames "
        f"(answered at the end: {len(report['key_frames_answered_at_end'])}, "
        f"no actions: {len(report['key_frames_without_actions'])})"
    )
    print(
        f"FRAME latency (frame sent -> event): p50 {frame['p50_ms']} ms, "
        f"p99 {frame['p99_ms']} ms, {frame['count']} frames; frames in flight: "
        f"p50 {report['frames_in_flight']['p50']}, max {report['frames_in_flight']['max']}"
    )
    if rss["samples"]:
        print(
            f"server RSS: first {rss['first_mb']} MB, last {rss['last_mb']} MB, "
            f"max {rss['max_mb']} MB, second-half slope "
            f"{rss['slope_mb_per_1000_frames_second_half']} MB / 1000 frames "
            f"({rss['samples']} samples)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=ROOT / "checkpoints")
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=None, help="frames/s (default: no limit)")
    parser.add_argument("--rss-every", type=int, default=20, help="frames between RSS samples")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "action_stream.json")
    args = parser.parse_args()
    if args.frames < 1 or args.rss_every < 1 or (args.rate is not None and args.rate <= 0):
        parser.error("--frames and --rss-every must be >= 1, --rate > 0")

    clock = manifest_clock(args.store)
    video = generate_video(WorldConfig(frames=CLIP_FRAMES, fps=FPS), SEED, 0)
    images = [encode_rgb(frame) for frame in video.frames]  # PNG, encoded once

    server = served(args.store)
    with server:
        start = time.perf_counter()
        timings = run_stream(server.grpc_target, server.process.pid, images, args)
        wall_s = time.perf_counter() - start
    report = build_report(timings, args.frames, clock, wall_s, args)
    print_report(report)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
