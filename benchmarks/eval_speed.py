"""How long each evaluator takes on 50 synthetic videos of 36 frames.

    uv run python benchmarks/eval_speed.py [--videos 50] [--frames 36]

For every task it writes ground truth and predictions (the ground truth moved, resized, with
some objects missed, some mislabelled and some false ones added) in the task's file format to a
temporary folder, then times `models.eval.evaluate_files` on them: reading, checking and scoring,
as `vidserve eval` runs. Frames are 640x360 (DAVIS: 854x480).
"""

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from models.data.ava import AvaBox, write_ava_csv
from models.data.coco_panoptic import (
    PanopticCategory,
    PanopticImage,
    SegmentInfo,
    write_coco_panoptic,
)
from models.data.davis import write_davis_split, write_palette_png
from models.data.rle import encode_mask
from models.data.ytvis import YtvisTrack, YtvisVideo, write_ytvis
from models.eval import evaluate_files

HEIGHT, WIDTH = 360, 640
CATEGORIES = {1: "person", 2: "car", 3: "dog", 4: "bird"}
STUFF = {10: "sky", 11: "ground"}
ACTIONS = range(1, 11)


@dataclass
class Mover:
    """An ellipse moving at constant speed; sizes in fractions of the frame."""

    category: int
    y: float
    x: float
    vy: float
    vx: float
    ry: float
    rx: float

    def at(self, t: int) -> tuple[float, float]:
        return self.y + self.vy * t, self.x + self.vx * t

    def perturbed(self, rng) -> "Mover":
        """A prediction of this object: slightly off in place and size, sometimes mislabelled."""
        category = self.category if rng.random() < 0.85 else int(rng.choice(list(CATEGORIES)))
        return Mover(
            category,
            self.y + rng.normal(0, 0.01),
            self.x + rng.normal(0, 0.01),
            self.vy,
            self.vx,
            self.ry * rng.uniform(0.85, 1.15),
            self.rx * rng.uniform(0.85, 1.15),
        )


@dataclass
class SyntheticVideo:
    name: str
    gt: list[Mover]
    pred: list[Mover]
    scores: list[float]


def make_videos(count: int, seed: int = 0) -> list[SyntheticVideo]:
    rng = np.random.default_rng(seed)
    videos = []
    for v in range(count):
        gt = [
            Mover(
                int(rng.choice(list(CATEGORIES))),
                rng.uniform(0.2, 0.8),
                rng.uniform(0.2, 0.8),
                rng.uniform(-0.005, 0.005),
                rng.uniform(-0.008, 0.008),
                rng.uniform(0.05, 0.2),
                rng.uniform(0.04, 0.15),
            )
            for _ in range(rng.integers(2, 7))
        ]
        pred = [m.perturbed(rng) for m in gt if rng.random() < 0.9]  # about 1 in 10 missed
        pred += [
            Mover(
                int(rng.choice(list(CATEGORIES))),
                rng.uniform(0.2, 0.8),
                rng.uniform(0.2, 0.8),
                0,
                0,
                0.06,
                0.06,
            )
            for _ in range(rng.integers(0, 3))
        ]  # false positives
        videos.append(
            SyntheticVideo(
                f"video{v:03d}", gt, pred, [float(s) for s in rng.uniform(0.05, 1.0, len(pred))]
            )
        )
    return videos


def ellipse(mover: Mover, t: int, height: int, width: int) -> np.ndarray:
    """Binary mask of the mover at frame t, evaluated only inside its bounding box."""
    mask = np.zeros((height, width), dtype=np.uint8)
    y, x = mover.at(t)
    cy, cx, ry, rx = y * height, x * width, mover.ry * height, mover.rx * width
    y0, y1 = max(int(cy - ry), 0), min(int(cy + ry) + 1, height)
    x0, x1 = max(int(cx - rx), 0), min(int(cx + rx) + 1, width)
    if y0 >= y1 or x0 >= x1:
        return mask
    yy, xx = np.ogrid[y0:y1, x0:x1]
    mask[y0:y1, x0:x1] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return mask


def id_maps(movers: list[Mover], frames: int, height: int, width: int) -> np.ndarray:
    """(T, H, W) ids 1..K, later movers drawn over earlier ones."""
    ids = np.zeros((frames, height, width), dtype=np.uint8)
    for k, mover in enumerate(movers, start=1):
        for t in range(frames):
            ids[t][ellipse(mover, t, height, width) > 0] = k
    return ids


