"""A session's memory in the action head over a long stream: frame buffer and feature banks.

Drives the served action head (service/worker/runners/action.py, ActionHead, with the stored
checkpoint: by default `slowfast-acrn-lfb`, whose banks hold each track's past features) in
this process with --frames frames of a synthetic 320x240 video at 8 fps (one generated clip
played forwards and backwards, as benchmarks/action_stream.py streams it). The tracker stage is
left out on purpose, so a 10,000-frame stream takes minutes, not an hour: each frame's "tracks"
are the clip's annotated objects with their true boxes, and their track ids change every
--churn-s seconds (every object becomes a new track), the worst case for the banks, which must
forget lost tracks. Every key frame runs the model (features, bank read, scores, bank write).

Prints and writes (JSON) the session's bytes (frame buffer, banks), the banks' entries and
tracks, and this process's RSS, sampled every --every frames: first, max, last, and the slope
over the second half (bytes per 1000 frames; flat memory is a slope near 0).

    uv run python benchmarks/action_bank_memory.py --frames 10000
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.checkpoints.checkpoint import load_checkpoint  # noqa: E402
from models.checkpoints.store import CheckpointStore  # noqa: E402
from models.data.synthetic.export import generate_video  # noqa: E402
from models.data.synthetic.world import THING_CATEGORIES, WorldConfig  # noqa: E402
from service.schemas import DetectedObject, Mask  # noqa: E402
from service.worker.runner import ActionsOutput, FrameOutput, WorkItem  # noqa: E402
from service.worker.runners.action import AVA_FPS, ActionHead  # noqa: E402

FPS = 8
CLIP_FRAMES = 48
SEED = 978
EMPTY_MASK = Mask(size=[240, 320], counts="")  # the head reads boxes only


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=ROOT / "checkpoints")
    parser.add_argument("--model", default="slowfast-acrn-lfb")
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--churn-s", type=float, default=6.0, help="seconds a track id lives")
    parser.add_argument("--every", type=int, default=250, help="frames between samples")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "action_bank_memory.json")
    args = parser.parse_args()

    folder = CheckpointStore(args.store).latest("action", args.model)
    if folder is None:
        sys.exit(f"{args.store}: no action checkpoint named {args.model}")
    loaded = load_checkpoint(folder, "cpu", family="action")
    manifest = loaded.manifest
    head = ActionHead(
        loaded.model,
        args.model,
        manifest.version,
        manifest.class_names,
        float(manifest.training.get("fps") or AVA_FPS),
        list(THING_CATEGORIES.values()),
    )
    video = generate_video(WorldConfig(frames=CLIP_FRAMES, fps=FPS), SEED, 0)
    state = head.open_session({})
    samples, key_frames, started = [], 0, time.monotonic()
    for index in range(args.frames):
        t = index / FPS
        k = ping_pong(index, CLIP_FRAMES)
        item = WorkItem("bench", index, t, video.frames[k], state)
        outputs = head.step(state, item, [tracks(video, k, index, t, args.churn_s)])
        key_frames += sum(isinstance(o, ActionsOutput) for o in outputs)
        if index % args.every == 0 or index == args.frames - 1:
            samples.append(sample(index, state))
            print_sample(samples[-1], args.frames)
    report = {
        "command": " ".join(["uv run python benchmarks/action_bank_memory.py", *sys.argv[1:]]),
        "model": args.model,
        "version": manifest.version,
        "architecture": {
            k: manifest.architecture.get(k) for k in ("lfb", "lfb_window_s", "lfb_per_second")
        },
        "frames": args.frames,
        "fps": FPS,
        "churn_s": args.churn_s,
        "key_frames_answered": key_frames,
        "wall_s": round(time.monotonic() - started, 1),
        "summary": {
            name: summarise(samples, name)
            for name in ("session_bytes", "bank_bytes", "bank_entries", "rss_mb")
        },
        "samples": samples,
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["summary"], indent=1))
    print(f"report: {args.out}")


def ping_pong(index: int, length: int) -> int:
    period = 2 * length - 2
    k = index % period
    return k if k < length else period - k


def tracks(video, k: int, index: int, t: float, churn_s: float) -> FrameOutput:
    """The clip's annotated objects on frame k as tracks; ids renewed every churn_s seconds."""
    generation = int(t // churn_s)
    objects = []
    for obj in video.scene.objects:
        if obj.is_distractor:
            continue
        ys, xs = np.nonzero(video.object_map[k] == obj.object_id)
        if len(xs) == 0:
            continue
        box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
        objects.append(
            DetectedObject(
                track_id=generation * 100 + obj.object_id,
                category=THING_CATEGORIES[obj.category_id],
                score=1.0,
                box=box,
                mask=EMPTY_MASK,
            )
        )
    return FrameOutput(index, t, objects)


def sample(index: int, state) -> dict:
    banks = state.banks
    return {
        "frame": index,
        "session_bytes": state.buffered_bytes(),
        "bank_bytes": banks.nbytes() if banks is not None else 0,
        "bank_entries": len(banks) if banks is not None else 0,
        "bank_tracks": len(banks.banks) if banks is not None else 0,
        "buffered_frames": len(state.frames),
        "rss_mb": round(rss_mb(), 1),
    }


def rss_mb() -> float:
    """This process's resident memory now (Linux: /proc), else its peak."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def summarise(samples: list[dict], name: str) -> dict:
    values = [s[name] for s in samples]
    half = samples[len(samples) // 2 :]
    x = np.array([s["frame"] for s in half], dtype=float)
    y = np.array([s[name] for s in half], dtype=float)
    slope = float(np.polyfit(x, y, 1)[0]) * 1000 if len(half) > 1 else 0.0
    return {
        "first": values[0],
        "max": max(values),
        "last": values[-1],
        "slope_per_1000_frames_second_half": round(slope, 3),
    }


def print_sample(s: dict, total: int) -> None:
    print(
        f"frame {s['frame']:>6}/{total}: session {s['session_bytes'] / 2**20:6.2f} MiB "
        f"(banks {s['bank_bytes'] / 1024:7.1f} KiB, {s['bank_entries']:3d} features of "
        f"{s['bank_tracks']:2d} tracks), {s['buffered_frames']:2d} frames buffered, "
        f"RSS {s['rss_mb']:.0f} MB",
        flush=True,
    )


if __name__ == "__main__":
    main()
