"""Tiny synthetic inputs for the MaskTrack R-CNN tests: coloured rectangles on a dark frame."""

from __future__ import annotations

import numpy as np
import torch

from models.vis import FrameDetections, VisConfig

HEIGHT, WIDTH = 64, 96


def tiny_config(num_classes: int = 2, **overrides) -> VisConfig:
    """The small model at a 96x64 input: fast enough for a unit test on two CPU cores."""
    settings = dict(image_long_edge=WIDTH, image_short_edge=HEIGHT, box_detections_per_img=20)
    settings.update(overrides)
    return VisConfig.small(num_classes=num_classes, **settings)


def draw_rectangles(
    rectangles: list[tuple[int, int, int, int]],
    colours: list[tuple[int, int, int]],
    size: tuple[int, int] = (HEIGHT, WIDTH),
) -> tuple[np.ndarray, np.ndarray]:
    """(frame uint8 H x W x 3, masks uint8 N x H x W) with filled x1 y1 x2 y2 rectangles."""
    frame = np.full((*size, 3), 20, dtype=np.uint8)
    masks = np.zeros((len(rectangles), *size), dtype=np.uint8)
    for index, ((x1, y1, x2, y2), colour) in enumerate(zip(rectangles, colours, strict=True)):
        frame[y1:y2, x1:x2] = colour
        masks[index, y1:y2, x1:x2] = 1
    return frame, masks


def two_rectangle_sample(shift: int = 0) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    """A red square (class 1, instance 7) and a green bar (class 2, instance 9), moved right by
    `shift` pixels: key and reference frames of one clip."""
    rectangles = [(8 + shift, 10, 36 + shift, 40), (50 + shift, 20, 86, 52)]
    frame, masks = draw_rectangles(rectangles, [(220, 40, 40), (40, 200, 60)])
    target = {
        "boxes": torch.tensor(rectangles, dtype=torch.float32),
        "labels": torch.tensor([1, 2]),
        "masks": torch.from_numpy(masks),
        "instance_ids": torch.tensor([7, 9]),
    }
    return frame, target


def fake_detections(
    boxes: list[list[float]],
    embeddings: list[list[float]],
    labels: list[int],
    scores: list[float],
) -> FrameDetections:
    """Detections with chosen boxes / embeddings, for the tracker (empty masks: a tracker of
    overlap="mask" is given masks of its own)."""
    count = len(boxes)
    embed_dim = len(embeddings[0]) if embeddings else 3
    return FrameDetections(
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(count, 4),
        labels=torch.tensor(labels, dtype=torch.int64),
        scores=torch.tensor(scores, dtype=torch.float32),
        masks=torch.zeros((count, 1, 1), dtype=torch.bool),
        embeddings=torch.tensor(embeddings, dtype=torch.float32).reshape(count, embed_dim),
        image_size=(100, 100),
    )