def write_vis(folder: Path, videos: list[SyntheticVideo], frames: int) -> tuple[Path, Path]:
    yt_videos, tracks, results = [], [], []
    for index, video in enumerate(videos, start=1):
        names = [f"{video.name}/{t:05d}.jpg" for t in range(frames)]
        yt_videos.append(YtvisVideo(index, video.name, WIDTH, HEIGHT, names))
        gt_ids, pred_ids = (id_maps(m, frames, HEIGHT, WIDTH) for m in (video.gt, video.pred))
        for k, mover in enumerate(video.gt, start=1):
            tracks.append(
                YtvisTrack(len(tracks) + 1, index, mover.category, 0, _track_rles(gt_ids == k))
            )
        for k, (mover, score) in enumerate(zip(video.pred, video.scores, strict=True), start=1):
            results.append(
                {
                    "video_id": index,
                    "category_id": mover.category,
                    "score": score,
                    "segmentations": _track_rles(pred_ids == k),
                }
            )
    write_ytvis(folder / "ytvis.json", yt_videos, tracks, CATEGORIES)
    (folder / "ytvis_results.json").write_text(json.dumps(results))
    return folder / "ytvis.json", folder / "ytvis_results.json"


def write_instances(folder: Path, videos: list[SyntheticVideo], frames: int) -> tuple[Path, Path]:
    images, annotations, results = [], [], []
    for video in videos:
        gt_ids, pred_ids = (id_maps(m, frames, HEIGHT, WIDTH) for m in (video.gt, video.pred))
        for t in range(frames):
            image_id = len(images) + 1
            images.append(
                {
                    "id": image_id,
                    "file_name": f"{video.name}/{t:05d}.jpg",
                    "height": HEIGHT,
                    "width": WIDTH,
                }
            )
            for k, mover in enumerate(video.gt, start=1):
                mask = gt_ids[t] == k
                if mask.any():
                    annotations.append(
                        {
                            "id": len(annotations) + 1,
                            "image_id": image_id,
                            "category_id": mover.category,
                            "iscrowd": 0,
                            "segmentation": encode_mask(mask),
                            "area": float(mask.sum()),
                            "bbox": _bbox(mask),
                        }
                    )
            for k, (mover, score) in enumerate(zip(video.pred, video.scores, strict=True), 1):
                mask = pred_ids[t] == k
                if mask.any():
                    results.append(
                        {
                            "image_id": image_id,
                            "category_id": mover.category,
                            "score": score,
                            "segmentation": encode_mask(mask),
                        }
                    )
    categories = [{"id": c, "name": n} for c, n in CATEGORIES.items()]
    gt = {"images": images, "annotations": annotations, "categories": categories}
    (folder / "instances.json").write_text(json.dumps(gt))
    (folder / "instances_results.json").write_text(json.dumps(results))
    return folder / "instances.json", folder / "instances_results.json"


def write_davis(folder: Path, videos: list[SyntheticVideo], frames: int) -> tuple[Path, Path]:
    height, width = 480, 854
    root, pred_root = folder / "davis", folder / "davis_pred"
    for video in videos:
        gt_ids = id_maps(video.gt, frames, height, width)
        # VOS predictions keep the given object ids: the perturbed copy of each object.
        rng = np.random.default_rng(len(video.name))
        pred_ids = id_maps([m.perturbed(rng) for m in video.gt], frames, height, width)
        for sub in ("JPEGImages/480p", "Annotations/480p"):
            (root / sub / video.name).mkdir(parents=True)
        (pred_root / video.name).mkdir(parents=True)
        for t in range(frames):
            (root / "JPEGImages/480p" / video.name / f"{t:05d}.jpg").write_bytes(b"")
            write_palette_png(root / "Annotations/480p" / video.name / f"{t:05d}.png", gt_ids[t])
            write_palette_png(pred_root / video.name / f"{t:05d}.png", pred_ids[t])
    write_davis_split(root, "val", [v.name for v in videos])
    return root, pred_root


def write_panoptic(folder: Path, videos: list[SyntheticVideo], frames: int) -> tuple[Path, Path]:
    categories = {c: PanopticCategory(c, n, True) for c, n in CATEGORIES.items()}
    categories |= {c: PanopticCategory(c, n, False) for c, n in STUFF.items()}
    gt_root, pred_root = folder / "panoptic", folder / "panoptic_pred"
    images, predictions = [], []
    for video in videos:
        (gt_root / video.name).mkdir(parents=True)
        (pred_root / video.name).mkdir(parents=True)
        gt_ids, pred_ids = (id_maps(m, frames, HEIGHT, WIDTH) for m in (video.gt, video.pred))
        for t in range(frames):
            name = f"{video.name}/{t:05d}.png"
            gt_map, gt_cats = _panoptic_map(gt_ids[t], video.gt, horizon=0.5)
            pred_map, pred_cats = _panoptic_map(pred_ids[t], video.pred, horizon=0.52)
            # Fast PNG compression: the benchmark times reading, not writing.
            Image.fromarray(_rgb(gt_map)).save(gt_root / name, compress_level=1)
            Image.fromarray(_rgb(pred_map)).save(pred_root / name, compress_level=1)
            image_id = len(images) + 1
            images.append(
                PanopticImage(
                    image_id,
                    name.replace(".png", ".jpg"),
                    HEIGHT,
                    WIDTH,
                    gt_root / name,
                    _segments(gt_map, gt_cats),
                )
            )
            predictions.append(
                {
                    "image_id": image_id,
                    "file_name": name,
                    "segments_info": [{"id": i, "category_id": c} for i, c in pred_cats.items()],
                }
            )
    write_coco_panoptic(folder / "panoptic.json", images, categories, gt_root)
    (folder / "panoptic_pred.json").write_text(json.dumps({"annotations": predictions}))
    return folder / "panoptic.json", folder / "panoptic_pred.json"


