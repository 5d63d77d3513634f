"""What one forward pass gives for one frame, in the pixels of the frame as it was given."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from models.common.image import scale_boxes


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
    roi_aligned: bool = False,
) -> FrameDetections:
    """One image's raw network output (boxes in network pixels, RoI mask probabilities) ->
    FrameDetections at the input size. roi_aligned: the RoI grid convention the mask head was
    trained with (see paste_masks)."""
    boxes = scale_boxes(raw["boxes"], network_size, input_size)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, input_size[1])
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, input_size[0])
    grid_boxes = boxes if roi_aligned else unaligned_grid_boxes(boxes, network_size, input_size)
    roi_probs = raw["mask_probs"]
    masks, probs = paste_masks(roi_probs, grid_boxes, input_size, mask_threshold, with_mask_probs)
    return FrameDetections(
        boxes=boxes.float().cpu(),
        labels=raw["labels"].cpu(),
        scores=raw["scores"].float().cpu(),
        masks=masks.cpu(),
        embeddings=raw["embeddings"].float().cpu(),
        image_size=(int(input_size[0]), int(input_size[1])),
        mask_probs=None if probs is None else probs.cpu(),
    )


def unaligned_grid_boxes(
    boxes: Tensor, network_size: tuple[int, int], input_size: tuple[int, int]
) -> Tensor:
    """Where an unaligned RoI's mask grid lies, in input pixels (pixel i spanning [i, i + 1)).

    torchvision's RoIAlign (aligned=False), which also cuts its mask targets from the ground
    truth (roi_heads.project_masks_on_boxes), reads a box coordinate x as the centre of network
    pixel x: the grid it learned to fill starts half a network pixel right of and below the box.
    MMDetection's (aligned=True) reads boxes as they are, so its grid is the box itself."""
    half_pixel = torch.tensor(
        [0.5 * input_size[1] / network_size[1], 0.5 * input_size[0] / network_size[0]] * 2,
        dtype=boxes.dtype,
        device=boxes.device,
    )
    return boxes + half_pixel


def paste_masks(
    roi_probs: Tensor,
    grid_boxes: Tensor,
    image_size: tuple[int, int],
    threshold: float,
    with_probs: bool,
) -> tuple[Tensor, Tensor | None]:
    """RoI mask probabilities (N, 1, M, M) pasted onto an image of image_size: binary masks
    (N, H, W) and, if asked, the probabilities (N, H, W).

    Each M x M grid covers its (float) grid box exactly, and every pixel takes the bilinear
    value at its centre, zero beyond the grid's outer cells (Detectron2's and MMDetection's
    paste). torchvision's paste_masks_in_image instead truncates the box to whole pixels and
    resizes a one-cell-padded mask to that, which moves a mask by up to about a pixel: on the
    synthetic world's 20-50 pixel objects that cost 0.024 of video AP (0.600 -> 0.624 on the
    validation videos). Only the pixels near the box are computed and written, so no float
    (N, H, W) stack is made unless the probabilities are wanted (100 masks of a 1280x720 frame
    would be 370 MB).
    """
    height, width = image_size
    count = roi_probs.shape[0]
    masks = torch.zeros((count, height, width), dtype=torch.bool, device=roi_probs.device)
    probs = torch.zeros((count, height, width), device=roi_probs.device) if with_probs else None
    if count == 0:
        return masks, probs
    cells = roi_probs.shape[-1]
    for index, box in enumerate(grid_boxes.tolist()):  # one device sync
        region, values = _sample_grid(roi_probs[index : index + 1], box, cells, height, width)
        if values is None:
            continue
        masks[index][region] = values >= threshold
        if probs is not None:
            probs[index][region] = values
    return masks, probs


def _sample_grid(
    grid: Tensor, box: list[float], cells: int, height: int, width: int
) -> tuple[tuple[slice, slice], Tensor | None]:
    """The (1, 1, M, M) grid covering `box` sampled at the centres of the pixels it can reach
    (the box and one cell around it, cut to the image): (region, values)."""
    x0, y0, x1, y1 = box
    box_width, box_height = max(x1 - x0, 1e-3), max(y1 - y0, 1e-3)
    margin_x, margin_y = box_width / cells, box_height / cells
    left, top = max(math.floor(x0 - margin_x), 0), max(math.floor(y0 - margin_y), 0)
    right = min(math.ceil(x1 + margin_x), width)
    bottom = min(math.ceil(y1 + margin_y), height)
    region = (slice(top, bottom), slice(left, right))
    if right <= left or bottom <= top:
        return region, None
    # Normalised grid_sample coordinates (align_corners=False: -1 and 1 are the grid's edges).
    xs = (torch.arange(left, right, device=grid.device) + 0.5 - x0) * (2 / box_width) - 1
    ys = (torch.arange(top, bottom, device=grid.device) + 0.5 - y0) * (2 / box_height) - 1
    points = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)
    values = F.grid_sample(grid, points[None].to(grid.dtype), align_corners=False)
    return region, values[0, 0]
