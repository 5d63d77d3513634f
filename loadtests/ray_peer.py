"""Peer benchmark: the same runner (`masktrack-instance`, the shipped checkpoint) served by vidserve
and by Ray Serve, side by side, with the same frames, the same batch policy and the same load.

    uv run --group ray python loadtests/ray_peer.py [--streams 1,4,8,16] [--rounds 3] \\
        [--frames 40] [--torch-threads 1] [--json loadtests/reports/ray_peer.json]

- vidserve: a `vidserve serve` started here (embedded worker, max batch 8, max wait 5 ms), each
  stream a gRPC StreamFrames call on its own connection.
- Ray Serve: a local Ray cluster started here in a process of its own, one replica of a deployment
  whose batch method is `@serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)` and calls the
  same runner's forward and step (`run_frames`) over the batch; each stream POSTs JPEG frames in
  the HTTP body on its own connection and gets the objects back as JSON. `max_ongoing_requests` is
  raised from its default (5) to 64 so that the batcher can see 8 or 16 requests at once.

The frames: a synthetic 320x240 video (--video-frames) as JPEG quality 95, as serving_bench.py
sends them. Each of N closed-loop streams sends a frame, waits for its answer, sends the next
(stream s starts at frame s of the video), first --warmup frames untimed, then --frames timed ones,
all streams starting the timed part together. Both systems run with the same torch threads
(--torch-threads) and only one system runs at a time (each is started for its turn and stopped
after it). Rounds alternate the order: vidserve then Ray, then Ray then vidserve.

Prints, per system and N: frames/s, p50/p99 frame latency (send -> answer), frames per forward
pass; per round and as medians over rounds: vidserve / Ray for frames/s (above 1: vidserve
faster) and for p50/p99 (below 1: vidserve lower). The load average is printed before every
round. Every answer is checked against the runner called in this process on the same decoded
pixels, and the two systems against each other (same objects, categories, boxes and scores within
float tolerance, masks equal). Writes a JSON report.

Without Ray installed (`uv sync` does not install it) `--systems vidserve` runs the vidserve side
and the results check alone (what tests/test_ray_peer.py does).
"""

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import (  # noqa: E402
    ROOT,
    bench_frames,
    free_port,
    percentile,
    start_server,
    stop_server,
)

MODEL = "masktrack-instance"
SYSTEMS = ("vidserve", "ray")
# Float tolerance between two answers for one frame: gRPC carries scores and boxes as float32,
# JSON as float64, and batches of other frames may change the last bits of a convolution.
BOX_TOLERANCE_PX = 0.01
SCORE_TOLERANCE = 1e-4


# --- the Ray Serve side (runs in a process of its own) --------------------------------------------
def ray_deployment(batch: int, wait_s: float, threads: int):
    """The Ray Serve deployment: one replica holding the runner, its batch method calling the
    runner over the batch as vidserve's worker does (forward, then each frame's step)."""
    from ray import serve

    @serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 1})
    class MaskTrackInstance:
        def __init__(self):
            import torch

            torch.set_num_threads(threads)
            from service.settings import SHIPPED_CHECKPOINTS
            from service.worker.runners import load_runner_from_store

            self.runner = load_runner_from_store(SHIPPED_CHECKPOINTS, MODEL, "cpu")
            self.session = self.runner.open_session({})  # the model's default options
            self.threads = torch.get_num_threads()

        async def __call__(self, request):
            objects, size = await self.infer(await request.body())
            return {"objects": objects, "batch_size": size, "torch_threads": self.threads}

        @serve.batch(max_batch_size=batch, batch_wait_timeout_s=wait_s)
        async def infer(self, bodies: list[bytes]) -> list:
            from service.images import decode_image
            from service.worker.runner import WorkItem, run_frames

            # The runner called inline, as in Ray's batching guide, the JPEGs decoded with it.
            # Two other ways were measured (8 and 16 streams, one thread): the JPEG decoded in
            # __call__, within 4% of this; the runner in a thread (asyncio.to_thread), 5-10%
            # slower, as the batcher then forms each next batch while the last computes (1.1-1.3
            # frames a pass against 3-5).
            images = [decode_image(body, 1920, 1080) for body in bodies]
            items = [WorkItem("ray", k, 0.0, image, self.session) for k, image in enumerate(images)]
            results = run_frames(self.runner, items)
            out = []
            for result in results:
                if isinstance(result, Exception):
                    raise result
                objects = [o.model_dump() for output in result for o in output.objects]
                out.append((objects, len(images)))
            return out

    return MaskTrackInstance


