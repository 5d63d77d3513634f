"""MaskFormer's set loss with deep supervision, as MMDetection's MaskFormerHead computes it.

For each decoder layer's outputs, on their own Hungarian matching (models.panoptic.matcher):

- classification: cross entropy over all queries of the batch, the target of a matched query its
  segment's class and of every other query "no object"; class weights 1, no-object 0.1, and the
  mean weighted by those weights (so with no segment at all the weight cancels out);
- mask focal loss: sigmoid focal loss (alpha 0.25, gamma 2) of each matched query's mask logits,
  upsampled (bilinear) to the targets' size, against its segment's mask, summed and divided by
  (matched segments x pixels);
- mask dice loss: 1 - (2 |p . g| + 1) / (|p| + |g| + 1) per matched pair, summed and divided by
  the matched segments.

Each is multiplied by its weight (1, 20, 1). The result is a dict named as MMDetection's:
loss_cls / loss_mask / loss_dice for the last layer, d{i}.loss_* for layer i before it; the
training loss is their sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from models.panoptic.config import PanopticConfig
from models.panoptic.matcher import HungarianMatcher, Match
from models.panoptic.model import MaskFormerOutput


@dataclass(frozen=True)
class PanopticTarget:
    """One image's ground truth: every segment (things and stuff) as a class and a mask.

    labels: (G,) 0-based classes (things first, then stuff).
    masks: (G, H, W) 0 / 1 at the padded batch's input size (pixels outside the image are 0).
    """

    labels: Tensor
    masks: Tensor


@dataclass(frozen=True)
class LayerLoss:
    classification: Tensor
    focal: Tensor
    dice: Tensor


class MaskFormerLoss:
    def __init__(self, config: PanopticConfig, matcher: HungarianMatcher | None = None):
        self.config = config
        self.matcher = matcher or HungarianMatcher.from_config(config)
        class_weights = torch.ones(config.num_classes + 1)
        class_weights[config.no_object] = config.no_object_weight
        self.class_weights = class_weights

    def __call__(
        self, output: MaskFormerOutput, targets: list[PanopticTarget]
    ) -> dict[str, Tensor]:
        """The weighted losses of every decoder layer (see the module docstring)."""
        layers = output.layer_class_logits.shape[0]
        losses: dict[str, Tensor] = {}
        for layer in range(layers):
            result = self.layer_loss(
                output.layer_class_logits[layer], output.layer_mask_logits[layer], targets
            )
            prefix = "" if layer == layers - 1 else f"d{layer}."
            losses[f"{prefix}loss_cls"] = self.config.class_loss_weight * result.classification
            losses[f"{prefix}loss_mask"] = self.config.focal_loss_weight * result.focal
            losses[f"{prefix}loss_dice"] = self.config.dice_loss_weight * result.dice
        return losses

    def layer_loss(
        self, class_logits: Tensor, mask_logits: Tensor, targets: list[PanopticTarget]
    ) -> LayerLoss:
        """Unweighted losses of one layer: class_logits (B, Q, C + 1), mask_logits (B, Q, h, w)."""
        if len(targets) != class_logits.shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {class_logits.shape[0]}")
        matches = [
            self.matcher.match(logits, masks, target.labels, target.masks)
            for logits, masks, target in zip(class_logits, mask_logits, targets, strict=True)
        ]
        classification = self.classification_loss(class_logits, targets, matches)
        focal, dice = self.mask_losses(mask_logits, targets, matches)
        return LayerLoss(classification, focal, dice)

    def classification_loss(
        self, class_logits: Tensor, targets: list[PanopticTarget], matches: list[Match]
    ) -> Tensor:
        labels = torch.full(
            class_logits.shape[:2],
            self.config.no_object,
            dtype=torch.long,
            device=class_logits.device,
        )
        for image, (target, match) in enumerate(zip(targets, matches, strict=True)):
            labels[image, match.queries] = target.labels[match.segments].to(labels.device)
        weights = self.class_weights.to(class_logits.device, class_logits.dtype)
        # reduction="mean" with weights divides by the sum of the targets' weights: MMDetection's
        # avg_factor = class_weight[labels].sum().
        return F.cross_entropy(class_logits.flatten(0, 1), labels.flatten(), weight=weights)

    def mask_losses(
        self, mask_logits: Tensor, targets: list[PanopticTarget], matches: list[Match]
    ) -> tuple[Tensor, Tensor]:
        """(focal, dice) over the matched pairs of the batch."""
        predicted = [
            logits[match.queries] for logits, match in zip(mask_logits, matches, strict=True)
        ]
        wanted = [
            target.masks[match.segments] for target, match in zip(targets, matches, strict=True)
        ]
        matched = sum(len(match.queries) for match in matches)
        if matched == 0:
            zero = mask_logits.sum() * 0  # keeps the graph: every parameter gets a (zero) gradient
            return zero, zero
        target_size = tuple(wanted[0].shape[-2:])
        logits = F.interpolate(
            torch.cat(predicted)[:, None], size=target_size, mode="bilinear", align_corners=False
        )[:, 0]
        masks = torch.cat(wanted).to(logits.dtype)
        focal = sigmoid_focal_loss(
            logits, masks, alpha=self.config.focal_alpha, gamma=self.config.focal_gamma
        )
        focal = focal.sum() / (matched * masks[0].numel())
        return focal, dice_loss(logits, masks, self.config.dice_eps).sum() / matched


def dice_loss(mask_logits: Tensor, masks: Tensor, eps: float = 1.0) -> Tensor:
    """(N,): 1 - the naive dice coefficient of sigmoid(logits) and each mask."""
    probs = mask_logits.flatten(1).sigmoid()
    masks = masks.flatten(1)
    overlap = 2 * (probs * masks).sum(1)
    return 1 - (overlap + eps) / (probs.sum(1) + masks.sum(1) + eps)


def total_loss(losses: dict[str, Tensor]) -> Tensor:
    return torch.stack(list(losses.values())).sum()
