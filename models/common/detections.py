"""What one forward pass gives for one frame, in the pixels of the frame as it was given."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks

from models.common.image import scale_boxes

# RoI masks get a one-pixel zero border before pasting (as torchvision and Detectron do), so
# that a mask reaching its box edge fades out at the edge instead of being cut.
_MASK_BORDER = 1


@dataclass
class FrameDetections:
    """Detections of one frame, sorted by score (highest first), on the CPU.

    boxes: (N, 4) float32 x1 y1 x2 y2 in input pixels; labels: (N,) int64 in 1..num_classes;
    scores: (N,) float32; masks: (N, H, W) bool at the input size; embeddings: (N, D) float32 track
    embeddings for the Tracker; mask_probs: (N, H, W) float32 at the input size, only when asked
    for (they cost 4 bytes a pixel an object).
    """

    boxes: Tensor
    labels: Tensor
    scores: Tensor
    masks: Tensor
    embeddings: Tensor
    image_size: tuple[int, int]
    mask_probs: Tensor | None = None

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


def to_input_pixels(
    raw: dict[str, Tensor],
    network_size: tuple[int, int],
    input_size: tuple[int, int],
    mask_threshold: float,
    with_mask_probs: bool,
) -> FrameDetections:
    """One image's raw network output (boxes in network pixels, RoI mask probabilities) ->
    FrameDetections at the input size."""
    boxes = scale_boxes(raw["boxes"], network_size, input_size)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, input_size[1])
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, input_size[0])
    roi_probs = raw["mask_probs"]
    masks, probs = paste_masks(roi_probs, boxes, input_size, mask_threshold, with_mask_probs)
    return FrameDetections(
        boxes=boxes.float().cpu(),
        labels=raw["labels"].cpu(),
        scores=raw["scores"].float().cpu(),
        masks=masks.cpu(),
        embeddings=raw["embeddings"].float().cpu(),
        image_size=(int(input_size[0]), int(input_size[1])),
        mask_probs=None if probs is None else probs.cpu(),
    )


def paste_masks(
    roi_probs: Tensor,
    boxes: Tensor,
    image_size: tuple[int, int],
    threshold: float,
    with_probs: bool,
) -> tuple[Tensor, Tensor | None]:
    """RoI mask probabilities (N, 1, M, M) pasted into their boxes on an image of image_size:
    binary masks (N, H, W) and, if asked, the probabilities (N, H, W).

    The same resampling as torchvision's paste_masks_in_image, but each mask is resized only
    inside its box and written straight into the output: no float (N, H, W) stack is made
    unless the probabilities are wanted (100 masks of a 1280x720 frame would be 370 MB).
    """
    height, width = image_size
    count = roi_probs.shape[0]
    masks = torch.zeros((count, height, width), dtype=torch.bool, device=roi_probs.device)
    probs = torch.zeros((count, height, width), device=roi_probs.device) if with_probs else None
    if count == 0:
        return masks, probs
    padded, scale = expand_masks(roi_probs, padding=_MASK_BORDER)
    pixel_boxes = expand_boxes(boxes, scale).to(torch.int64).tolist()  # one device sync
    for index, box in enumerate(pixel_boxes):
        region, values = _resize_into_box(padded[index, 0], box, height, width)
        if values is None:
            continue
        masks[index][region] = values >= threshold
        if probs is not None:
            probs[index][region] = values
    return masks, probs


def _resize_into_box(
    mask: Tensor, box: list[int], height: int, width: int
) -> tuple[tuple[slice, slice], Tensor | None]:
    """The mask resized to its (inclusive) integer box, cut to the image: (region, values)."""
    x0, y0, x1, y1 = box
    box_width, box_height = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
    left, top = max(x0, 0), max(y0, 0)
    right, bottom = min(x1 + 1, width), min(y1 + 1, height)
    region = (slice(top, bottom), slice(left, right))
    if right <= left or bottom <= top:
        return region, None
    resized = F.interpolate(
        mask[None, None], size=(box_height, box_width), mode="bilinear", align_corners=False
    )[0, 0]
    return region, resized[top - y0 : bottom - y0, left - x0 : right - x0]
