"""Training clips for STCN from a DAVIS-format dataset (ours, DAVIS 2017 or YouTube-VOS as DAVIS).

As in the reference: a clip is 3 frames of one video in time order (or reversed), each gap at
most `max_gap` frames; one random crop for the whole clip, placed so that the first frame shows
an object; at most 2 of the first frame's objects are followed (the others count as background).
Frames are first scaled down as inference scales them (short side at most `short_edge`), so that
objects are the size the model will see when serving.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from models.common.image import IMAGENET_MEAN, IMAGENET_STD
from models.data.davis import DavisVideo, read_palette_png
from models.data.errors import DatasetError
from models.train.vis_data import read_rgb
from models.vos.inference import working_size
from models.vos.network import STRIDE


@dataclass(frozen=True)
class ClipSettings:
    length: int = 3
    max_gap: int = 5  # frames from one clip frame to the next, at most (STCN's max_skip)
    crop: tuple[int, int] = (224, 224)  # (height, width), multiples of 16
    max_objects: int = 2
    # Objects entering the view are tiny on a clip's first frame; following them is learnt too.
    min_object_pixels: int = 20  # a smaller first-frame object (in the crop) is not followed
    short_edge: int | None = 240  # the model's working resolution
    upscale: bool = False  # smaller frames are scaled up to it too (VosConfig.upscale)
    crop_tries: int = 10

    def __post_init__(self) -> None:
        if self.length < 2:
            raise ValueError(f"a clip needs at least 2 frames, got {self.length}")
        if any(side < STRIDE or side % STRIDE for side in self.crop):
            raise ValueError(f"crop {self.crop} must be multiples of {STRIDE}")
        if self.max_gap < 1 or self.max_objects < 1:
            raise ValueError("max_gap and max_objects must be >= 1")


@dataclass
class Clip:
    frames: torch.Tensor  # (T, 3, H, W) normalised
    first_masks: torch.Tensor  # (K, H, W) float: the followed objects on frame 0, K = max_objects
    selector: torch.Tensor  # (K,) 1 for a followed object, 0 for padding
    labels: torch.Tensor  # (T, H, W) int64: 0 background, k + 1 for followed object k


def annotated_videos(videos: list[DavisVideo], length: int) -> list[DavisVideo]:
    """Videos with an annotation for every frame and at least `length` frames (DAVIS val and
    test give the first frame only: they cannot train)."""
    usable = []
    for video in videos:
        if len(video.frame_paths) >= length and len(video.annotation_paths) == len(
            video.frame_paths
        ):
            usable.append(video)
    return usable


class VosClipDataset(Dataset):
    """One random clip of each video per epoch; the clip is drawn anew every time."""

    def __init__(self, videos: list[DavisVideo], settings: ClipSettings, seed: int = 0):
        self.videos = annotated_videos(videos, settings.length)
        if not self.videos:
            raise ValueError(
                f"no video has {settings.length}+ frames annotated throughout to train on"
            )
        self.settings = settings
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> Clip:
        # A clip whose first frame shows no object (all out of view) teaches nothing: draw
        # again, from the next videos if this one keeps failing.
        for offset in range(len(self.videos)):
            video = self.videos[(index + offset) % len(self.videos)]
            for _ in range(self.settings.crop_tries):
                clip = self._try_clip(video)
                if clip is not None:
                    return clip
        raise DatasetError(
            self.videos[index].frame_paths[0].parent,
            f"no clip of any video shows an object of {self.settings.min_object_pixels}+ "
            "pixels on its first frame",
        )

    def _try_clip(self, video: DavisVideo) -> Clip | None:
        times = self._clip_times(len(video.frame_paths))
        images, ids = self._load(video, times)
        top, left = self._crop_origin(ids[0])
        images, ids = _crop(images, ids, top, left, self.settings.crop)
        objects = self._followed_objects(ids[0])
        return self._clip(images, ids, objects) if objects else None

    def _clip_times(self, count: int) -> list[int]:
        """Frame indices in order, gaps 1..max_gap, reversed half of the time."""
        gap = min(self.settings.max_gap, (count - 1) // (self.settings.length - 1))
        gaps = self.rng.integers(1, gap + 1, self.settings.length - 1)
        start = int(self.rng.integers(0, count - int(gaps.sum())))
        times = [start, *(start + np.cumsum(gaps)).tolist()]
        return times[::-1] if self.rng.random() < 0.5 else times

    def _load(self, video: DavisVideo, times: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(T, H, W, 3) frames and (T, H, W) ids, scaled to the working resolution."""
        images, ids = [], []
        for t in times:
            image = read_rgb(video.frame_paths[t])
            mask = read_palette_png(video.annotation_paths[t])
            if mask.shape != image.shape[:2]:
                raise DatasetError(video.annotation_paths[t], "mask size differs from its frame")
            images.append(image)
            ids.append(mask)
        settings = self.settings
        height, width = working_size(images[0].shape[:2], settings.short_edge, settings.upscale)
        if (height, width) != images[0].shape[:2]:
            # Area averaging to shrink, as inference's antialiased resize; bilinear to enlarge.
            smaller = height < images[0].shape[0]
            mode = cv2.INTER_AREA if smaller else cv2.INTER_LINEAR
            images = [cv2.resize(i, (width, height), interpolation=mode) for i in images]
            ids = [cv2.resize(m, (width, height), interpolation=cv2.INTER_NEAREST) for m in ids]
        return np.stack(images), np.stack(ids)

    def _crop_origin(self, first_ids: np.ndarray) -> tuple[int, int]:
        """A crop position that puts a random pixel of a random first-frame object in the crop
        (anywhere when there is none); the crop may overhang a frame smaller than it (padded)."""
        crop_h, crop_w = self.settings.crop
        height, width = first_ids.shape
        objects = self._followed_objects(first_ids)
        if objects:
            ys, xs = np.nonzero(first_ids == objects[0])
            pick = int(self.rng.integers(len(ys)))
            return self._origin_around(ys[pick], height, crop_h), self._origin_around(
                xs[pick], width, crop_w
            )
        top = int(self.rng.integers(0, max(0, height - crop_h) + 1))
        left = int(self.rng.integers(0, max(0, width - crop_w) + 1))
        return top, left

    def _origin_around(self, position: int, length: int, crop: int) -> int:
        """A crop start on one axis whose window [start, start + crop) holds `position`."""
        low = max(0, position - crop + 1)
        high = max(low, min(position, length - crop))
        return int(self.rng.integers(low, high + 1))

    def _followed_objects(self, first_ids: np.ndarray) -> list[int]:
        ids, counts = np.unique(first_ids, return_counts=True)
        # 255 is DAVIS's void label: never an object to follow.
        candidates = [
            int(i)
            for i, n in zip(ids, counts, strict=True)
            if i not in (0, 255) and n >= self.settings.min_object_pixels
        ]
        self.rng.shuffle(candidates)
        return candidates[: self.settings.max_objects]

    def _clip(self, images: np.ndarray, ids: np.ndarray, objects: list[int]) -> Clip:
        # numpy, not torch: small single-threaded array work, which torch's thread pool makes
        # many times slower on a busy machine.
        if self.rng.random() < 0.5:
            images, ids = images[:, :, ::-1], ids[:, :, ::-1]
        labels = np.zeros(ids.shape, dtype=np.int64)
        for k, object_id in enumerate(objects):
            labels[ids == object_id] = k + 1
        count = self.settings.max_objects
        first = np.stack([labels[0] == k + 1 for k in range(count)]).astype(np.float32)
        selector = np.array([k < len(objects) for k in range(count)], dtype=np.float32)
        return Clip(
            torch.from_numpy(normalised(images)),
            torch.from_numpy(first),
            torch.from_numpy(selector),
            torch.from_numpy(labels),
        )


def normalised(images: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB -> (T, 3, H, W) float32 with ImageNet mean and std, as
    models.common.image.normalize does for inference."""
    mean = np.array(IMAGENET_MEAN, dtype=np.float32) * 255
    scale = 1 / (np.array(IMAGENET_STD, dtype=np.float32) * 255)
    return np.ascontiguousarray(((images.astype(np.float32) - mean) * scale).transpose(0, 3, 1, 2))


def _crop(
    images: np.ndarray, ids: np.ndarray, top: int, left: int, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The crop of every frame; a frame smaller than the crop is padded (black, background)."""
    crop_h, crop_w = size
    pad_h, pad_w = max(0, crop_h - images.shape[1]), max(0, crop_w - images.shape[2])
    if pad_h or pad_w:
        images = np.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
        ids = np.pad(ids, ((0, 0), (0, pad_h), (0, pad_w)))
    window = (slice(None), slice(top, top + crop_h), slice(left, left + crop_w))
    return images[window], ids[window]


def collate_clips(clips: list[Clip]) -> Clip:
    return Clip(
        torch.stack([c.frames for c in clips]),
        torch.stack([c.first_masks for c in clips]),
        torch.stack([c.selector for c in clips]),
        torch.stack([c.labels for c in clips]),
    )
