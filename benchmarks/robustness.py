"""Robustness of the served `masktrack` and `stcn` outside the classic synthetic world (issue 20),
from what `POST /v1/segment` answers.

Generates three sets of held-out videos at the validation sets' settings (320x240, 24 frames, up
to 4 objects, difficulty 0.5), from seeds no training used and from the held-out photo pool:

- negatives: wide-world videos with no object of the six categories (photo backgrounds, panned,
  and distractors, some wearing photos): `masktrack`'s false objects per frame, every object it
  answers at the served default threshold being false;
- wide: wide-world videos with objects (photos, lighting, blur, JPEG artefacts, camera pan):
  `masktrack`'s YouTube-VIS AP (at the validation's score threshold, models.eval.vis) and id
  switches per ground-truth track (at the served default, models.eval.tracking); `stcn`'s J&F
  with the first frame's masks given as the prompt (models.eval.davis);
- classic: the classic world, the same figures, for comparison.

Starts `vidserve serve` on the store, posts every video, scores the answers with the evaluators
and writes a JSON report beside the issue's targets.

    uv run python benchmarks/robustness.py [--videos 24] [--store checkpoints]
        [--sets classic --classic-seed 973]   (one set, another held-out seed)
        [--models stcn --stcn-short-edge 240]  (one model; stcn sessions at another size)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.served import served  # noqa: E402
from models.data.davis import load_davis  # noqa: E402
from models.data.synthetic.export import generate_dataset  # noqa: E402
from models.data.synthetic.world import WorldConfig, wide_world  # noqa: E402
from models.data.ytvis import YtvisDataset, load_ytvis  # noqa: E402
from models.eval.davis import evaluate_davis  # noqa: E402
from models.eval.tracking import id_switches  # noqa: E402
from models.eval.vis import evaluate_vis_results  # noqa: E402
from models.train.vis import VAL_SCORE_THRESHOLD  # noqa: E402
from service.schemas import SegmentResponse  # noqa: E402
from service.settings import SHIPPED_CHECKPOINTS  # noqa: E402
from service.writers.davis import id_map  # noqa: E402
from service.writers.ytvis import ytvis_results  # noqa: E402

# Training used seeds 100 and 110, validation 200 and 210, the tests and the other benchmarks
# 900-965: these are new.
HELD_OUT_SEEDS = {"negatives": 970, "wide": 971, "classic": 972}
FRAMES = 24
SPLIT = "val"
# Issue 20's targets. Its AP target is on "held-out synthetic videos at the validation set's
# settings": the classic world, which the masktrack validation set is (as its stcn targets tell
# photographic videos, 0.6, from synthetic ones, 0.85). The wide world's AP is reported, untargeted.
TARGETS = {
    "masktrack false objects per frame (negatives)": "<= 0.1",
    "masktrack YouTube-VIS AP (classic)": ">= 0.7",
    "masktrack id switches per track (wide)": "<= 0.3",
    "masktrack id switches per track (classic)": "<= 0.3",
    "stcn J&F (wide)": ">= 0.6",
    "stcn J&F (classic)": ">= 0.85",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=24, help="videos in each set")
    parser.add_argument("--frames", type=int, default=FRAMES, help="frames a video")
    parser.add_argument(
        "--sets", nargs="+", choices=list(HELD_OUT_SEEDS), default=list(HELD_OUT_SEEDS)
    )
    parser.add_argument(
        "--classic-seed",
        type=int,
        default=HELD_OUT_SEEDS["classic"],
        help="another held-out classic set (973 and up: no training, test or benchmark used them)",
    )
    parser.add_argument(
        "--models", nargs="+", choices=["masktrack", "stcn"], default=["masktrack", "stcn"]
    )
    parser.add_argument(
        "--stcn-short-edge",
        type=int,
        default=None,
        help="the short_edge each stcn session asks for (default: the checkpoint's)",
    )
    parser.add_argument("--store", type=Path, default=SHIPPED_CHECKPOINTS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "robustness.json")
    args = parser.parse_args()
    seeds = {name: HELD_OUT_SEEDS[name] for name in args.sets}
    if "classic" in seeds:
        seeds["classic"] = args.classic_seed
    worlds = {
        "negatives": wide_world(frames=args.frames, photo_pool="held_out", negatives=1.0),
        "wide": wide_world(frames=args.frames, photo_pool="held_out", negatives=0.0),
        "classic": WorldConfig(frames=args.frames),
    }
    os.environ["VIDSERVE_MODELS"] = "masktrack,stcn"  # the served worker loads only these
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        roots = {name: Path(tmp) / name for name in seeds}
        for name, seed in seeds.items():
            generate_dataset(roots[name], worlds[name], args.videos, seed, split=SPLIT)
        with served(args.store) as url:
            results = measure(url, roots, args.models, args.stcn_short_edge)
    report = {
        "command": " ".join(["uv run python benchmarks/robustness.py", *sys.argv[1:]]),
        "store": str(args.store),
        "held_out": {
            name: {"seed": seed, "videos": args.videos, "frames": args.frames}
            | ({"world": "wide", "photo_pool": "held_out"} if name != "classic" else {})
            for name, seed in seeds.items()
        },
        "targets": TARGETS,
        "figures": headline(results),
        "results": results,
        "seconds": round(time.monotonic() - started, 1),
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for name, value in report["figures"].items():
        print(f"{name:50} {value:7.3f}   target {TARGETS.get(name, '')}")
    print(f"report: {args.out} ({report['seconds']:.0f} s)")


def measure(
    url: str,
    roots: dict[str, Path],
    models: Sequence[str] = ("masktrack", "stcn"),
    stcn_short_edge: int | None = None,
) -> dict:
    """Each model's results on each of the generated sets (`roots`: set name -> its folder)."""
    results: dict[str, dict] = {"masktrack": {}, "stcn": {}}
    if "negatives" in roots and "masktrack" in models:
        results["masktrack"]["negatives"] = false_objects(url, roots["negatives"])
    for name in ("wide", "classic"):
        if name in roots and "masktrack" in models:
            results["masktrack"][name] = tracking_quality(url, roots[name])
        if name in roots and "stcn" in models:
            results["stcn"][name] = prompted_quality(url, roots[name], stcn_short_edge)
    return results