def serve_ray(port: int, batch: int, wait_s: float, threads: int, ready_file: Path) -> None:
    """The Ray side's process: a local Ray cluster, Serve's HTTP proxy on `port`, the deployment;
    writes `ready_file` once it answers and stops everything on SIGTERM."""
    import ray
    from ray import serve

    ray.init(
        address="local",
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=100 * 1024 * 1024,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}},
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(ray_deployment(batch, wait_s, threads).bind(), route_prefix="/")
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    ready_file.write_text("ready\n")
    while not stop:
        time.sleep(0.2)
    serve.shutdown()
    ray.shutdown()


def start_ray(args, log) -> tuple[subprocess.Popen, str]:
    port = free_port()
    ready = Path(tempfile.mkdtemp(prefix="ray-peer-")) / "ready"
    process = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--ray-server",
            str(port),
            "--ready-file",
            str(ready),
            "--batch",
            str(args.batch),
            "--batch-wait-ms",
            str(args.batch_wait_ms),
            "--torch-threads",
            str(args.torch_threads),
        ],
        cwd=ROOT,
        env={
            **os.environ,
            "OMP_NUM_THREADS": str(args.torch_threads),
            # Ray's workers start with this interpreter and PYTHONPATH, as in a plain install:
            # under `uv run` Ray would otherwise zip the working tree for every worker and start
            # them through uv (minutes of start-up here, the same code in the end).
            "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
        },
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its Ray processes stop with it, not with a Ctrl-C here first
    )
    deadline = time.monotonic() + 300
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_ray(process)
            raise SystemExit("Ray Serve did not start: see the log " + str(log.name))
        time.sleep(0.2)
    return process, f"http://127.0.0.1:{port}/"


def stop_ray(process: subprocess.Popen) -> None:
    """SIGTERM (the cluster shuts down in order), then whatever of its process group is left."""
    stop_server(process, timeout=60)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


# --- load: N closed-loop streams ------------------------------------------------------------------
class Start:
    """The streams start their timed frames together, once every stream has done its warm-up."""

    def __init__(self, streams: int):
        self.waiting = streams
        self.event = asyncio.Event()
        self.at = 0.0

    async def wait(self) -> None:
        self.waiting -= 1
        if self.waiting == 0:
            self.at = time.perf_counter()
            self.event.set()
        await self.event.wait()


class StreamRun:
    """What one stream measured: timed latencies, when it ended, its answers by video frame, and
    the forward passes its frames shared (1 / batch size, summed: the passes a frame 'used')."""

    def __init__(self):
        self.latencies: list[float] = []
        self.ended = 0.0
        self.answers: dict[int, list[tuple]] = {}
        self.passes = 0.0
        self.threads: set[int] = set()


def frame_order(stream: int, warmup: int, frames: int, video: int) -> list[int]:
    return [(stream + k) % video for k in range(warmup + frames)]


async def vidserve_stream(target, encoded, order, warmup, start: Start) -> StreamRun:
    import grpc

    from service.gateway.grpc_gen import vidserve_pb2 as pb
    from service.gateway.grpc_gen import vidserve_pb2_grpc as pb_grpc

    run = StreamRun()
    async with grpc.aio.insecure_channel(target) as channel:
        call = pb_grpc.VideoSegmentationStub(channel).StreamFrames()
        await call.write(pb.StreamRequest(config=pb.SessionConfig(model=MODEL)))
        await call.initial_metadata()
        for k, index in enumerate(order):
            if k == warmup:
                await start.wait()
            sent = time.perf_counter()
            await call.write(pb.StreamRequest(frame=pb.ImageFrame(image=encoded[index])))
            result = await call.read()
            took = time.perf_counter() - sent
            if result is grpc.aio.EOF:
                raise RuntimeError("the stream ended before its frames were answered")
            if k >= warmup:
                run.latencies.append(took)
            run.answers.setdefault(index, []).append(grpc_objects(result))
        run.ended = time.perf_counter()
        await call.done_writing()
        while await call.read() is not grpc.aio.EOF:
            pass
    return run


