"""PQ of the served panoptic models and id switches of their tracked things, from what
`POST /v1/segment` answers.

Generates held-out synthetic videos (a seed no training used, the validation set's generator
settings), starts `vidserve serve` on the given store, posts every video to each model, saves each
answer as `<video>.json` and scores the folder with the evaluator (`vidserve eval --task panoptic`
reads the same folder) against the videos' COCO panoptic ground truth: PQ, SQ, RQ over all
categories, things and stuff. A model whose things carry track ids (`<name>-video`) is also
scored for identity: id switches per ground-truth track (models.eval.tracking, as the VIS
benchmark counts them; the ground-truth tracks are the same objects' YouTube-VIS annotations).
Prints a table and writes a JSON report.

    uv run python benchmarks/panoptic_quality.py --models maskformer maskformer-video
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
from models.eval.panoptic import evaluate_panoptic_files  # noqa: E402
from models.eval.tracking import id_switches  # noqa: E402
from service.settings import SHIPPED_CHECKPOINTS  # noqa: E402

HELD_OUT_SEED = 950  # training used seed 100, validation seed 200, the panoptic tests 940+
SPLIT = "val"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["maskformer", "maskformer-video"])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    parser.add_argument("--store", type=Path, default=SHIPPED_CHECKPOINTS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "panoptic_quality.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "held-out"
        generate_dataset(root, WorldConfig(), args.videos, args.seed, split=SPLIT)
        gt_json = root / "panoptic" / f"panoptic_{SPLIT}.json"
        frames = len(json.loads(gt_json.read_text())["images"])
        truth = load_ytvis(root / "ytvis" / f"{SPLIT}.json")
        with served(args.store) as url:
            report = {
                name: score_model(url, name, root / "videos", gt_json, truth, Path(tmp) / name)
                for name in args.models
            }
    report = {
        "held_out": {"seed": args.seed, "videos": args.videos, "frames": frames},
        "command": " ".join(["uv run python benchmarks/panoptic_quality.py", *sys.argv[1:]]),
        "models": report,
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(
        f"{'model':18} {'PQ':>6} {'SQ':>6} {'RQ':>6} {'PQ_th':>6} {'PQ_st':>6}  s/video  idsw/track"
    )
    for name, row in report["models"].items():
        m, tracking = row["metrics"], row.get("tracking")
        switches = f"{tracking['id_switches_per_track']:.3f}" if tracking else "-"
        print(
            f"{name:18} {m['PQ']:6.3f} {m['SQ']:6.3f} {m['RQ']:6.3f} {m['PQ_th']:6.3f}"
            f" {m['PQ_st']:6.3f}  {row['seconds_per_video']:7.1f}  {switches}"
        )
    print(f"report: {args.out}")


def score_model(
    url: str, model: str, videos: Path, gt_json: Path, truth: YtvisDataset, answers: Path
) -> dict:
    """PQ of `model`'s answers for every video, through the evaluator's answer-folder reader;
    with track ids on its things, their id switches too."""
    answers.mkdir(parents=True)
    started = time.monotonic()
    for video in truth.videos.values():
        path = videos / f"{video.name}.mp4"
        response = httpx.post(
            f"{url}/v1/segment",
            data={"model": model},
            files={"video": (path.name, path.read_bytes(), "video/mp4")},
            timeout=600,
        )
        response.raise_for_status()
        (answers / f"{video.name}.json").write_bytes(response.content)
    seconds = (time.monotonic() - started) / len(truth.videos)
    row = {
        "metrics": dict(evaluate_panoptic_files(gt_json, answers).metrics),
        "seconds_per_video": seconds,
    }
    tracking = score_tracking(answers, truth)
    if tracking is not None:
        row["tracking"] = tracking
    return row


def score_tracking(answers: Path, truth: YtvisDataset) -> dict | None:
    """Id switches of the answered things against the ground-truth tracks; None when the model
    tracks nothing (no thing carries a track id)."""
    switches = matched = gt_tracks = untracked = tracked = 0
    for video_id, video in truth.videos.items():
        frames = json.loads((answers / f"{video.name}.json").read_text())["frames"]
        things: list[list[dict]] = [[] for _ in range(video.length)]
        for frame in frames:
            if frame["frame_index"] < video.length:
                things[frame["frame_index"]] = [s for s in frame["segments"] if s["isthing"]]
        untracked += sum(s["track_id"] is None for frame in things for s in frame)
        tracked += sum(s["track_id"] is not None for frame in things for s in frame)
        tracks = truth.tracks_of(video_id)
        gt = {track.id: [track.mask(t) for t in range(video.length)] for track in tracks}
        counted = id_switches(gt, things)
        switches, matched = switches + counted.switches, matched + counted.matched
        gt_tracks += len(tracks)
    if not tracked:
        return None
    return {
        "gt_tracks": gt_tracks,
        "matched_track_frames": matched,
        "id_switches": switches,
        "id_switches_per_track": switches / max(1, gt_tracks),
        "things_without_track_id": untracked,  # a tracked model answers none
    }


if __name__ == "__main__":
    main()