def headline(results: dict) -> dict[str, float]:
    masktrack, stcn = results["masktrack"], results["stcn"]
    figures = {}
    if "negatives" in masktrack:
        figures["masktrack false objects per frame (negatives)"] = masktrack["negatives"][
            "false_objects_per_frame"
        ]
    for name in ("wide", "classic"):
        if name in masktrack:
            figures[f"masktrack YouTube-VIS AP ({name})"] = masktrack[name]["metrics"]["AP"]
            figures[f"masktrack id switches per track ({name})"] = masktrack[name][
                "id_switches_per_track"
            ]
    for name in ("wide", "classic"):
        if name in stcn:
            figures[f"stcn J&F ({name})"] = stcn[name]["metrics"]["J&F-Mean"]
    return {name: round(value, 4) for name, value in figures.items()}


def segment(url: str, video: Path, model: str, **form) -> tuple[SegmentResponse, float]:
    """The answer of `POST /v1/segment` for one video, and the seconds it took. `form` may hold a
    `prompt` PNG (bytes) besides the form fields."""
    files = {"video": (video.name, video.read_bytes(), "video/mp4")}
    if "prompt" in form:
        files["prompt"] = ("prompt.png", form.pop("prompt"), "image/png")
    started = time.monotonic()
    response = httpx.post(
        f"{url}/v1/segment", data={"model": model, **form}, files=files, timeout=600
    )
    response.raise_for_status()
    return SegmentResponse.model_validate(response.json()), time.monotonic() - started


