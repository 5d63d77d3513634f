"""Frame-mAP@0.5 of the served action pipeline (`masktrack` -> the action head) from what
`POST /v1/segment` answers, beside the same checkpoint's mAP with the ground-truth boxes.

Generates held-out synthetic videos (a seed no training used, the validation set's generator
settings with 48 frames), starts `vidserve serve` on the given store, posts every video to the
action model, saves each answer as `<video>.json` and scores the folder with the evaluator
(`vidserve eval --task action --gt <csv> --pred <folder>` reads the same folder) against the
videos' AVA ground truth: "detected boxes", the tracker's actors labelled by the head. Then loads
the version of the action checkpoint that answered (its stage in the answers) from the store and
scores it on the same key frames with the ground-truth boxes (the trainer's validation,
models.train.action.evaluate_action_model): the difference is the detector's share of the gap.
Prints a table and writes a JSON report.

    uv run python benchmarks/action_quality.py
    uv run python benchmarks/action_quality.py --store /tmp/smoke/store --videos 1 --frames 16
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
from models.eval.action import METRIC_NAME, evaluate_action_files  # noqa: E402
from service.settings import SHIPPED_CHECKPOINTS, resolve_device  # noqa: E402

# Training used seed 100, validation seed 200, panoptic_quality.py 950, the panoptic tests 940+.
HELD_OUT_SEED = 960
SPLIT = "val"
FAMILY = "action"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="slowfast-acrn")
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--frames", type=int, default=48, help="frames per video (8 fps)")
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    parser.add_argument("--store", type=Path, default=SHIPPED_CHECKPOINTS)
    parser.add_argument("--device", default="auto", help="of the ground-truth-box pass")
    parser.add_argument(
        "--score-threshold", type=float, help="the tracker's (default: the model's own, 0.5)"
    )
    parser.add_argument(
        "--bank-window",
        type=float,
        help="a feature-bank model's action_bank_window (default: its own; 0: off); the "
        "ground-truth-box figure then reads banks of this window too",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "action_quality.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "held-out"
        meta = generate_dataset(
            root, WorldConfig(frames=args.frames), args.videos, args.seed, split=SPLIT
        )
        gt_csv = root / "ava" / "annotations" / f"ava_{SPLIT}_v2.2.csv"
        answers = Path(tmp) / "answers"
        with served(args.store) as url:
            form = {"model": args.model}
            if args.score_threshold is not None:
                form["score_threshold"] = str(args.score_threshold)
            if args.bank_window is not None:
                form["action_bank_window"] = str(args.bank_window)
            detected = score_answers(url, form, root / "videos", meta["videos"], answers)
        detected["result"] = evaluate_action_files(gt_csv, answers).to_dict()
        version = served_version(answers, args.model)
        truth_boxes = score_ground_truth_boxes(
            args.store / FAMILY / args.model / version,
            root,
            resolve_device(args.device),
            args.bank_window,
        )
    report = {
        "held_out": {"seed": args.seed, "videos": args.videos, "frames": args.frames},
        "command": " ".join(["uv run python benchmarks/action_quality.py", *sys.argv[1:]]),
        "model": args.model,
        "score_threshold": args.score_threshold,
        "bank_window": args.bank_window,
        "version": version,
        "detected_boxes": {
            "metrics": detected["result"]["metrics"],
            "per_action": detected["result"].get("per_class", {}),
            "seconds_per_video": detected["seconds_per_video"],
        },
        "ground_truth_boxes": truth_boxes,
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print_table(report)
    print(f"report: {args.out}")


def score_answers(url: str, form: dict, videos: Path, names: list[str], answers: Path) -> dict:
    """Post every video with the `form` (the model, its options), saving each answer as
    <video>.json in `answers`."""
    answers.mkdir(parents=True)
    started = time.monotonic()
    for name in names:
        path = videos / f"{name}.mp4"
        response = httpx.post(
            f"{url}/v1/segment",
            data=form,
            files={"video": (path.name, path.read_bytes(), "video/mp4")},
            timeout=1800,
        )
        response.raise_for_status()
        (answers / f"{name}.json").write_bytes(response.content)
    return {"seconds_per_video": (time.monotonic() - started) / len(names)}


def served_version(answers: Path, model: str) -> str:
    """The version of the action stage that answered: one for every answer (a version published
    while the benchmark ran would mix two models in one score)."""
    versions = set()
    for path in sorted(answers.glob("*.json")):
        stages = json.loads(path.read_text()).get("stages", [])
        versions |= {s["version"] for s in stages if s["name"] == model}
    if len(versions) != 1:
        raise RuntimeError(
            f"the answers name {len(versions)} versions of stage {model!r} "
            f"({', '.join(sorted(versions)) or 'none'}); expected one, rerun the benchmark"
        )
    return versions.pop()


def score_ground_truth_boxes(
    checkpoint: Path, root: Path, device: str, bank_window: float | None = None
) -> dict:
    """The checkpoint's frame-mAP with the ground-truth boxes on every held-out key frame, as
    the trainer validates it (a feature-bank model with its banks, of `bank_window` seconds
    when given: 0 reads none)."""
    from models.checkpoints.checkpoint import load_checkpoint
    from models.train.action import evaluate_action_model
    from models.train.action_data import AvaData

    loaded = load_checkpoint(checkpoint, device, family=FAMILY)
    data = AvaData.load(root, SPLIT)
    # The trainer's evaluation reads model column k as the k-th action of the data's list.
    if list(loaded.manifest.class_names) != data.class_names:
        raise RuntimeError(
            f"{checkpoint}: actions {loaded.manifest.class_names} differ from the held-out "
            f"set's {data.class_names}"
        )
    metrics = evaluate_action_model(loaded.model, data, data.videos(), bank_window_s=bank_window)
    return {
        "metrics": {METRIC_NAME: metrics["frame_map"]},
        "per_action": {k.removeprefix("ap_"): v for k, v in metrics.items() if k != "frame_map"},
    }


def print_table(report: dict) -> None:
    detected, truth = report["detected_boxes"], report["ground_truth_boxes"]
    print(f"{report['model']} {report['version']}: {report['held_out']}")
    print(f"{'':18} {'detected':>9} {'gt boxes':>9} {'gap':>7}")
    rows = [(METRIC_NAME, detected["metrics"][METRIC_NAME], truth["metrics"][METRIC_NAME])]
    for action, ap in truth["per_action"].items():
        rows.append((f"AP {action}", detected["per_action"].get(action, 0.0), ap))
    for name, with_detected, with_truth in rows:
        print(f"{name:18} {with_detected:9.4f} {with_truth:9.4f} {with_truth - with_detected:7.4f}")
    print(f"seconds per video served: {detected['seconds_per_video']:.1f}")


if __name__ == "__main__":
    main()