async def ray_stream(url, encoded, order, warmup, start: Start) -> StreamRun:
    run = StreamRun()
    headers = {"content-type": "image/jpeg"}
    async with httpx.AsyncClient(timeout=300) as client:
        for k, index in enumerate(order):
            if k == warmup:
                await start.wait()
            sent = time.perf_counter()
            response = await client.post(url, content=encoded[index], headers=headers)
            response.raise_for_status()
            answer = response.json()
            took = time.perf_counter() - sent
            if k >= warmup:
                run.latencies.append(took)
                run.passes += 1 / answer["batch_size"]
            run.threads.add(answer["torch_threads"])
            run.answers.setdefault(index, []).append(json_objects(answer["objects"]))
        run.ended = time.perf_counter()
    return run


def grpc_objects(result) -> list[tuple]:
    return [
        (o.category, o.score, tuple(o.box), tuple(o.mask.size), o.mask.counts)
        for o in result.objects
    ]


def json_objects(objects: list[dict]) -> list[tuple]:
    return [
        (
            o["category"],
            o["score"],
            tuple(o["box"]),
            tuple(o["mask"]["size"]),
            o["mask"]["counts"],
        )
        for o in objects
    ]


def run_load(system: str, where: str, encoded, streams: int, args) -> tuple[dict, dict]:
    """N closed-loop streams against one system: (figures, answers by video frame)."""
    stream = vidserve_stream if system == "vidserve" else ray_stream
    video = len(encoded)

    async def go():
        start = Start(streams)
        orders = [frame_order(s, args.warmup, args.frames, video) for s in range(streams)]
        return await asyncio.gather(
            *(stream(where, encoded, order, args.warmup, start) for order in orders)
        ), start.at

    runs, began = asyncio.run(go())
    latencies = [t for run in runs for t in run.latencies]
    seconds = max(run.ended for run in runs) - began
    figures = {
        "streams": streams,
        "frames": len(latencies),
        "seconds": round(seconds, 3),
        "fps": round(len(latencies) / seconds, 3),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
    }
    passes = sum(run.passes for run in runs)
    if passes:
        figures["frames_per_pass"] = round(len(latencies) / passes, 2)
    threads = set().union(*(run.threads for run in runs))
    if threads:
        figures["torch_threads"] = sorted(threads)
    answers: dict[int, list] = {}
    for run in runs:
        for index, found in run.answers.items():
            answers.setdefault(index, []).extend(found)
    return figures, answers


