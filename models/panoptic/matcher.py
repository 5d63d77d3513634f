"""MaskFormer's Hungarian matcher: one query per ground-truth segment, at the least total cost.

The cost of query q for segment g is MMDetection's (HungarianAssigner with ClassificationCost,
FocalLossCost(binary_input=True) and DiceCost(pred_act=True)):

    class_weight * -softmax(class logits of q)[label of g]
  + focal_weight * the sigmoid focal loss of q's mask logits against g's mask, averaged over pixels
  + dice_weight * (1 - (2 |sigmoid(q) . g| + eps) / (|sigmoid(q)| + |g| + eps))

all computed on the grid of the mask logits (stride 4): the ground-truth masks are sampled onto
it with nearest neighbours first, as MMDetection's MaskFormerHead does before assigning.
scipy's linear_sum_assignment solves the assignment.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from models.panoptic.config import PanopticConfig

FOCAL_COST_EPS = 1e-12  # MMDetection's FocalLossCost eps, inside its logs


def class_cost(class_logits: Tensor, gt_labels: Tensor) -> Tensor:
    """(Q, G): minus the probability each query gives each segment's class."""
    return -class_logits.softmax(-1)[:, gt_labels]


def focal_cost(
    mask_logits: Tensor, gt_masks: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """(Q, G): the sigmoid focal loss of each query's mask against each segment's, the mean over
    pixels. mask_logits (Q, ...) and gt_masks (G, ...) share their pixel dimensions."""
    probs = mask_logits.flatten(1).sigmoid()
    targets = gt_masks.flatten(1).to(probs.dtype)
    # Per pixel, the loss if the pixel is in the segment (positive) and if it is not.
    positive = -(probs + FOCAL_COST_EPS).log() * alpha * (1 - probs).pow(gamma)
    negative = -(1 - probs + FOCAL_COST_EPS).log() * (1 - alpha) * probs.pow(gamma)
    total = positive @ targets.T + negative @ (1 - targets).T
    return total / probs.shape[1]


def dice_cost(mask_logits: Tensor, gt_masks: Tensor, eps: float = 1.0) -> Tensor:
    """(Q, G): 1 - the (naive, un-squared) dice coefficient of sigmoid(query mask) and the
    segment's mask; eps on both sides keeps empty masks finite."""
    probs = mask_logits.flatten(1).sigmoid()
    targets = gt_masks.flatten(1).to(probs.dtype)
    overlap = 2 * probs @ targets.T
    sizes = probs.sum(1)[:, None] + targets.sum(1)[None, :]
    return 1 - (overlap + eps) / (sizes + eps)


def masks_on_grid(gt_masks: Tensor, size: tuple[int, int]) -> Tensor:
    """(G, H, W) masks sampled onto an (h, w) grid by nearest neighbours, as 0 / 1 floats."""
    if gt_masks.shape[0] == 0:
        return gt_masks.new_zeros((0, *size), dtype=torch.float32)
    return F.interpolate(gt_masks[:, None].float(), size=size, mode="nearest")[:, 0]


@dataclass(frozen=True)
class Match:
    """Matched pairs, query indices ascending: query `queries[i]` answers segment `segments[i]`."""

    queries: Tensor
    segments: Tensor


@dataclass(frozen=True)
class HungarianMatcher:
    class_weight: float = 1.0
    focal_weight: float = 20.0
    dice_weight: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    dice_eps: float = 1.0

    @classmethod
    def from_config(cls, config: PanopticConfig) -> HungarianMatcher:
        return cls(
            class_weight=config.match_class_weight,
            focal_weight=config.match_focal_weight,
            dice_weight=config.match_dice_weight,
            focal_alpha=config.focal_alpha,
            focal_gamma=config.focal_gamma,
            dice_eps=config.dice_eps,
        )

    def cost_matrix(
        self, class_logits: Tensor, mask_logits: Tensor, gt_labels: Tensor, gt_masks: Tensor
    ) -> Tensor:
        """(Q, G) total cost. class_logits (Q, C + 1); mask_logits (Q, h, w); gt_labels (G,);
        gt_masks (G, h, w) on the logits' grid."""
        costs = self.class_weight * class_cost(class_logits, gt_labels)
        costs = costs + self.focal_weight * focal_cost(
            mask_logits, gt_masks, self.focal_alpha, self.focal_gamma
        )
        return costs + self.dice_weight * dice_cost(mask_logits, gt_masks, self.dice_eps)

    @torch.no_grad()
    def match(
        self, class_logits: Tensor, mask_logits: Tensor, gt_labels: Tensor, gt_masks: Tensor
    ) -> Match:
        """The least-cost assignment for one image. gt_masks (G, H, W) at any size: they are
        sampled onto the mask logits' grid (h, w) first. With more segments than queries, only
        as many segments as queries are matched."""
        device = class_logits.device
        if gt_labels.numel() == 0:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            return Match(empty, empty)
        grid = masks_on_grid(gt_masks, tuple(mask_logits.shape[-2:]))
        costs = self.cost_matrix(class_logits.float(), mask_logits.float(), gt_labels, grid)
        queries, segments = linear_sum_assignment(costs.cpu().numpy())
        return Match(
            torch.as_tensor(queries, dtype=torch.long, device=device),
            torch.as_tensor(segments, dtype=torch.long, device=device),
        )
