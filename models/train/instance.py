"""`vidserve train instance`: Cascade Mask R-CNN on instance annotations, frames as images.

The trainer reads a YouTube-VIS dataset (ours or the real one) and takes every annotated frame
as an image with its instances, as COCO would give them; validation is per-frame COCO mask AP
(pycocotools) on held-out videos; the checkpoint is published to the store and announced as the
other families' are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from models.data.rle import encode_mask
from models.data.ytvis import YtvisDataset, load_ytvis
from models.instance.config import InstanceConfig
from models.instance.model import FAMILY, CascadeMaskRCNN, build_cascade_mask_rcnn
from models.train.distributed import Drawn, on_main_rank, prepare_model, process_group
from models.train.loop import (
    TrainRun,
    batch_stream,
    prepare_run,
    run_loop,
    seed_everything,
)
from models.train.vis import locate_ytvis, split_videos, validate_and_publish
from models.train.vis_data import FrameSample, VisPairDataset, read_rgb

log = logging.getLogger(__name__)

VAL_SCORE_THRESHOLD = 0.05  # the reference's test threshold; AP rewards recall


@dataclass(kw_only=True)
class InstanceTrainConfig(TrainRun):
    name: str = "cascade-swin"
    work_dir: Path = Path("runs/instance")
    val_split: str = "train"
    loader_workers: int = 1  # processes decoding JPEGs beside the training step


class FrameDataset(Dataset):
    """Every annotated frame of a YouTube-VIS dataset as one image with its instances (flipped
    at random, as the reference's training pipeline)."""

    def __init__(self, frames: VisPairDataset):
        self.frames = frames
        self.rng = frames.rng  # the draws' seeding reaches the flips through it

    def __len__(self) -> int:
        return len(self.frames.keys)

    def __getitem__(self, index: int) -> FrameSample:
        video_id, t = self.frames.keys[index]
        flip = self.frames.flip and self.frames.rng.uniform() < 0.5
        return self.frames.frame(video_id, t, flip)


def collate_frames(samples: list[FrameSample]) -> tuple[list, list]:
    return [s.image for s in samples], [s.target for s in samples]


def train_instance(cfg: InstanceTrainConfig) -> Path | None:
    """Train, evaluate and publish; returns the published checkpoint folder (None on the ranks
    other than 0 under torchrun)."""
    with process_group():
        return _train_instance(cfg)


def _train_instance(cfg: InstanceTrainConfig) -> Path | None:
    seed_everything(cfg.seed)
    ann, images = locate_ytvis(cfg.data, cfg.split)
    data = load_ytvis(ann, images, check_files=True)
    category_ids = sorted(data.categories)
    class_names = [data.categories[c] for c in category_ids]
    train_ids, val_set = split_videos(cfg, data)
    config = InstanceConfig.small(num_classes=len(class_names), **cfg.model_overrides)
    model = prepare_model(build_cascade_mask_rcnn(config), synced_batchnorm=True)
    label_of = {c: k + 1 for k, c in enumerate(category_ids)}
    frames = FrameDataset(VisPairDataset(data, label_of=label_of, seed=cfg.seed))
    keys = [k for k, (video_id, _) in enumerate(frames.frames.keys) if video_id in train_ids]
    loop_cfg, optimizer, start = prepare_run(model, cfg)
    batches = batch_stream(
        Subset(frames, keys),
        collate_frames,
        cfg,
        start,
        rng_owner=frames,
        loader_workers=cfg.loader_workers,
    )
    log.info("training %s on %d frames of %d videos", cfg.name, len(keys), len(train_ids))

    def losses(drawn: Drawn) -> dict[str, torch.Tensor]:
        images, targets = drawn.batch
        return model.training_losses(images, targets)

    result = run_loop(
        model, optimizer, batches, losses, loop_cfg, start, description="train instance"
    )
    return on_main_rank(
        lambda: validate_and_publish(
            cfg,
            model,
            FAMILY,
            evaluate_instance_model,
            ann,
            class_names,
            val_set,
            result,
            start,
            len(train_ids),
        )
    )


def evaluate_instance_model(
    model: CascadeMaskRCNN,
    data: YtvisDataset,
    video_ids: list[int],
    score_threshold: float = VAL_SCORE_THRESHOLD,
    batch_size: int = 4,
) -> dict[str, float]:
    """Per-frame COCO mask AP of `model` on every frame of the given videos of `data`."""
    from models.eval.instance import evaluate_instances

    gt = frames_as_coco(data, video_ids)
    category_of = {k + 1: c for k, c in enumerate(sorted(data.categories))}
    results = []
    frames = [(v, t) for v in video_ids for t in range(data.videos[v].length)]
    for first in range(0, len(frames), batch_size):
        chunk = frames[first : first + batch_size]
        images = [read_rgb(data.frame_path(v, t)) for v, t in chunk]
        detections = model.detect(images, min_score=score_threshold)
        for (v, t), found in zip(chunk, detections, strict=True):
            for label, score, mask in zip(found.labels, found.scores, found.masks, strict=True):
                results.append(
                    {
                        "image_id": frame_image_id(v, t),
                        "category_id": category_of[int(label)],
                        "score": float(score),
                        "segmentation": encode_mask(mask.numpy()),
                    }
                )
    return dict(evaluate_instances(gt, results).metrics)


def frame_image_id(video_id: int, t: int) -> int:
    """A frame's COCO image id: unique over a dataset of videos under 100,000 frames each."""
    return video_id * 100_000 + t


def frames_as_coco(data: YtvisDataset, video_ids: list[int]) -> dict:
    """The frames of the given videos as a COCO instances dict (image ids: frame_image_id)."""
    images, annotations = [], []
    for v in video_ids:
        video = data.videos[v]
        for t in range(video.length):
            images.append(
                {"id": frame_image_id(v, t), "width": video.width, "height": video.height}
            )
            for track in data.tracks_of(v):
                mask = track.mask(t)
                if mask is None or not mask.any():
                    continue
                ys, xs = np.nonzero(mask)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": frame_image_id(v, t),
                        "category_id": track.category_id,
                        "segmentation": encode_mask(mask),
                        "area": float(mask.sum()),
                        "bbox": [
                            float(xs.min()),
                            float(ys.min()),
                            float(xs.max() - xs.min() + 1),
                            float(ys.max() - ys.min() + 1),
                        ],
                        "iscrowd": int(track.iscrowd),
                    }
                )
    categories = [{"id": c, "name": n} for c, n in sorted(data.categories.items())]
    return {"images": images, "annotations": annotations, "categories": categories}
