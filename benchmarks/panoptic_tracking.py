"""Temporal consistency of video panoptic (`<name>-video`): id switches per ground-truth track of
the tracked things, from what `POST /v1/segment` answers, on held-out synthetic videos.

Generates the held-out videos (seed 950, the validation set's generator settings: WorldConfig()
defaults), starts `vidserve serve` on the given store, posts every video to each model and counts,
per video, the id switches of the answered things (segments with isthing) against the world's
ground-truth object tracks (its YouTube-VIS annotations: the panoptic things, one track per
object) with models.eval.tracking, the counting the VIS benchmark uses. Prints a table and writes
a JSON report.

    uv run python benchmarks/panoptic_tracking.py [--store checkpoints] [--models maskformer-video]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.served import served  # noqa: E402
from models.data.synthetic.export import generate_dataset  # noqa: E402
from models.data.synthetic.world import WorldConfig  # noqa: E402
from models.data.ytvis import YtvisDataset, load_ytvis  # noqa: E402
from models.eval.tracking import id_switches  # noqa: E402
from service.settings import SHIPPED_CHECKPOINTS  # noqa: E402

HELD_OUT_SEED = 950  # as benchmarks/panoptic_quality.py: no training or test used it
SPLIT = "val"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["maskformer-video"])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    parser.add_argument("--store", type=Path, default=SHIPPED_CHECKPOINTS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "panoptic_tracking.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "held-out"
        generate_dataset(root, WorldConfig(), args.videos, args.seed, split=SPLIT)
        truth = load_ytvis(root / "ytvis" / f"{SPLIT}.json")
        with served(args.store) as url:
            rows = {name: score_model(url, name, root / "videos", truth) for name in args.models}
    report = {
        "held_out": {"seed": args.seed, "videos": args.videos, "store": str(args.store)},
        "command": " ".join(["uv run python benchmarks/panoptic_tracking.py", *sys.argv[1:]]),
        "models": rows,
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{'model':20} {'gt tracks':>9} {'matched':>8} {'switches':>8} {'per track':>9}  s/video")
    for name, row in rows.items():
        print(
            f"{name:20} {row['gt_tracks']:9d} {row['matched_track_frames']:8d}"
            f" {row['id_switches']:8d} {row['id_switches_per_track']:9.3f}"
            f"  {row['seconds_per_video']:.1f}"
        )
    print(f"report: {args.out}")


def score_model(url: str, model: str, videos: Path, truth: YtvisDataset) -> dict:
    """Id switches of `model`'s tracked things over every video of the ground truth."""
    switches = matched = gt_tracks = untracked = 0
    started = time.monotonic()
    for video_id, video in truth.videos.items():
        things = answered_things(url, model, videos / f"{video.name}.mp4", video.length)
        untracked += sum(s["track_id"] is None for frame in things for s in frame)
        tracks = truth.tracks_of(video_id)
        gt = {track.id: [track.mask(t) for t in range(video.length)] for track in tracks}
        counted = id_switches(gt, things)
        switches, matched = switches + counted.switches, matched + counted.matched
        gt_tracks += len(tracks)
    return {
        "gt_tracks": gt_tracks,
        "matched_track_frames": matched,
        "id_switches": switches,
        "id_switches_per_track": switches / max(1, gt_tracks),
        "things_without_track_id": untracked,  # a tracked model answers none
        "seconds_per_video": (time.monotonic() - started) / max(1, len(truth.videos)),
    }


def answered_things(url: str, model: str, path: Path, length: int) -> list[list[dict]]:
    """Per frame index (0..length-1) the thing segments the model answered for the video."""
    response = httpx.post(
        f"{url}/v1/segment",
        data={"model": model},
        files={"video": (path.name, path.read_bytes(), "video/mp4")},
        timeout=600,
    )
    response.raise_for_status()
    things: list[list[dict]] = [[] for _ in range(length)]
    for frame in response.json()["frames"]:
        if frame["frame_index"] < length:
            things[frame["frame_index"]] = [s for s in frame["segments"] if s["isthing"]]
    return things


if __name__ == "__main__":
    main()
