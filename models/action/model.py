"""The spatio-temporal action detector: `backbone` (SlowFast or SlowOnly) -> `roi_head`
(3D RoI extractor, ACRN shared head, AVA box head), MMAction2's FastRCNN-with-AVARoIHead less
its person detector (the actors' boxes come from elsewhere: ground truth in training, tracks in
serving).

Parameter names are the releases' exactly (models.action.mmaction_weights checks a file
against them), so a released state dict loads as it stands. forward() returns the box head's
logits with the background row; action_scores() is what inference reads: sigmoid, row 0 dropped.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from models.action.backbone import build_backbone
from models.action.config import ActionConfig
from models.action.feature_bank import BankBatch
from models.action.resnet3d import Bottleneck3d
from models.action.roi_head import ActionRoIHead

FAMILY = "action"


class ActionDetector(nn.Module):
    def __init__(self, config: ActionConfig):
        super().__init__()
        self.config = config
        self.backbone = build_backbone(config)
        self.roi_head = ActionRoIHead(config)

    def forward(self, clips: Tensor, rois: Tensor, bank: BankBatch | None = None) -> Tensor:
        """clips (B, 3, T, H, W), normalised; rois (N, 5) [batch index, x1, y1, x2, y2] in the
        clips' pixels, on the key frame; with a bank operator, the actors' banks (none: empty).
        Returns the class logits (N, num_classes), row 0 the background slot."""
        _check_inputs(clips, rois)
        return self.roi_head(self.backbone(clips), rois, bank)

    def actor_features(self, clips: Tensor, rois: Tensor) -> Tensor:
        """The actors' pooled features (N, C): what the classifier reads, and what a feature
        bank keeps of them."""
        _check_inputs(clips, rois)
        head = self.roi_head
        return head.bbox_head.pool(head.actor_maps(self.backbone(clips), rois))

    def action_scores(self, clips: Tensor, rois: Tensor, bank: BankBatch | None = None) -> Tensor:
        """(N, num_actions): each action's probability, independent of the others; column j is
        class j + 1 (AVA's action id j + 1 for the releases)."""
        return torch.sigmoid(self(clips, rois, bank)[:, 1:])

    def scores_from_features(self, actors: Tensor, bank: BankBatch | None = None) -> Tensor:
        """action_scores from actor_features (in eval mode the same numbers)."""
        return torch.sigmoid(self.roi_head.bbox_head.classify(actors, bank)[:, 1:])

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def architecture(self) -> dict[str, Any]:
        """The manifest's architecture dict: build_action_model takes it back."""
        return self.config.to_dict()


def _check_inputs(clips: Tensor, rois: Tensor) -> None:
    if clips.dim() != 5 or clips.shape[1] != 3:
        raise ValueError(f"clips must be (B, 3, T, H, W), got {tuple(clips.shape)}")
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must be (N, 5) [batch, x1, y1, x2, y2], got {rois.shape}")


def initialise(model: ActionDetector) -> None:
    """A from-scratch start as MMAction2's init_weights: convs Kaiming normal (fan out, ReLU),
    batch norms 1 / 0 except each bottleneck's last, which starts at 0 (the block starts as its
    shortcut), the classifier Xavier normal with zero bias."""
    for module in model.modules():
        if isinstance(module, nn.Conv3d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm3d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.xavier_normal_(module.weight)
            nn.init.zeros_(module.bias)
    for module in model.modules():
        if isinstance(module, Bottleneck3d) and module.conv3.bn is not None:
            nn.init.zeros_(module.conv3.bn.weight)


def build_action_model(config: ActionConfig | dict[str, Any] | None = None) -> ActionDetector:
    """A randomly initialised ActionDetector (eval mode) for a config or architecture dict."""
    if config is None:
        config = ActionConfig()
    elif isinstance(config, dict):
        config = ActionConfig.from_dict(config)
    model = ActionDetector(config)
    initialise(model)
    return model.eval()