def vidserve_batches(url: str) -> tuple[float, float]:
    """(frames, passes) so far, from the server's batch size histogram."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    values = {}
    for name in ("vidserve_batch_size_sum", "vidserve_batch_size_count"):
        match = re.search(rf"^{name} (\S+)$", text, re.M)
        values[name] = float(match.group(1)) if match else 0.0
    return values["vidserve_batch_size_sum"], values["vidserve_batch_size_count"]


# --- one system's turn ----------------------------------------------------------------------------
def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (Ray's cluster included), MiB."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return round(total / 1024, 1)


def run_system(system: str, encoded, args, log) -> tuple[dict, dict]:
    """Start `system`, run every N, stop it: (its figures, its answers by N and video frame)."""
    started = time.perf_counter()
    threads = str(args.torch_threads)
    if system == "vidserve":
        env = {
            "OMP_NUM_THREADS": threads,
            "VIDSERVE_MODELS": "masktrack",  # the checkpoint that serves masktrack-instance
            "VIDSERVE_MAX_WAIT_MS": str(args.batch_wait_ms),
        }
        process, url, where = start_server(args.batch, max(args.streams), env=env, log=log)
    else:
        process, where = start_ray(args, log)
    out = {"start_s": round(time.perf_counter() - started, 2), "by_streams": {}}
    answers = {}
    try:
        for streams in args.streams:
            before = vidserve_batches(url) if system == "vidserve" else None
            figures, found = run_load(system, where, encoded, streams, args)
            if before is not None:
                frames, passes = (a - b for a, b in zip(vidserve_batches(url), before, strict=True))
                # warm-up frames included: the same policy, a few more passes
                figures["frames_per_pass"] = round(frames / passes, 2) if passes else None
            out["by_streams"][str(streams)] = figures
            answers[streams] = found
            print(
                f"  {system:8s} N={streams:2d}: {figures['fps']:6.2f} frames/s, "
                f"p50 {figures['p50_ms']:7.1f} ms, p99 {figures['p99_ms']:7.1f} ms, "
                f"{figures.get('frames_per_pass')} frames a pass",
                flush=True,
            )
        out["rss_mb_after"] = tree_rss_mb(process.pid)
    finally:
        (stop_server if system == "vidserve" else stop_ray)(process)
    return out, answers


# --- the results check ----------------------------------------------------------------------------
def reference_answers(decoded: np.ndarray, threads: int) -> dict[int, list[tuple]]:
    """The runner called here, frame by frame, on the pixels the servers decode."""
    import torch

    from service.settings import SHIPPED_CHECKPOINTS
    from service.worker.runner import WorkItem, run_frames
    from service.worker.runners import load_runner_from_store

    torch.set_num_threads(threads)
    runner = load_runner_from_store(SHIPPED_CHECKPOINTS, MODEL, "cpu")
    session = runner.open_session({})
    out = {}
    for index, image in enumerate(decoded):
        [result] = run_frames(runner, [WorkItem("direct", index, 0.0, image, session)])
        if isinstance(result, Exception):
            raise result
        out[index] = json_objects([o.model_dump() for r in result for o in r.objects])
    return out


def compare(expected: list[tuple], got: list[tuple], worst: dict) -> bool:
    """Same objects in the same order, boxes and scores within tolerance, masks equal (their IoU
    otherwise); updates the worst differences seen. True when within tolerance."""
    from pycocotools import mask as mask_utils

    if [o[0] for o in expected] != [o[0] for o in got]:
        worst["object_mismatches"] += 1
        return False
    same = True
    for (_, score_a, box_a, size_a, counts_a), (_, score_b, box_b, size_b, counts_b) in zip(
        expected, got, strict=True
    ):
        box_diff = float(np.max(np.abs(np.subtract(box_a, box_b)))) if box_a else 0.0
        score_diff = abs(score_a - score_b)
        worst["max_box_diff_px"] = max(worst["max_box_diff_px"], box_diff)
        worst["max_score_diff"] = max(worst["max_score_diff"], score_diff)
        iou = 1.0
        if counts_a != counts_b or size_a != size_b:
            worst["masks_not_equal"] += 1
            rle_a = {"size": list(size_a), "counts": counts_a}
            rle_b = {"size": list(size_b), "counts": counts_b}
            iou = float(mask_utils.iou([rle_a], [rle_b], [0])[0][0])
        worst["min_mask_iou"] = min(worst["min_mask_iou"], iou)
        worst["objects"] += 1
        if box_diff > BOX_TOLERANCE_PX or score_diff > SCORE_TOLERANCE or iou < 1.0:
            same = False
    return same


def check_results(reference: dict, answers: dict[str, dict]) -> dict:
    """Every answer of every system against the direct reference, and the systems' first answer
    for each frame and N against each other."""
    out = {"tolerance": {"box_px": BOX_TOLERANCE_PX, "score": SCORE_TOLERANCE, "masks": "equal"}}

    def fresh() -> dict:
        return {
            "answers": 0,
            "answers_out_of_tolerance": 0,
            "objects": 0,
            "object_mismatches": 0,
            "masks_not_equal": 0,
            "max_box_diff_px": 0.0,
            "max_score_diff": 0.0,
            "min_mask_iou": 1.0,
        }

    for system, by_streams in answers.items():
        worst = fresh()
        for by_frame in by_streams.values():
            for index, found in by_frame.items():
                for got in found:
                    worst["answers"] += 1
                    if not compare(reference[index], got, worst):
                        worst["answers_out_of_tolerance"] += 1
        out[f"{system}_vs_direct"] = worst
    if len(answers) == 2:
        first, second = (answers[s] for s in SYSTEMS)
        worst = fresh()
        for streams in sorted(set(first) & set(second)):
            for index in sorted(set(first[streams]) & set(second[streams])):
                worst["answers"] += 1
                if not compare(first[streams][index][0], second[streams][index][0], worst):
                    worst["answers_out_of_tolerance"] += 1
        out["vidserve_vs_ray"] = worst
    out["identical"] = all(
        v["answers"] > 0 and v["answers_out_of_tolerance"] == 0
        for k, v in out.items()
        if k.endswith(("_vs_direct", "_vs_ray"))
    )
    for v in out.values():
        if isinstance(v, dict) and "max_box_diff_px" in v:
            v["max_box_diff_px"] = float(f"{v['max_box_diff_px']:.3g}")
            v["max_score_diff"] = float(f"{v['max_score_diff']:.3g}")
    return out


# --- ratios ---------------------------------------------------------------------------------------
def ratios(vidserve: dict, ray: dict) -> dict:
    """vidserve / Ray: frames/s (> 1: vidserve faster), p50 and p99 (< 1: vidserve lower)."""
    return {
        "fps": round(vidserve["fps"] / ray["fps"], 3),
        "p50": round(vidserve["p50_ms"] / ray["p50_ms"], 3),
        "p99": round(vidserve["p99_ms"] / ray["p99_ms"], 3),
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", default="1,4,8,16", help="comma-separated N")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=40, help="timed frames a stream")
    parser.add_argument("--warmup", type=int, default=2, help="untimed frames a stream first")
    parser.add_argument("--video-frames", type=int, default=24, help="frames of the video sent")
    parser.add_argument("--torch-threads", type=int, choices=(1, 2), default=1)
    parser.add_argument("--batch", type=int, default=8, help="max batch size, both systems")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0, help="max batch wait, both")
    parser.add_argument("--systems", default="vidserve,ray", help="vidserve,ray or one of them")
    parser.add_argument("--json", type=Path, default=Path("loadtests/reports/ray_peer.json"))
    parser.add_argument("--log", type=Path, help="the servers' output (default: a temp file)")
    parser.add_argument("--ray-server", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ready-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.ray_server:
        serve_ray(
            args.ray_server, args.batch, args.batch_wait_ms / 1000, args.torch_threads,
            args.ready_file,
        )  # fmt: skip
        return

    args.streams = [int(n) for n in args.streams.split(",")]
    systems = [s for s in SYSTEMS if s in args.systems.split(",")]
    if "ray" in systems:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise SystemExit(
                "Ray is not installed: uv run --group ray python loadtests/ray_peer.py ... "
                "(or --systems vidserve)"
            ) from None
    log_path = args.log or Path(tempfile.mkstemp(prefix="ray-peer-", suffix=".log")[1])

    _, encoded, decoded = bench_frames(args.video_frames)
    reference = reference_answers(decoded, args.torch_threads)
    report = {
        "command": "uv run --group ray python loadtests/ray_peer.py " + " ".join(sys.argv[1:]),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "system": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(),
        },
        "model": MODEL,
        "frames": f"{args.video_frames}-frame synthetic 320x240 video, JPEG quality 95",
        "frames_a_stream": {"warmup": args.warmup, "timed": args.frames},
        "torch_threads": args.torch_threads,
        "batch_policy": {"max_batch_size": args.batch, "max_wait_ms": args.batch_wait_ms},
        "systems": {
            "vidserve": "vidserve serve (embedded worker), gRPC StreamFrames, one call a stream",
            "ray": "Ray Serve, one replica, @serve.batch, HTTP POST of the JPEG, JSON answer",
        },
        "rounds": [],
    }
    if "ray" in systems:
        import ray

        report["ray_version"] = ray.__version__
    answers: dict[str, dict] = {}
    with open(log_path, "a") as log:
        for number in range(args.rounds):
            order = systems if number % 2 == 0 else systems[::-1]
            load = load_average()
            print(f"round {number + 1}: {' then '.join(order)}, load average {load}", flush=True)
            entry = {"round": number + 1, "order": order, "load_average_before": load}
            for system in order:
                entry[f"load_average_before_{system}"] = load_average()
                entry[system], found = run_system(system, encoded, args, log)
                if number == 0:
                    answers[system] = found
            if len(systems) == 2:
                entry["vidserve_over_ray"] = {
                    n: ratios(entry["vidserve"]["by_streams"][n], entry["ray"]["by_streams"][n])
                    for n in entry["vidserve"]["by_streams"]
                }
                for n, r in entry["vidserve_over_ray"].items():
                    print(
                        f"  vidserve / Ray N={n:>2s}: frames/s {r['fps']:.3f}, "
                        f"p50 {r['p50']:.3f}, p99 {r['p99']:.3f}",
                        flush=True,
                    )
            report["rounds"].append(entry)

    report["summary"] = summary(report["rounds"], systems, args.streams)
    report["results_check"] = check_results(reference, answers)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print_summary(report, systems)
    print(f"report: {args.json}; the servers' log: {log_path}")


def summary(rounds: list[dict], systems: list[str], streams: list[int]) -> dict:
    """Medians over rounds, per system and N, and of the per-round ratios."""
    out = {}
    for system in systems:
        out[system] = {}
        for n in map(str, streams):
            figures = [r[system]["by_streams"][n] for r in rounds]
            out[system][n] = {
                key: round(statistics.median(f[key] for f in figures), 3)
                for key in ("fps", "p50_ms", "p99_ms")
            }
        out[system]["start_s"] = round(statistics.median(r[system]["start_s"] for r in rounds), 2)
        out[system]["rss_mb_after"] = round(
            statistics.median(r[system]["rss_mb_after"] for r in rounds), 1
        )
    if len(systems) == 2:
        out["median_vidserve_over_ray"] = {
            n: {
                key: round(statistics.median(r["vidserve_over_ray"][n][key] for r in rounds), 3)
                for key in ("fps", "p50", "p99")
            }
            for n in map(str, streams)
        }
    return out


def print_summary(report: dict, systems: list[str]) -> None:
    summary_ = report["summary"]
    rounds, threads = len(report["rounds"]), report["torch_threads"]
    print(f"\nmedians over {rounds} rounds, {threads} torch threads:")
    for system in systems:
        for n, f in summary_[system].items():
            if isinstance(f, dict):
                print(
                    f"  {system:8s} N={n:>2s}: {f['fps']:6.2f} frames/s, "
                    f"p50 {f['p50_ms']:7.1f} ms, p99 {f['p99_ms']:7.1f} ms"
                )
        print(
            f"  {system:8s} start {summary_[system]['start_s']} s, "
            f"memory after the run {summary_[system]['rss_mb_after']} MiB"
        )
    for n, r in summary_.get("median_vidserve_over_ray", {}).items():
        print(
            f"  median vidserve / Ray N={n:>2s}: frames/s {r['fps']:.3f} (target >= 1.2), "
            f"p50 {r['p50']:.3f}, p99 {r['p99']:.3f} (< 1: vidserve lower)"
        )
    check = report["results_check"]
    print(f"results identical within tolerance: {check['identical']}")
    for key, value in check.items():
        if key.endswith(("_vs_direct", "_vs_ray")):
            print(f"  {key}: {value}")


if __name__ == "__main__":
    main()
