"""Training samples for MaskTrack R-CNN: a key frame and a reference frame of the same video.

As in the reference, the reference frame is drawn within +-max_gap frames of the key frame; the
track head learns to match key-frame instances to reference-frame instances by their ids, and a
key instance that is absent from the reference frame is labelled "new" (0).
"""

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from models.data.errors import DatasetError
from models.data.ytvis import YtvisDataset


@dataclass
class FrameSample:
    image: torch.Tensor  # (3, H, W) float in [0, 1], RGB
    target: dict[
        str, torch.Tensor
    ]  # boxes (N, 4) xyxy pixels, labels (N,), masks (N, H, W), instance_ids (N,)


def read_rgb(path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(path, "frame file is missing or not an image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class VisPairDataset(Dataset):
    """Every annotated frame of every video is a key frame once per epoch; with `empty_frames`
    every frame is, those with no instance too (a video of none of the categories teaches the
    detector what is not an object; the reference drops them, as it trains on YouTube-VIS,
    whose annotated frames all hold one)."""

    def __init__(
        self,
        data: YtvisDataset,
        label_of: dict[int, int] | None = None,
        max_gap: int = 100,
        flip: bool = True,
        seed: int = 0,
        empty_frames: bool = False,
    ):
        """label_of: dataset category id -> model label 1..C (default: the ids themselves)."""
        self.data = data
        self.label_of = label_of or {c: c for c in data.categories}
        self.max_gap = max_gap
        self.flip = flip
        self.rng = np.random.default_rng(seed)
        self.annotated: dict[int, list[int]] = {}  # video id -> its key frames
        for video_id, video in data.videos.items():
            frames = [
                t
                for t in range(video.length)
                if empty_frames
                or any(tr.segmentations[t] is not None for tr in data.tracks_of(video_id))
            ]
            if frames:
                self.annotated[video_id] = frames
        self.keys = [(v, t) for v, frames in self.annotated.items() for t in frames]
        if not self.keys:
            raise ValueError("the dataset has no annotated frame to train on")

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> tuple[FrameSample, FrameSample]:
        video_id, key_t = self.keys[index]
        candidates = [t for t in self.annotated[video_id] if abs(t - key_t) <= self.max_gap]
        others = [t for t in candidates if t != key_t] or [key_t]
        ref_t = int(self.rng.choice(others))
        flip = self.flip and self.rng.uniform() < 0.5
        return self.frame(video_id, key_t, flip), self.frame(video_id, ref_t, flip)

    def frame(self, video_id: int, t: int, flip: bool = False) -> FrameSample:
        image = read_rgb(self.data.frame_path(video_id, t))
        masks, labels, ids = [], [], []
        for track in self.data.tracks_of(video_id):
            mask = track.mask(t)
            if mask is not None and mask.any() and not track.iscrowd:
                masks.append(mask)
                labels.append(self.label_of[track.category_id])
                ids.append(track.id)
        h, w = image.shape[:2]
        mask_array = np.stack(masks) if masks else np.zeros((0, h, w), np.uint8)
        if flip:
            image, mask_array = image[:, ::-1], mask_array[:, :, ::-1]
        return FrameSample(
            torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0,
            {
                "boxes": masks_to_boxes(mask_array),
                "labels": torch.tensor(labels, dtype=torch.int64),
                "masks": torch.from_numpy(np.ascontiguousarray(mask_array)),
                "instance_ids": torch.tensor(ids, dtype=torch.int64),
            },
        )


def masks_to_boxes(masks: np.ndarray) -> torch.Tensor:
    """(N, H, W) -> (N, 4) boxes x1, y1, x2, y2 with exclusive x2, y2 (pixel edges)."""
    boxes = torch.zeros((len(masks), 4), dtype=torch.float32)
    for k, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        boxes[k] = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return boxes


def collate_pairs(batch: list[tuple[FrameSample, FrameSample]]):
    """-> key images, key targets, reference images, reference targets (lists, sizes may differ)."""
    keys, refs = zip(*batch, strict=True)
    return (
        [s.image for s in keys],
        [s.target for s in keys],
        [s.image for s in refs],
        [s.target for s in refs],
    )
