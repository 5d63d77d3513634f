"""`vidserve train vis-calibrate`: the score threshold a VIS checkpoint is served with by
default, chosen on validation videos that include negatives (videos with no object of the
categories), published as a new version of the same weights.

Every object answered on a negative video is false, so the false objects a frame at threshold t
is the count of detections scored >= t over the frames. The chosen threshold is the lowest
candidate (0.5 and up: never below the plain default) whose rate is within the budget; the
recall of annotated objects on the positive validation videos at each candidate is recorded
beside it, so that what the threshold costs is in the manifest too.
"""

import logging
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou
from tqdm import tqdm

from models.checkpoints.store import CheckpointStore
from models.data.ytvis import YtvisDataset, load_ytvis
from models.train.loop import republish
from models.train.vis import locate_ytvis
from models.train.vis_data import masks_to_boxes, read_rgb

log = logging.getLogger(__name__)

FAMILY = "vis"
CANDIDATES = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))  # 0.5, 0.55, ..., 0.95
MATCH_IOU = 0.5  # an annotated object is found by a box of its category at this IoU or more


def calibrate_vis(
    store: Path,
    name: str,
    negatives: Path,
    val: Path,
    max_false_per_frame: float = 0.1,
    val_split: str = "val",
    version: str | None = None,
    redis_url: str | None = None,
    show_progress: bool = True,
) -> Path:
    """Choose the served score threshold of store's `name` (its newest version or `version`)
    and publish the same weights with it as a new version. `negatives`: a YouTube-VIS dataset
    whose videos without any object are the negatives; `val`: one whose annotated objects give
    the recall at each threshold."""
    source = CheckpointStore(store).load(FAMILY, name, version)
    model = source.model.eval()
    negative_data = load_ytvis(*locate_ytvis(negatives, val_split), check_files=True)
    empty = [v for v in sorted(negative_data.videos) if not negative_data.tracks_of(v)]
    if not empty:
        raise ValueError(f"{negatives}: no video without objects to calibrate on")
    positive_data = load_ytvis(*locate_ytvis(val, val_split), check_files=True)
    low = min(CANDIDATES)

    false_scores, negative_frames = [], 0
    for frame in _frames(negative_data, empty, "negatives", show_progress):
        false_scores += model.detect([frame], min_score=low)[0].scores.tolist()
        negative_frames += 1
    found_scores, annotated = _found_scores(model, positive_data, show_progress)

    false_scores, found_scores = np.asarray(false_scores), np.asarray(found_scores)
    table = {
        f"{t:.2f}": {
            "false_objects_per_frame": round(float((false_scores >= t).sum()) / negative_frames, 4),
            "recall": round(float((found_scores >= t).sum()) / max(1, annotated), 4),
        }
        for t in CANDIDATES
    }
    within = [
        t for t in CANDIDATES if table[f"{t:.2f}"]["false_objects_per_frame"] <= max_false_per_frame
    ]
    chosen = within[0] if within else max(CANDIDATES)
    if not within:
        log.warning(
            "no threshold keeps false objects within %s a frame: %s", max_false_per_frame, chosen
        )
    log.info("served score threshold %.2f: %s", chosen, table[f"{chosen:.2f}"])
    before = model.config.served_score_threshold
    model.config = replace(model.config, served_score_threshold=chosen)
    return republish(
        store,
        redis_url,
        source,
        model,
        model.config.to_dict(),
        "calibrated",
        {"served_score_threshold": [before, chosen]},
        max_false_objects_per_frame=max_false_per_frame,
        negative_videos=len(empty),
        negative_frames=negative_frames,
        annotated_objects=annotated,
        thresholds=table,
    )


def _frames(
    data: YtvisDataset, videos: list[int], what: str, show_progress: bool
) -> Iterable[np.ndarray]:
    total = sum(data.videos[v].length for v in videos)
    with tqdm(
        total=total, desc=f"calibrate: {what}", unit="frame", disable=not show_progress
    ) as bar:
        for video_id in videos:
            for t in range(data.videos[video_id].length):
                yield read_rgb(data.frame_path(video_id, t))
                bar.update()


@torch.no_grad()
def _found_scores(model, data: YtvisDataset, show_progress: bool) -> tuple[list[float], int]:
    """For each annotated object of every frame, the best score of a box of its category that
    overlaps it by MATCH_IOU (0 where none does); and how many objects there are."""
    label_of = {c: k + 1 for k, c in enumerate(sorted(data.categories))}
    videos = sorted(data.videos)
    frames = _frames(data, videos, "recall", show_progress)
    scores: list[float] = []
    for video_id in videos:
        for t in range(data.videos[video_id].length):
            detections = model.detect([next(frames)], min_score=min(CANDIDATES))[0]
            for track in data.tracks_of(video_id):
                mask = track.mask(t)
                if mask is None or not mask.any() or track.iscrowd:
                    continue
                truth = masks_to_boxes(mask[None])
                same = detections.labels == label_of[track.category_id]
                overlaps = box_iou(truth, detections.boxes)[0] >= MATCH_IOU
                hits = detections.scores[same & overlaps]
                scores.append(float(hits.max()) if len(hits) else 0.0)
    return scores, len(scores)
