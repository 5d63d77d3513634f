"""Pasting RoI masks back onto the image (models.common.detections) inverts the way the mask
targets were cut: a ground-truth mask cut into a 28x28 RoI grid, as training cuts it, and pasted
back at its box gives the mask back, for both RoIAlign conventions and at a network size half
the input's. (Unaligned targets lose the object's outer half pixel on the left and top, as
torchvision's RoIAlign reads a box corner as a pixel's centre: that IoU stays a little under 1.)"""

import pytest
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.ops import roi_align

from models.common.detections import paste_masks, unaligned_grid_boxes

GRID = 28
CENTRE, RADIUS = (37.3, 29.6), 11.2  # in network pixels (continuous: pixel i spans [i, i + 1))
NETWORK_SIZE = (60, 80)
BOX = torch.tensor([[CENTRE[0] - RADIUS, CENTRE[1] - RADIUS, CENTRE[0] + RADIUS,
                     CENTRE[1] + RADIUS]])  # fmt: skip


def disc(size: tuple[int, int], pixels_a_network_pixel: float) -> torch.Tensor:
    """The disc rendered at a resolution: a pixel is in where its centre is."""
    height, width = size
    ys = (torch.arange(height) + 0.5) / pixels_a_network_pixel
    xs = (torch.arange(width) + 0.5) / pixels_a_network_pixel
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return (xx - CENTRE[0]) ** 2 + (yy - CENTRE[1]) ** 2 <= RADIUS**2


def cut_target(aligned: bool) -> torch.Tensor:
    """The disc's (1, 1, 28, 28) mask target, cut at its box as training cuts it."""
    return roi_align(
        disc(NETWORK_SIZE, 1.0)[None, None].float(), [BOX], GRID, 1.0, 2, aligned=aligned
    )


def cut_and_paste(aligned: bool, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    input_size = (NETWORK_SIZE[0] * scale, NETWORK_SIZE[1] * scale)
    input_box = BOX * scale
    grid_box = input_box if aligned else unaligned_grid_boxes(input_box, NETWORK_SIZE, input_size)
    pasted, _ = paste_masks(cut_target(aligned), grid_box, input_size, 0.5, with_probs=False)
    return pasted[0], disc(input_size, float(scale))


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("scale", [1, 2])
@pytest.mark.parametrize("aligned", [False, True])
def test_a_cut_mask_pasted_back_is_the_mask(aligned, scale):
    pasted, truth = cut_and_paste(aligned, scale)
    assert iou(pasted, truth) >= (0.99 if aligned and scale == 1 else 0.96)


def test_the_exact_paste_beats_torchvisions_on_small_objects():
    pasted, truth = cut_and_paste(aligned=False, scale=1)
    legacy = paste_masks_in_image(cut_target(aligned=False), BOX, NETWORK_SIZE)[0, 0] >= 0.5
    assert iou(pasted, truth) > iou(legacy, truth) + 0.03


def test_the_probabilities_are_those_thresholded():
    target = torch.rand(3, 1, GRID, GRID, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[2.5, 3.0, 40.2, 30.7], [-4.0, 10.0, 20.0, 70.0], [85.0, 5.0, 95.0, 9.0]])
    masks, probs = paste_masks(target, boxes, (50, 80), 0.5, with_probs=True)
    assert torch.equal(masks, probs >= 0.5)
    assert probs[0, 3:30, 3:40].min() > 0 and probs[1, 10:50, 0:20].min() > 0
    # nothing beyond a grid cell around the box; nothing for a box off the image
    assert not probs[0, 33:].any() and not probs[0, :, 43:].any() and not probs[2].any()
