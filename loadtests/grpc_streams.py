"""gRPC streaming load test: N concurrent StreamFrames calls, each sending JPEG frames at a target
frame rate as a live camera would, measuring every frame from send to result.

    uv run python loadtests/grpc_streams.py --target 127.0.0.1:50051 --streams 4 --fps 2 \\
        --duration 60 --report loadtests/reports/grpc.json

Each stream is its own connection and starts a session every --session-seconds until --duration
is over (so that time to first result has many samples); frames are a synthetic clip (--size,
--frames) encoded once as JPEG and looped. A frame is due every 1/fps seconds and is sent when due:
when the service falls behind, its frames wait in gRPC's buffers and then flow control holds the
writes back, so the backlog shows as per-frame latency, and writes held past the next frame's due
time are counted as late sends. A refused session (RESOURCE_EXHAUSTED) is retried after the
retry-after the server gives.

The JSON report (loadtests/stats.py): throughput, per-frame latency (send -> its result)
p50/p95/p99, time to first result (call start -> first result), errors by status code.
"""

import argparse
import asyncio
import sys
import time
from collections import Counter
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from media import jpeg_frames  # noqa: E402
from stats import Recorder, summary_line, write_report  # noqa: E402

from service.gateway.grpc_gen import vidserve_pb2 as pb  # noqa: E402
from service.gateway.grpc_gen import vidserve_pb2_grpc as pb_grpc  # noqa: E402


class Load:
    """Shared by the streams of one run."""

    def __init__(self, args, frames: list[bytes]):
        self.args = args
        self.frames = frames
        self.recorder = Recorder()
        self.sessions_ok = 0
        self.late_sends = 0
        self.unanswered = 0
        self.versions: Counter[str] = Counter()
        self.deadline = 0.0


async def run_stream(load: Load, number: int) -> None:
    """One client on its own connection: a session every --session-seconds until the deadline,
    each sending at the target rate. A session still receiving its last results when the next
    one starts overlaps it (as a camera that reconnects would), so the offered rate holds."""
    interval = 1.0 / load.args.fps
    async with grpc.aio.insecure_channel(load.args.target) as channel:
        stub = pb_grpc.VideoSegmentationStub(channel)
        # Streams start spread over one frame interval, as independent cameras would.
        await asyncio.sleep(number / load.args.streams * interval)
        slots, start = [], time.monotonic()
        while start < load.deadline - interval:
            end = min(load.deadline, start + load.args.session_seconds)
            slots.append(asyncio.create_task(run_slot(load, stub, end)))
            start = end
            await asyncio.sleep(max(0.0, start - time.monotonic()))
        await asyncio.gather(*slots)


async def run_slot(load: Load, stub, end: float) -> None:
    """Frames until `end`: one session, or new ones after a refusal or an error."""
    while time.monotonic() < end - 1.0 / load.args.fps:
        pause = await run_session(load, stub, end)
        if not pause:
            return
        await asyncio.sleep(min(pause, max(0.0, end - time.monotonic())))


async def run_session(load: Load, stub, end: float) -> float:
    """One StreamFrames call sending frames until `end`; returns seconds to wait before the next
    (after a refusal or an error), else 0."""
    args, recorder = load.args, load.recorder
    interval = 1.0 / args.fps
    sent: dict[int, float] = {}
    started = time.monotonic()
    call = stub.StreamFrames()
    config = pb.SessionConfig(model=args.model)
    if args.score_threshold is not None:
        config.score_threshold = args.score_threshold

    async def send() -> None:
        await call.write(pb.StreamRequest(config=config))
        metadata = await call.initial_metadata()
        if dict(metadata or ()).get("vidserve-session") != "accepted":
            return  # refused: the call ends with the status that says why
        first_due = time.monotonic()
        index = 0
        while True:
            due = first_due + index * interval
            if due >= end:
                break
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif -delay > interval:
                load.late_sends += 1
            image = load.frames[index % len(load.frames)]
            sent[index] = time.monotonic()
            await call.write(
                pb.StreamRequest(
                    frame=pb.ImageFrame(image=image, frame_index=index, time=index * interval)
                )
            )
            index += 1
        await call.done_writing()

    sender = asyncio.create_task(send())
    received = 0
    try:
        async for result in call:
            now = time.monotonic()
            sent_at = sent.pop(result.frame_index, None)
            if sent_at is None:
                recorder.error("unexpected_frame_index")
                continue
            if received == 0:
                recorder.first_result(now - started)
            recorder.frame(now - sent_at)
            load.versions[result.model_version] += 1
            received += 1
        await sender
        load.unanswered += len(sent)  # the stream ended without them: never expected
        load.sessions_ok += 1
        return 0.0
    except grpc.aio.AioRpcError as e:
        sender.cancel()
        recorder.error(e.code().name)
        load.unanswered += len(sent)
        if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            retry = dict(e.trailing_metadata() or ()).get("retry-after", "1")
            try:
                return float(retry)
            except ValueError:
                return 1.0
        return 0.5
    except asyncio.CancelledError:
        sender.cancel()
        raise
    finally:
        if not sender.done():
            sender.cancel()
        call.cancel()


