"""The GPU suite: one command, a JSON report. On a machine with one GPU (under 4 minutes):

    python3 benchmarks/gpu_suite.py [--out benchmarks/gpu_suite.json]

1. batching: frames/s of `masktrack-instance`, `masktrack` and `stcn` (the shipped checkpoints)
   at 1 and 16 concurrent streams, each round one batch with a frame of every stream, run as the
   worker runs it (service.worker.runner.run_frames: forward, then each session's step, in the
   worker's precision context: pinned host memory and non-blocking copies on CUDA);
2. host_to_device: a batch of 16 480p frames copied as they are against through pinned memory
   with non-blocking copies (the worker's way), ms per batch;
3. stcn_full: the full-size STCN (models/vos/config.py's defaults: ResNet-50 keys, random
   weights) at 854x480, fp32 and autocast fp16 and bf16 (the worker's VIDSERVE_PRECISION), ms per
   frame once the memory is full, and the peak device memory;
4. cuda_tests: `pytest -m cuda tests/test_cuda.py` (each test function called directly where
   pytest is missing).

`--smoke` runs the same code at tiny sizes on the CPU in seconds (the test suite does, so the suite
is known to work before a GPU runs it). A section that fails is reported with its error and the
others still run; the exit status is 1 then.

Imports: torch, numpy, cv2 (the synthetic frames), scipy and safetensors (the models), and for
the runners pydantic (service.schemas) and pycocotools (masks as RLE); nothing of the network
stack (no grpc, redis, av, fastapi, pydantic-settings). A machine without package index that
lacks pydantic or pycocotools gets them as wheels for its Python: here, where PyPI is reachable,

    uv run python benchmarks/gpu_suite.py --fetch-wheels     # the lock's versions into .whl/

then carry `.whl/`: the suite unpacks those wheels into a temporary folder on sys.path before it
imports anything else when one of them is missing (pydantic-core and pycocotools are compiled:
their wheels are for CPython 3.12 on x86-64 Linux).
"""

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# What the runners import that a bare torch machine may lack (module name -> distribution).
CARRIED = {
    "pydantic": "pydantic",
    "pydantic_core": "pydantic-core",
    "annotated_types": "annotated-types",
    "typing_inspection": "typing-inspection",
    "typing_extensions": "typing-extensions",
    "pycocotools": "pycocotools",
}
MODELS = ("masktrack-instance", "masktrack", "stcn")
PRECISIONS = ("fp32", "fp16", "bf16")


class Sizes:
    """How much each section does: the GPU run's, or the smoke run's on a CPU."""

    def __init__(self, smoke: bool):
        self.streams = (1, 2) if smoke else (1, 16)
        self.stream_size = (48, 64) if smoke else (240, 320)  # (H, W) of the synthetic videos
        self.warmup_rounds = 0 if smoke else 40  # stcn: the memory fills (mem_every 1, 16 frames)
        self.timed_rounds = 1 if smoke else 30
        self.stcn_config = "small" if smoke else "reference"
        self.stcn_size = (48, 64) if smoke else (480, 854)
        self.stcn_warmup = 1 if smoke else 80  # full size: 16 memory frames at mem_every 5
        self.stcn_frames = 1 if smoke else 40
        self.copy_frames = 2 if smoke else 16
        self.copy_size = (48, 64) if smoke else (480, 854)
        self.copy_repeats = 2 if smoke else 20


# --- wheels for a machine without a package index -------------------------------------------------
def missing_modules() -> list[str]:
    return [name for name in ("pydantic", "pycocotools") if importlib.util.find_spec(name) is None]


def unpack_wheels(folder: Path) -> Path | None:
    """Unpack every wheel in `folder` into a temporary folder put first on sys.path (and on
    PYTHONPATH, for the pytest this suite starts); None when there are none. Must run before
    torch is imported: torch imports typing_extensions, which the wheels may bring newer."""
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        return None
    target = Path(tempfile.mkdtemp(prefix="gpu-suite-site-"))
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(target)
    sys.path.insert(0, str(target))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(target), str(ROOT), os.environ.get("PYTHONPATH")])
    )
    return target


