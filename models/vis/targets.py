"""Training inputs: checks on the targets and the same resize the test path applies."""

from __future__ import annotations

import torch
from torch import Tensor

from models.common.image import (
    Frame,
    ImageBatch,
    fit_size,
    normalize,
    pad_batch,
    resize_image,
    resize_masks,
    scale_boxes,
    to_float_image,
)
from models.vis.config import VisConfig

TARGET_KEYS = ("boxes", "labels", "masks", "instance_ids")


def prepare_training_batch(
    images: list[Frame],
    targets: list[dict[str, Tensor]],
    config: VisConfig,
    device: torch.device,
) -> tuple[ImageBatch, list[dict[str, Tensor]]]:
    """Images and their targets resized as at test time (keep ratio, fit the configured size),
    normalised and padded into one batch; targets moved to `device` with checked dtypes.

    A data pipeline that already resized its samples pays nothing here: the resize is skipped
    when the size already fits.
    """
    if len(images) != len(targets):
        raise ValueError(f"{len(images)} images but {len(targets)} targets")
    resized_images, resized_targets, sizes, input_sizes = [], [], [], []
    for index, (frame, target) in enumerate(zip(images, targets, strict=True)):
        image = to_float_image(frame, device)
        input_size = (int(image.shape[1]), int(image.shape[2]))
        checked = check_target(target, input_size, config.num_classes, index, device)
        size = fit_size(*input_size, config.image_long_edge, config.image_short_edge)
        image = normalize(resize_image(image, size), config.image_mean, config.image_std)
        resized_images.append(image)
        resized_targets.append(resize_target(checked, input_size, size))
        sizes.append(size)
        input_sizes.append(input_size)
    batch = ImageBatch(pad_batch(resized_images, config.size_divisible), sizes, input_sizes)
    return batch, resized_targets


def resize_target(
    target: dict[str, Tensor], from_size: tuple[int, int], to_size: tuple[int, int]
) -> dict[str, Tensor]:
    resized = dict(target)
    resized["boxes"] = scale_boxes(target["boxes"], from_size, to_size)
    resized["masks"] = resize_masks(target["masks"], to_size)
    return resized


def check_target(
    target: dict[str, Tensor],
    image_size: tuple[int, int],
    num_classes: int,
    index: int,
    device: torch.device,
) -> dict[str, Tensor]:
    """The target with checked shapes and values, as float32 boxes / int64 labels and ids /
    uint8 masks on `device`; a ValueError names the image index and the problem."""
    missing = [key for key in TARGET_KEYS if key not in target]
    if missing:
        raise ValueError(f"target {index}: missing {', '.join(missing)}")
    boxes = torch.as_tensor(target["boxes"], dtype=torch.float32, device=device)
    if boxes.numel() == 0:
        boxes = boxes.reshape(0, 4)  # an image without objects may give [] for its boxes
    labels = torch.as_tensor(target["labels"], dtype=torch.int64, device=device)
    masks = torch.as_tensor(target["masks"], device=device).to(torch.uint8)
    if masks.numel() == 0:
        masks = masks.reshape(0, *image_size)
    instance_ids = torch.as_tensor(target["instance_ids"], dtype=torch.int64, device=device)
    count = boxes.shape[0] if boxes.dim() == 2 else -1
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"target {index}: boxes must be (N, 4), got {tuple(boxes.shape)}")
    if labels.shape != (count,) or instance_ids.shape != (count,):
        raise ValueError(f"target {index}: labels and instance_ids must be ({count},)")
    if masks.shape != (count, *image_size):
        raise ValueError(
            f"target {index}: masks must be {(count, *image_size)}, got {tuple(masks.shape)}"
        )
    if count and (labels.min() < 1 or labels.max() > num_classes):
        raise ValueError(f"target {index}: labels must be in 1..{num_classes} (0 is background)")
    if count and ((boxes[:, 2:] <= boxes[:, :2]).any()):
        raise ValueError(f"target {index}: every box needs x2 > x1 and y2 > y1")
    return {"boxes": boxes, "labels": labels, "masks": masks, "instance_ids": instance_ids}