async def warm_up(args, frames: list[bytes]) -> None:
    """A few frames one at a time before measuring: the first batches of a fresh server are
    slow (lazy initialisation), and that is not what a load test measures."""
    async with grpc.aio.insecure_channel(args.target) as channel:
        await channel.channel_ready()
        call = pb_grpc.VideoSegmentationStub(channel).StreamFrames()
        await call.write(pb.StreamRequest(config=pb.SessionConfig(model=args.model)))
        for index in range(args.warmup_frames):
            image = frames[index % len(frames)]
            await call.write(pb.StreamRequest(frame=pb.ImageFrame(image=image)))
            await call.read()
        await call.done_writing()
        while await call.read() != grpc.aio.EOF:
            pass


async def run(args) -> dict:
    frames = jpeg_frames(args.size, args.frames, args.seed)
    if args.warmup_frames:
        await asyncio.wait_for(warm_up(args, frames), timeout=300)
    load = Load(args, frames)
    load.recorder.start()
    load.deadline = time.monotonic() + args.duration
    await asyncio.gather(*(run_stream(load, k) for k in range(args.streams)))
    load.recorder.stop()
    if load.unanswered:
        load.recorder.errors["frames_unanswered"] += load.unanswered
    config = {
        "streams": args.streams,
        "target_fps_per_stream": args.fps,
        "duration_s": args.duration,
        "session_seconds": args.session_seconds,
        "model": args.model or "(default)",
        "frame_size": args.size,
        "clip_frames": args.frames,
        "jpeg_bytes_mean": round(sum(map(len, frames)) / len(frames)),
        "frame_latency": "from writing the frame to receiving its result",
        "time_to_first_result": "from opening the call to the session's first result",
        "command": " ".join(["python", "loadtests/grpc_streams.py", *sys.argv[1:]]),
    }
    report = load.recorder.report("grpc-streams", args.target, config)
    report.pop("request_latency_ms")
    report.pop("requests_per_s")
    report.pop("requests_ok")
    report["sessions_ok"] = load.sessions_ok
    report["achieved_fps_per_stream"] = round(report["throughput_fps"] / args.streams, 3)
    report["late_sends"] = load.late_sends
    report["model_versions_seen"] = dict(load.versions)
    return report


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", default="127.0.0.1:50051", help="gRPC host:port")
    parser.add_argument("--streams", type=int, default=4, help="concurrent streams [4]")
    parser.add_argument("--fps", type=float, default=2.0, help="target frames/s per stream [2]")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load [60]")
    parser.add_argument(
        "--session-seconds", type=float, default=15.0, help="length of one session [15]"
    )
    parser.add_argument("--model", default="", help="model [the service's default]")
    parser.add_argument("--score-threshold", type=float, default=None)
    parser.add_argument("--size", default="320x240", help="frame size [320x240]")
    parser.add_argument("--frames", type=int, default=48, help="clip length, looped [48]")
    parser.add_argument("--seed", type=int, default=4321)
    parser.add_argument("--warmup-frames", type=int, default=4, help="unmeasured, first [4]")
    parser.add_argument(
        "--report", type=Path, default=Path("loadtests/reports/grpc.json"), help="JSON report"
    )
    args = parser.parse_args(argv)
    if args.streams < 1 or args.fps <= 0 or args.duration <= 0 or args.session_seconds <= 0:
        parser.error("--streams, --fps, --duration and --session-seconds must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    report = asyncio.run(run(args))
    write_report(args.report, report)
    print(summary_line(report))
    print(f"report: {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
