"""What both load generators report, computed the same way: exact latency percentiles from every
sample (not histogram buckets), throughput, errors, and the machine the figures came from.

No heavy imports here (no torch): Locust imports this under gevent.
"""

import json
import math
import os
import platform
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

REPORT_VERSION = 1


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of sorted values, linear between closest ranks (as NumPy's
    default); NaN for no values."""
    if not sorted_values:
        return math.nan
    position = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def summarize_ms(seconds: list[float]) -> dict:
    """count, mean, p50, p95, p99 and max of durations given in seconds, in milliseconds."""
    values = sorted(s * 1000.0 for s in seconds)
    if not values:
        return {"count": 0, "mean": None, "p50": None, "p95": None, "p99": None, "max": None}
    return {
        "count": len(values),
        "mean": round(sum(values) / len(values), 2),
        "p50": round(percentile(values, 50), 2),
        "p95": round(percentile(values, 95), 2),
        "p99": round(percentile(values, 99), 2),
        "max": round(values[-1], 2),
    }


class Recorder:
    """Samples of one load run. `frame`, `first_result` and `request` take seconds."""

    def __init__(self):
        self.frame_latencies: list[float] = []
        self.first_results: list[float] = []
        self.request_latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.frames = 0
        self.requests_ok = 0
        self.started = time.monotonic()
        self.stopped: float | None = None

    def start(self) -> None:
        self.started = time.monotonic()
        self.stopped = None

    def stop(self) -> None:
        self.stopped = time.monotonic()

    def frame(self, latency: float) -> None:
        self.frames += 1
        self.frame_latencies.append(latency)

    def first_result(self, latency: float) -> None:
        self.first_results.append(latency)

    def request(self, latency: float) -> None:
        self.requests_ok += 1
        self.request_latencies.append(latency)

    def error(self, kind: str) -> None:
        self.errors[kind] += 1

    @property
    def seconds(self) -> float:
        end = self.stopped if self.stopped is not None else time.monotonic()
        return max(end - self.started, 1e-9)

    def report(self, kind: str, target: str, config: dict) -> dict:
        seconds = self.seconds
        return {
            "report_version": REPORT_VERSION,
            "generator": kind,
            "target": target,
            "config": config,
            "machine": machine(),
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - seconds)),
            "duration_s": round(seconds, 2),
            "frames": self.frames,
            "throughput_fps": round(self.frames / seconds, 3),
            "requests_ok": self.requests_ok,
            "requests_per_s": round(self.requests_ok / seconds, 3),
            "frame_latency_ms": summarize_ms(self.frame_latencies),
            "time_to_first_result_ms": summarize_ms(self.first_results),
            "request_latency_ms": summarize_ms(self.request_latencies),
            "errors": dict(sorted(self.errors.items())),
            "error_count": sum(self.errors.values()),
        }


def machine() -> dict:
    """The machine a report came from: CPU model, cores, memory, GPU, load."""
    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "gpu": _gpu(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        # Other work on the machine skews the figures: its load when the report was written.
        "load_average_1_5_15m": [round(x, 2) for x in os.getloadavg()],
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gpu() -> str:
    if shutil.which("nvidia-smi") is None:
        return "none"
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return ", ".join(line.strip() for line in out.splitlines() if line.strip()) or "none"


def write_report(path: Path, report: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def summary_line(report: dict) -> str:
    lat, first = report["frame_latency_ms"], report["time_to_first_result_ms"]
    return (
        f"{report['generator']}: {report['frames']} frames in {report['duration_s']} s = "
        f"{report['throughput_fps']} frames/s; frame latency p50 {lat['p50']} / p95 {lat['p95']} "
        f"/ p99 {lat['p99']} ms; first result p50 {first['p50']} ms; "
        f"errors {report['error_count']}"
    )