def fetch_wheels(folder: Path) -> None:
    """Download the wheels of CARRIED, at the versions installed here, for CPython 3.12 x86-64."""
    from importlib.metadata import version

    specs = [f"{dist}=={version(dist)}" for dist in CARRIED.values()]
    platforms = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
    command = ["pip3", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12"]
    command += ["--implementation", "cp", "-d", str(folder)]
    for name in platforms:
        command += ["--platform", name]
    subprocess.run(command + specs, check=True)


# --- the sections -----------------------------------------------------------------------------
def environment(device: str) -> dict:
    import torch

    cuda = device.startswith("cuda")
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name(device) if cuda else cpu_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def load_served(device: str) -> dict:
    """The shipped checkpoints' runners by model name, on `device`."""
    from models.checkpoints.store import CheckpointStore
    from service.worker.runners import load_runners

    store = CheckpointStore(ROOT / "checkpoints")
    runners = {}
    for family in store.families():
        for name in store.names(family):
            for runner in load_runners(store.latest(family, name), name, device):
                runners[runner.info.name] = runner
    return runners


def stream_videos(count: int, size: tuple[int, int]) -> list[tuple]:
    """(frames, RLE prompt of the first frame's objects) of `count` ping-pong synthetic streams."""
    import numpy as np

    from models.data.rle import encode_mask
    from models.data.synthetic.render import render_scene
    from models.data.synthetic.world import WorldConfig, simulate_scene

    world = WorldConfig(width=size[1], height=size[0], frames=24)
    videos = []
    for index in range(count):
        video = render_scene(simulate_scene(world, 500 + index, index, f"stream{index}"))
        ids = video.object_map[0]
        prompt = {int(i): encode_mask(ids == i) for i in np.unique(ids) if i}
        videos.append((np.concatenate([video.frames, video.frames[-2:0:-1]]), prompt))
    return videos


def stream_rate(runner, videos, context, warmup: int, timed: int) -> dict:
    """Frames/s of len(videos) closed-loop streams, one batch a round, after `warmup` rounds."""
    from service.worker.runner import WorkItem, run_frames

    states = [runner.open_session({}) for _ in videos]
    started = 0.0
    for t in range(warmup + timed):
        if t == warmup:
            synchronize(context.device)
            started = time.perf_counter()
        items = []
        for k, ((frames, prompt), state) in enumerate(zip(videos, states, strict=True)):
            first = prompt if t == 0 and runner.info.takes_prompt else None
            items.append(WorkItem(f"s{k}", t, t / 8, frames[t % len(frames)], state, first))
        for result in run_frames(runner, items, context):
            if isinstance(result, Exception):
                raise result
    synchronize(context.device)
    seconds = time.perf_counter() - started
    for state in states:
        runner.close_session(state)
    frames = timed * len(videos)
    return {
        "streams": len(videos),
        "frames_per_s": frames / seconds,
        "ms_per_round": 1000 * seconds / timed,
    }


def batching(device: str, precision: str, sizes: Sizes) -> dict:
    from service.worker.runner import forward_context

    context = forward_context(device, precision)
    started = time.perf_counter()
    runners = load_served(device)
    report = {"precision": context.precision, "load_seconds": time.perf_counter() - started}
    videos = stream_videos(max(sizes.streams), sizes.stream_size)
    report["frame_size"] = list(sizes.stream_size)
    for name in MODELS:
        rates = [
            stream_rate(runners[name], videos[:n], context, sizes.warmup_rounds, sizes.timed_rounds)
            for n in sizes.streams
        ]
        gain = rates[-1]["frames_per_s"] / rates[0]["frames_per_s"]
        report[name] = {"rates": rates, "gain": gain}
        print(f"  {name}: " + ", ".join(_rate_text(r) for r in rates) + f"; gain {gain:.2f}x")
    return report


def _rate_text(rate: dict) -> str:
    return f"{rate['streams']} stream(s) {rate['frames_per_s']:.1f} frames/s"


def host_to_device(device: str, sizes: Sizes) -> dict:
    """A batch of frames to the device: plain copies against the worker's pinned, non-blocking
    ones (ForwardContext.to_device), each batch followed by one synchronisation."""
    if not device.startswith("cuda"):
        return {"skipped": "pinned memory and non-blocking copies are used on CUDA only"}
    import numpy as np
    import torch

    from service.worker.runner import ForwardContext

    context = ForwardContext(device)
    rng = np.random.default_rng(0)
    frames = [
        rng.integers(0, 256, (*sizes.copy_size, 3), dtype=np.uint8)
        for _ in range(sizes.copy_frames)
    ]

    def plain():
        return [torch.from_numpy(frame).to(device) for frame in frames]

    def pinned():
        return [context.to_device(frame) for frame in frames]

    report = {"frames": len(frames), "frame_size": list(sizes.copy_size)}
    for name, copy in (("plain_ms", plain), ("pinned_non_blocking_ms", pinned)):
        copy()  # warm-up (the pinned allocator's first blocks)
        synchronize(device)
        started = time.perf_counter()
        for _ in range(sizes.copy_repeats):
            copy()
            synchronize(device)
        report[name] = 1000 * (time.perf_counter() - started) / sizes.copy_repeats
    print(f"  {report}")
    return report


def stcn_full(device: str, sizes: Sizes) -> dict:
    """The STCN architecture at full size (random weights: the cost does not depend on them), in
    each precision as the worker would run it (forward_context: fp16 falls back off CUDA)."""
    import torch

    from models.vos.bench import CONFIGS
    from models.vos.inference import prepare_for_inference
    from models.vos.network import STCN
    from service.worker.runner import forward_context

    torch.manual_seed(0)
    model = prepare_for_inference(STCN(CONFIGS[sizes.stcn_config]()).to(device))
    parameters = sum(parameter.numel() for parameter in model.parameters())
    report = {
        "config": sizes.stcn_config,
        "parameters": parameters,
        "frame_size": list(sizes.stcn_size),
        "objects": 2,
    }
    for precision in PRECISIONS:
        context = forward_context(device, precision)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(device)
        with context.autocast():
            wall = stcn_seconds_per_frame(model, device, sizes)
        peak = torch.cuda.max_memory_allocated(device) if device.startswith("cuda") else None
        report[precision] = {
            "ran_as": context.precision,
            "ms_per_frame": 1000 * wall,
            "peak_memory_mb": None if peak is None else peak / 2**20,
        }
        print(
            f"  {precision} (ran as {context.precision}): {1000 * wall:.1f} ms/frame, peak {peak}"
        )
    return report


def stcn_seconds_per_frame(model, device: str, sizes: Sizes) -> float:
    """Seconds per frame of one session with two objects (bands of the first frame), after
    `stcn_warmup` frames (the memory full), synchronised so that queued kernels count."""
    import numpy as np

    from models.vos.inference import VosSession

    height, width = sizes.stcn_size
    rng = np.random.default_rng(0)
    video = rng.integers(
        0, 256, (sizes.stcn_warmup + sizes.stcn_frames, height, width, 3), np.uint8
    )
    bands = {}
    for number in (1, 2):
        bands[number] = np.zeros((height, width), dtype=bool)
        bands[number][
            (number - 1) * height // 3 : number * height // 3, width // 4 : -width // 4
        ] = 1
    session = VosSession(model)
    session.add_prompt(0, bands)
    for frame in video[: sizes.stcn_warmup]:
        session.step(frame)
    synchronize(device)
    started = time.perf_counter()
    for frame in video[sizes.stcn_warmup :]:
        session.step(frame)
    synchronize(device)
    return (time.perf_counter() - started) / sizes.stcn_frames


def cuda_tests() -> dict:
    """tests/test_cuda.py: with pytest where it is importable (tests/conftest.py is left out: its
    fixtures need the network stack), else each test function called directly."""
    if importlib.util.find_spec("pytest") is not None:
        command = [sys.executable, "-m", "pytest", "-m", "cuda", "--noconftest", "-q"]
        command += ["-p", "no:cacheprovider", "-W", "ignore::pytest.PytestUnknownMarkWarning"]
        done = subprocess.run(
            [*command, "tests/test_cuda.py"], cwd=ROOT, capture_output=True, text=True
        )
        lines = done.stdout.strip().splitlines()
        print("\n".join(f"  {line}" for line in lines[-15:]))
        return {"runner": "pytest", "returncode": done.returncode, "summary": lines[-1:]}
    return _call_test_functions()


def _call_test_functions() -> dict:
    import torch

    from tests import test_cuda

    if not torch.cuda.is_available():
        return {"runner": "direct", "skipped": "no CUDA device"}
    results = {}
    for name in sorted(n for n in dir(test_cuda) if n.startswith("test_")):
        try:
            getattr(test_cuda, name)()
            results[name] = "passed"
        except Exception as error:
            results[name] = f"failed: {error!r}"
        print(f"  {name}: {results[name]}")
    failed = sum(r != "passed" for r in results.values())
    return {"runner": "direct", "returncode": int(failed > 0), "tests": results}


# --- the command ------------------------------------------------------------------------------
def run_section(report: dict, name: str, section, *args) -> bool:
    print(f"{name}:", flush=True)
    started = time.perf_counter()
    try:
        report[name] = section(*args)
        ok = report[name].get("returncode", 0) == 0
    except Exception as error:
        traceback.print_exc()
        report[name] = {"error": f"{type(error).__name__}: {error}"}
        ok = False
    report[name]["seconds"] = time.perf_counter() - started
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "gpu_suite.json")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, on the CPU, in seconds")
    parser.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS, help="for batching")
    parser.add_argument("--wheels", type=Path, default=ROOT / ".whl", help="wheels to unpack")
    parser.add_argument("--fetch-wheels", action="store_true", help="download them, then stop")
    parser.add_argument("--skip-tests", action="store_true", help="leave out the CUDA tests")
    args = parser.parse_args(argv)
    if args.fetch_wheels:
        fetch_wheels(args.wheels)
        return 0
    unpacked = unpack_wheels(args.wheels) if missing_modules() else None

    import torch

    device = args.device or ("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    sizes = Sizes(args.smoke)
    report = {"command": " ".join(sys.argv), "smoke": args.smoke, **environment(device)}
    report["wheels_unpacked"] = str(unpacked) if unpacked else None
    started = time.perf_counter()
    ok = run_section(report, "batching", batching, device, args.precision, sizes)
    ok &= run_section(report, "host_to_device", host_to_device, device, sizes)
    ok &= run_section(report, "stcn_full", stcn_full, device, sizes)
    if not args.skip_tests:
        ok &= run_section(report, "cuda_tests", cuda_tests)
    report["seconds"] = time.perf_counter() - started
    report["ok"] = bool(ok)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"report: {args.out} ({report['seconds']:.0f} s, {'ok' if ok else 'FAILED'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