def false_objects(url: str, root: Path) -> dict:
    """Every object answered on a video with no object of the categories is false."""
    names = json.loads((root / "meta.json").read_text())["negative_videos"]
    objects = frames = tracks = 0
    categories: dict[str, int] = {}
    scores, seconds = [], 0.0
    for name in names:
        answer, took = segment(url, root / "videos" / f"{name}.mp4", "masktrack")
        seconds += took
        frames += len(answer.frames)
        tracks += len(answer.tracks)
        for frame in answer.frames:
            objects += len(frame.objects)
            for obj in frame.objects:
                categories[obj.category] = categories.get(obj.category, 0) + 1
                scores.append(obj.score)
    return {
        "videos": len(names),
        "frames": frames,
        "false_objects": objects,
        "false_objects_per_frame": objects / max(1, frames),
        "false_tracks": tracks,
        "by_category": dict(sorted(categories.items(), key=lambda kv: -kv[1])),
        "score_median": float(np.median(scores)) if scores else None,
        "model_version": answer.model_version,
        "seconds_per_video": seconds / max(1, len(names)),
    }


def tracking_quality(url: str, root: Path) -> dict:
    """YouTube-VIS AP of the answers at the validation's threshold, and id switches per
    ground-truth track of the answers at the served default."""
    data = load_ytvis(root / "ytvis" / f"{SPLIT}.json")
    category_of = {name: c for c, name in data.categories.items()}
    results, switches, matched, seconds = [], 0, 0, 0.0
    for video_id, video in data.videos.items():
        path = root / "videos" / f"{video.name}.mp4"
        answer, took = segment(url, path, "masktrack", score_threshold=str(VAL_SCORE_THRESHOLD))
        results += ytvis_results(answer, category_of, video_id)
        served_answer, took_too = segment(url, path, "masktrack")
        counted = id_switches(ground_truth_masks(data, video_id), objects_by_frame(served_answer))
        switches, matched = switches + counted.switches, matched + counted.matched
        seconds += took + took_too
    tracks = len(data.tracks)
    return {
        "videos": len(data.videos),
        "ap_score_threshold": VAL_SCORE_THRESHOLD,
        "metrics": dict(evaluate_vis_results(data, results).metrics),
        "gt_tracks": tracks,
        "matched_track_frames": matched,
        "id_switches": switches,
        "id_switches_per_track": switches / max(1, tracks),
        "model_version": answer.model_version,
        "seconds_per_video": seconds / max(1, len(data.videos)),
    }


def ground_truth_masks(data: YtvisDataset, video_id: int) -> dict[int, list]:
    length = data.videos[video_id].length
    return {tr.id: [tr.mask(t) for t in range(length)] for tr in data.tracks_of(video_id)}


def objects_by_frame(answer: SegmentResponse) -> list[list[dict]]:
    frames = sorted(answer.frames, key=lambda f: f.frame_index)
    return [[obj.model_dump(mode="json") for obj in frame.objects] for frame in frames]


def prompted_quality(url: str, root: Path, short_edge: int | None = None) -> dict:
    """DAVIS J&F of `stcn` given each video's first-frame masks (its DAVIS annotation), its
    sessions at `short_edge` when given."""
    sequences, seconds = [], 0.0
    form = {} if short_edge is None else {"short_edge": str(short_edge)}
    for video in load_davis(root / "davis", SPLIT).videos:
        if not video.object_ids():
            continue  # nothing to prompt (every object starts out of view)
        answer, took = segment(
            url,
            root / "videos" / f"{video.name}.mp4",
            "stcn",
            prompt=video.annotation_paths[0].read_bytes(),
            **form,
        )
        seconds += took
        gt = video.load_masks()
        predicted = np.zeros_like(gt)
        for frame in answer.frames:
            predicted[frame.frame_index] = id_map(frame, answer.height, answer.width)
        sequences.append((video.name, gt, predicted))
    return {
        "videos": len(sequences),
        "objects": sum(len(np.unique(gt[0])) - 1 for _, gt, _ in sequences),
        "metrics": dict(evaluate_davis(sequences).metrics),
        "model_version": answer.model_version,
        "seconds_per_video": seconds / max(1, len(sequences)),
        "short_edge": short_edge,
    }


if __name__ == "__main__":
    main()
