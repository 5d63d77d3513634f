"""Tracking quality of the shipped MaskTrack R-CNN on held-out synthetic videos in which objects
cross and occlude each other: id switches per ground-truth track, and YouTube-VIS AP.

An id switch (as in the MOT metrics; models.eval.tracking counts them) is counted when a
ground-truth track, matched on a frame to a predicted object (mask IoU >= 0.5, one-to-one), is
matched to a different predicted id than the last time it was matched.

    uv run python benchmarks/vis_tracking.py [--videos 16] [--seed 300] [--difficulty 0.8]
        [--store checkpoints]   (the store's newest masktrack)
"""

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.data.synthetic.export import generate_dataset  # noqa: E402
from models.data.synthetic.world import WorldConfig  # noqa: E402
from models.data.ytvis import load_ytvis  # noqa: E402
from models.eval.tracking import id_switches  # noqa: E402
from models.train.vis import evaluate_vis_model  # noqa: E402
from models.train.vis_data import read_rgb  # noqa: E402
from models.vis.video_inference import segment_video  # noqa: E402
from service.settings import SHIPPED_CHECKPOINTS  # noqa: E402
from service.worker.runners import load_runner_from_store  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--frames", type=int, default=36)
    parser.add_argument("--seed", type=int, default=300)
    parser.add_argument("--difficulty", type=float, default=0.8)
    parser.add_argument("--objects", type=int, default=6)
    parser.add_argument("--score-threshold", type=float, default=0.5)
    parser.add_argument("--store", type=Path, default=SHIPPED_CHECKPOINTS)
    args = parser.parse_args()
    runner = load_runner_from_store(args.store, "masktrack", "cpu")
    model = runner.forward.model
    with tempfile.TemporaryDirectory() as tmp:
        world = WorldConfig(
            frames=args.frames, max_objects=args.objects, difficulty=args.difficulty
        )
        generate_dataset(Path(tmp), world, args.videos, args.seed, split="val")
        data = load_ytvis(Path(tmp) / "ytvis" / "val.json", Path(tmp) / "ytvis" / "JPEGImages")
        total_switches = total_tracks = total_matched = 0
        for video_id, video in data.videos.items():
            frames = (read_rgb(data.frame_path(video_id, t)) for t in range(video.length))
            predictions = list(segment_video(model, frames, runner.classes, args.score_threshold))
            gt = {
                tr.id: [
                    None if m is None else m.astype(bool)
                    for m in (tr.mask(t) for t in range(video.length))
                ]
                for tr in data.tracks_of(video_id)
            }
            counted = id_switches(gt, predictions)
            total_switches += counted.switches
            total_matched += counted.matched
            total_tracks += len(gt)
        metrics = evaluate_vis_model(model, data, list(data.videos), list(runner.classes))
    print(
        f"masktrack {runner.info.version}: "
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