def write_ava(folder: Path, videos: list[SyntheticVideo], frames: int) -> tuple[Path, Path]:
    """Every frame a key frame; each person box has 1-3 actions, each prediction scores all."""
    rng = np.random.default_rng(1)
    gt, pred = [], []
    for video in videos:
        actions = [rng.choice(list(ACTIONS), rng.integers(1, 4), replace=False) for _ in video.gt]
        for t in range(frames):
            for mover, acts in zip(video.gt, actions, strict=True):
                box = _normalised_box(mover, t)
                gt += [AvaBox(video.name, t, box, int(a), person_id=0) for a in acts]
                moved = _normalised_box(mover.perturbed(rng), t)
                pred += [
                    AvaBox(
                        video.name, t, moved, a, score=float(0.7 * rng.random() + 0.3 * (a in acts))
                    )
                    for a in ACTIONS
                ]
    write_ava_csv(folder / "ava.csv", gt)
    write_ava_csv(folder / "ava_pred.csv", pred)
    return folder / "ava.csv", folder / "ava_pred.csv"


def _track_rles(masks: np.ndarray) -> list[dict | None]:
    return [encode_mask(m) if m.any() else None for m in masks]


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [
        float(xs.min()),
        float(ys.min()),
        float(xs.max() - xs.min() + 1),
        float(ys.max() - ys.min() + 1),
    ]


def _panoptic_map(ids: np.ndarray, movers: list[Mover], horizon: float):
    """Segment ids: things 1..K as drawn, sky (100) above the horizon, ground (101) below."""
    out = ids.astype(np.int64)
    background = out == 0
    rows = np.arange(HEIGHT)[:, None] < horizon * HEIGHT
    out[background & rows] = 100
    out[background & ~rows] = 101
    present = {int(i) for i in np.unique(out)}
    category = {k: m.category for k, m in enumerate(movers, start=1) if k in present}
    category |= {i: c for i, c in ((100, 10), (101, 11)) if i in present}
    return out, category


def _segments(ids: np.ndarray, category: dict[int, int]) -> list[SegmentInfo]:
    areas = np.bincount(ids.ravel())
    boxes = ndimage.find_objects(ids)  # ids here are small: 1..K, 100, 101
    segments = []
    for segment_id, category_id in category.items():
        rows, cols = boxes[segment_id - 1]
        bbox = [
            float(cols.start),
            float(rows.start),
            float(cols.stop - cols.start),
            float(rows.stop - rows.start),
        ]
        segments.append(SegmentInfo(segment_id, category_id, int(areas[segment_id]), bbox))
    return segments


def _rgb(ids: np.ndarray) -> np.ndarray:
    """COCO panoptic colours of segment ids: the low three bytes of each id as R, G, B."""
    return ids.astype("<u4").view(np.uint8).reshape(*ids.shape, 4)[..., :3]


def _normalised_box(mover: Mover, t: int) -> tuple[float, float, float, float]:
    y, x = mover.at(t)
    return tuple(
        float(np.clip(v, 0, 1)) for v in (x - mover.rx, y - mover.ry, x + mover.rx, y + mover.ry)
    )


WRITERS = {
    "vis": write_vis,
    "instance": write_instances,
    "vos": write_davis,
    "panoptic": write_panoptic,
    "action": write_ava,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=50)
    parser.add_argument("--frames", type=int, default=36)
    parser.add_argument("--tasks", nargs="+", default=list(WRITERS), choices=list(WRITERS))
    args = parser.parse_args()
    videos = make_videos(args.videos)
    print(f"{args.videos} videos x {args.frames} frames")
    print(f"{'task':<10}{'write (s)':>10}{'evaluate (s)':>14}  headline")
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            folder = Path(tmp) / task
            folder.mkdir()
            start = time.perf_counter()
            gt, pred = WRITERS[task](folder, videos, args.frames)
            written = time.perf_counter() - start
            start = time.perf_counter()
            result = evaluate_files(task, gt, pred)
            took = time.perf_counter() - start
            name, value = next(iter(result.metrics.items()))
            print(f"{task:<10}{written:>10.1f}{took:>14.2f}  {name} {value:.3f}", flush=True)


if __name__ == "__main__":
    main()
