"""Per-frame COCO mask AP of the served instance models, from what `POST /v1/segment` answers.

Generates held-out synthetic videos (a seed no training used, the validation set's generator
settings), starts `vidserve serve` on the given store, posts every video to each model, turns the
answers into COCO results (service.writers.coco, as `vidserve segment --coco-out` does) and scores
them against the frames' ground truth with pycocotools (models.eval.instance). Prints a table and
writes a JSON report.

    uv run python benchmarks/instance_quality.py --models cascade-swin masktrack-instance
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
from models.data.ytvis import load_ytvis  # noqa: E402
from models.eval.instance import evaluate_instances  # noqa: E402
from models.train.instance import frame_image_id, frames_as_coco  # noqa: E402
from service.schemas import SegmentResponse  # noqa: E402
from service.settings import SHIPPED_CHECKPOINTS  # noqa: E402
from service.writers.coco import coco_results  # noqa: E402

HELD_OUT_SEED = 930  # training used seed 100, validation seed 200, the VIS tests 900
SCORE_THRESHOLD = 0.05  # AP ranks every detection; the reference evaluates at 0.05


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cascade-swin", "masktrack-instance"])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    parser.add_argument("--store", type=Path, default=SHIPPED_CHECKPOINTS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "instance_quality.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "held-out"
        generate_dataset(root, WorldConfig(), args.videos, args.seed, split="val")
        data = load_ytvis(root / "ytvis" / "val.json", root / "ytvis" / "JPEGImages")
        gt = frames_as_coco(data, list(data.videos))
        videos = {v: root / "videos" / f"{data.videos[v].name}.mp4" for v in data.videos}
        with served(args.store) as url:
            report = {
                name: score_model(url, name, videos, data.categories, gt) for name in args.models
            }
    report = {
        "held_out": {"seed": args.seed, "videos": args.videos, "frames": len(gt["images"])},
        "score_threshold": SCORE_THRESHOLD,
        "command": " ".join(["uv run python benchmarks/instance_quality.py", *sys.argv[1:]]),
        "models": report,
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{'model':24} {'AP':>6} {'AP50':>6} {'AP75':>6} {'AR100':>6}  s/video")
    for name, row in report["models"].items():
        m = row["metrics"]
        print(
            f"{name:24} {m['AP']:6.3f} {m['AP50']:6.3f} {m['AP75']:6.3f} {m['AR100']:6.3f}"
            f"  {row['seconds_per_video']:.1f}"
        )
    print(f"report: {args.out}")


def score_model(url: str, model: str, videos: dict, categories: dict, gt: dict) -> dict:
    """COCO mask AP of `model`'s answers for every video."""
    ids = {name: c for c, name in categories.items()}
    results, started = [], time.monotonic()
    for video_id, path in videos.items():
        response = httpx.post(
            f"{url}/v1/segment",
            data={"model": model, "score_threshold": str(SCORE_THRESHOLD)},
            files={"video": (path.name, path.read_bytes(), "video/mp4")},
            timeout=600,
        )
        response.raise_for_status()
        answer = SegmentResponse.model_validate(response.json())
        frames = {f.frame_index: frame_image_id(video_id, f.frame_index) for f in answer.frames}
        results += coco_results(answer, ids, frames)
    seconds = (time.monotonic() - started) / len(videos)
    metrics = dict(evaluate_instances(gt, results).metrics)
    return {"metrics": metrics, "detections": len(results), "seconds_per_video": seconds}


if __name__ == "__main__":
    main()
