"""Tracking quality of the shipped MaskTrack R-CNN on held-out synthetic videos in which objects
cross and occlude each other: id switches per ground-truth track, and YouTube-VIS AP.

An id switch (as in the MOT metrics) is counted when a ground-truth track, matched on a frame to a
predicted object (mask IoU >= 0.5, one-to-one), is matched to a different predicted id than the
last time it was matched.

    uv run python benchmarks/vis_tracking.py [--videos 16] [--seed 300] [--difficulty 0.8]
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.data.rle import decode_rle  # noqa: E402
from models.data.synthetic.export import generate_dataset  # noqa: E402
from models.data.synthetic.world import WorldConfig  # noqa: E402
from models.data.ytvis import load_ytvis  # noqa: E402
from models.train.vis import evaluate_vis_model  # noqa: E402
from models.train.vis_data import read_rgb  # noqa: E402
from models.vis.video_inference import segment_video  # noqa: E402
from service.settings import SHIPPED_CHECKPOINTS  # noqa: E402
from service.worker.runners import load_runner_from_store  # noqa: E402


def id_switches(gt_masks: dict[int, list], predictions: list[list[dict]]) -> tuple[int, int]:
    """(id switches, matched ground-truth frames) over one video."""
    last_id: dict[int, int] = {}
    switches = matched = 0
    for t, objects in enumerate(predictions):
        gt_ids = [g for g, masks in gt_masks.items() if masks[t] is not None]
        if not gt_ids or not objects:
            continue
        pred_masks = [decode_rle(o["mask"]).astype(bool) for o in objects]
        iou = np.zeros((len(gt_ids), len(objects)))
        for i, g in enumerate(gt_ids):
            gm = gt_masks[g][t]
            for j, pm in enumerate(pred_masks):
                union = (gm | pm).sum()
                iou[i, j] = (gm & pm).sum() / union if union else 0.0
        rows, cols = linear_sum_assignment(-iou)
        for i, j in zip(rows, cols, strict=True):
            if iou[i, j] < 0.5:
                continue
            matched += 1
            track = objects[j]["track_id"]
            g = gt_ids[i]
            if g in last_id and last_id[g] != track:
                switches += 1
            last_id[g] = track
    return switches, matched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--frames", type=int, default=36)
    parser.add_argument("--seed", type=int, default=300)
    parser.add_argument("--difficulty", type=float, default=0.8)
    parser.add_argument("--objects", type=int, default=6)
    parser.add_argument("--score-threshold", type=float, default=0.5)
    args = parser.parse_args()
    runner = load_runner_from_store(SHIPPED_CHECKPOINTS, "masktrack", "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        world = WorldConfig(
            frames=args.frames, max_objects=args.objects, difficulty=args.difficulty
        )
        generate_dataset(Path(tmp), world, args.videos, args.seed, split="val")
        data = load_ytvis(Path(tmp) / "ytvis" / "val.json", Path(tmp) / "ytvis" / "JPEGImages")
        total_switches = total_tracks = total_matched = 0
        for video_id, video in data.videos.items():
            frames = (read_rgb(data.frame_path(video_id, t)) for t in range(video.length))
            predictions = list(
                segment_video(runner.model, frames, runner.classes, args.score_threshold)
            )
            gt = {
                tr.id: [
                    None if m is None else m.astype(bool)
                    for m in (tr.mask(t) for t in range(video.length))
                ]
                for tr in data.tracks_of(video_id)
            }
            switches, matched = id_switches(gt, predictions)
            total_switches += switches
            total_matched += matched
            total_tracks += len(gt)
        metrics = evaluate_vis_model(runner.model, data, list(data.videos), list(runner.classes))
    print(
        f"{args.videos} held-out videos (seed {args.seed}, difficulty {args.difficulty}, "
        f"up to {args.objects} objects, {args.frames} frames), score >= {args.score_threshold}"
    )
    print(f"ground-truth tracks: {total_tracks}, matched track-frames: {total_matched}")
    print(f"id switches: {total_switches} ({total_switches / max(1, total_tracks):.3f} per track)")
    print(
        f"YouTube-VIS AP: {metrics['AP']:.3f}  AP50: {metrics['AP50']:.3f}  "
        f"AR10: {metrics['AR10']:.3f}"
    )


if __name__ == "__main__":
    main()
