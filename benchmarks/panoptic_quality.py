"""PQ of the served panoptic models, from what `POST /v1/segment` answers.

Generates held-out synthetic videos (a seed no training used, the validation set's generator
settings), starts `vidserve serve` on the given store, posts every video to each model, saves each
answer as `<video>.json` and scores the folder with the evaluator (`vidserve eval --task panoptic`
reads the same folder) against the videos' COCO panoptic ground truth: PQ, SQ, RQ over all
categories, things and stuff. Prints a table and writes a JSON report.

    uv run python benchmarks/panoptic_quality.py --models maskformer
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
from models.eval.panoptic import evaluate_panoptic_files  # noqa: E402
from service.settings import SHIPPED_CHECKPOINTS  # noqa: E402

HELD_OUT_SEED = 950  # training used seed 100, validation seed 200, the panoptic tests 940+
SPLIT = "val"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["maskformer"])
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
        videos = sorted((root / "videos").glob("*.mp4"))
        with served(args.store) as url:
            report = {
                name: score_model(url, name, videos, gt_json, Path(tmp) / "answers" / name)
                for name in args.models
            }
    report = {
        "held_out": {"seed": args.seed, "videos": args.videos, "frames": frames},
        "command": " ".join(["uv run python benchmarks/panoptic_quality.py", *sys.argv[1:]]),
        "models": report,
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{'model':16} {'PQ':>6} {'SQ':>6} {'RQ':>6} {'PQ_th':>6} {'PQ_st':>6}  s/video")
    for name, row in report["models"].items():
        m = row["metrics"]
        print(
            f"{name:16} {m['PQ']:6.3f} {m['SQ']:6.3f} {m['RQ']:6.3f} {m['PQ_th']:6.3f}"
            f" {m['PQ_st']:6.3f}  {row['seconds_per_video']:.1f}"
        )
    print(f"report: {args.out}")


def score_model(url: str, model: str, videos: list[Path], gt_json: Path, answers: Path) -> dict:
    """PQ of `model`'s answers for every video, through the evaluator's answer-folder reader."""
    answers.mkdir(parents=True)
    started = time.monotonic()
    for path in videos:
        response = httpx.post(
            f"{url}/v1/segment",
            data={"model": model},
            files={"video": (path.name, path.read_bytes(), "video/mp4")},
            timeout=600,
        )
        response.raise_for_status()
        (answers / f"{path.stem}.json").write_bytes(response.content)
    seconds = (time.monotonic() - started) / len(videos)
    metrics = dict(evaluate_panoptic_files(gt_json, answers).metrics)
    return {"metrics": metrics, "seconds_per_video": seconds}


if __name__ == "__main__":
    main()
