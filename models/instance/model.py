"""Cascade Mask R-CNN: backbone + FPN -> RPN -> three cascade stages of box and mask heads.

The backbone is any registered one (the release's Swin, or a ResNet); the RPN and the heads are
built by the same code as MaskTrack R-CNN's (models.common.detection). Parameter names:
'backbone.body.*' / 'backbone.fpn.*', 'rpn.head.*', 'roi_heads.stages.{0,1,2}.{box_head,
box_predictor, mask_head, mask_predictor}.*'; models.instance.swin_weights maps the release's
names onto them.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torchvision.models.detection.image_list import ImageList

from models.common.detection import (
    TwoStageDetector,
    detector_backbone,
    keep_min_score,
    probe_detector,
    region_proposal_network,
)
from models.common.detections import FrameDetections
from models.common.image import Frame
from models.instance.cascade import CascadeRoIHeads
from models.instance.config import InstanceConfig
from models.vis.targets import prepare_training_batch

FAMILY = "instance"


class CascadeMaskRCNN(TwoStageDetector):
    def __init__(self, config: InstanceConfig):
        super().__init__()
        self.config = config
        self.backbone = detector_backbone(config)
        self.rpn = region_proposal_network(config, self.backbone.out_channels)
        self.roi_heads = CascadeRoIHeads(config, self.backbone.out_channels)

    def forward(
        self,
        images: Tensor,
        image_sizes: list[tuple[int, int]],
        min_score: float | None = None,
    ) -> list[dict[str, Tensor]]:
        """Raw per-image detections for a normalised, padded batch (eval mode only): boxes in
        network pixels, labels, scores, mask_probs (N, 1, 28, 28), embeddings (N, 0)."""
        if self.training:
            raise RuntimeError("forward() is the inference pass; call eval() or training_losses()")
        features = self.backbone(images)
        proposals, _ = self.rpn(ImageList(images, image_sizes), features)
        boxes, scores, labels = self.roi_heads.detect_boxes(features, proposals, image_sizes)
        boxes, scores, labels = keep_min_score(boxes, scores, labels, min_score)
        mask_probs = self.roi_heads.mask_probs(features, boxes, labels, image_sizes)
        return [
            {
                "boxes": b,
                "scores": s,
                "labels": lab,
                "mask_probs": m,
                "embeddings": b.new_zeros((len(b), 0)),
            }
            for b, s, lab, m in zip(boxes, scores, labels, mask_probs, strict=True)
        ]

    def training_losses(
        self, images: list[Frame], targets: list[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """RPN and cascade losses (train mode only). Targets in the pixels of their image:
        boxes (N, 4) x1 y1 x2 y2, labels (N,) in 1..num_classes, masks (N, H, W) uint8.
        Returns loss_objectness, loss_rpn_box_reg, loss_classifier, loss_box_reg, loss_mask;
        the total is their sum (the heads' are the stages' weighted sums)."""
        if not self.training:
            raise RuntimeError("training_losses() needs train mode; call model.train() first")
        batch, prepared = prepare_training_batch(images, targets, self.config, self.device)
        features = self.backbone(batch.tensor)
        image_list = ImageList(batch.tensor, batch.image_sizes)
        proposals, rpn_losses = self.rpn(image_list, features, prepared)
        head_losses = self.roi_heads.losses(features, proposals, batch.image_sizes, prepared)
        return {**rpn_losses, **head_losses}


def build_cascade_mask_rcnn(
    config: InstanceConfig | dict[str, Any] | None = None,
) -> CascadeMaskRCNN:
    """A randomly initialised Cascade Mask R-CNN (eval mode) for a config or architecture dict."""
    if config is None:
        config = InstanceConfig()
    elif isinstance(config, dict):
        config = InstanceConfig.from_dict(config)
    return CascadeMaskRCNN(config).eval()


def probe_cascade_mask_rcnn(model: CascadeMaskRCNN) -> list[FrameDetections]:
    """The family's load-time probe: every stage's heads run on a noise frame."""
    return probe_detector(model)
