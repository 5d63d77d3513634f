"""Cascade R-CNN's RoI heads (Cai and Vasconcelos, CVPR 2018) on torchvision's RoIHeads.

Each stage is a torchvision RoIHeads with its own IoU threshold (its Matcher), box-coder weights,
4conv1fc box head, class-specific box predictor and mask head; a stage's boxes are the next
stage's proposals, so each stage trains on (and refines) boxes as good as the last one made.

Training, as MMDetection's CascadeRoIHead: every stage adds the ground truth to its proposals and
samples RoIs (torchvision's select_training_samples), its losses are weighted by the stage's loss
weight, its box loss is GIoU on the decoded class-specific boxes, its mask head trains on its own
positives, and its regressed boxes (for a positive RoI its ground-truth class, otherwise the
highest non-background class) become the next stage's proposals, detached.

Inference, as MMDetection's simple_test: the stages run in turn, each regressing the boxes by its
highest non-background class; the class logits of all stages are averaged, the last stage's
boxes are decoded with them (softmax, per-class NMS, top k), and each detection's mask is the
mean of the stages' mask probabilities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference, maskrcnn_loss
from torchvision.ops import boxes as box_ops
from torchvision.ops import generalized_box_iou_loss

from models.common.detection import (
    BOX_ROI_SIZE,
    MASK_ROI_SIZE,
    box_head,
    mask_head,
    mask_predictor,
    roi_pool,
)
from models.instance.config import InstanceConfig

POSITIVE_FRACTION = 0.25  # of each stage's sampled RoIs, as the reference's sampler


class CascadeRoIHeads(nn.Module):
    def __init__(self, config: InstanceConfig, channels: int):
        super().__init__()
        self.config = config
        self.stages = nn.ModuleList(
            _stage(config, channels, iou, weights)
            for iou, weights in zip(
                config.stage_iou_thresholds, config.stage_box_weights, strict=True
            )
        )

    # --- inference --------------------------------------------------------------------------
    def detect_boxes(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Boxes, scores, labels per image: the stages in turn, the class logits averaged."""
        logits_sum: Tensor | None = None
        for index, stage in enumerate(self.stages):
            class_logits, box_regression = _box_forward(stage, features, proposals, image_sizes)
            logits_sum = class_logits if logits_sum is None else logits_sum + class_logits
            if index + 1 < len(self.stages):
                labels = class_logits[:, 1:].argmax(dim=1) + 1
                proposals = _regress(stage, box_regression, proposals, labels, image_sizes)
        assert logits_sum is not None
        return self.stages[-1].postprocess_detections(
            logits_sum / len(self.stages), box_regression, proposals, image_sizes
        )

    def mask_probs(
        self,
        features: dict[str, Tensor],
        boxes: list[Tensor],
        labels: list[Tensor],
        image_sizes: list[tuple[int, int]],
    ) -> list[Tensor]:
        """Each detection's mask probabilities (N, 1, 28, 28): the mean over the stages."""
        if sum(len(image_boxes) for image_boxes in boxes) == 0:
            size = 2 * MASK_ROI_SIZE
            return [image_boxes.new_zeros((0, 1, size, size)) for image_boxes in boxes]
        per_stage = []
        for stage in self.stages:
            logits = stage.mask_predictor(
                stage.mask_head(stage.mask_roi_pool(features, boxes, image_sizes))
            )
            per_stage.append(torch.cat(maskrcnn_inference(logits, labels)))
        mean = torch.stack(per_stage).mean(dim=0)
        return list(mean.split([len(image_boxes) for image_boxes in boxes]))

    # --- training ---------------------------------------------------------------------------
    def losses(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        """loss_classifier, loss_box_reg (GIoU) and loss_mask, each the stages' weighted sum."""
        totals: dict[str, Tensor] = {}
        config = self.config
        for index, stage in enumerate(self.stages):
            sampled, matched, labels, _ = stage.select_training_samples(proposals, targets)
            class_logits, box_regression = _box_forward(stage, features, sampled, image_sizes)
            stage_losses = {
                "loss_classifier": F.cross_entropy(class_logits, torch.cat(labels)),
                "loss_box_reg": self._giou_loss(
                    stage, box_regression, sampled, labels, matched, targets
                ),
                "loss_mask": _mask_loss(
                    stage, features, sampled, image_sizes, labels, matched, targets
                ),
            }
            weight = config.stage_loss_weights[index]
            for name, value in stage_losses.items():
                totals[name] = totals.get(name, 0.0) + weight * value
            if index + 1 < len(self.stages):
                refine_labels = torch.where(
                    torch.cat(labels) > 0,
                    torch.cat(labels),
                    class_logits[:, 1:].argmax(dim=1) + 1,
                )
                with torch.no_grad():
                    proposals = _regress(
                        stage, box_regression.detach(), sampled, refine_labels, image_sizes
                    )
        return totals

    def _giou_loss(
        self,
        stage: RoIHeads,
        box_regression: Tensor,
        proposals: list[Tensor],
        labels: list[Tensor],
        matched: list[Tensor],
        targets: list[dict[str, Tensor]],
    ) -> Tensor:
        """GIoU between each positive RoI's decoded box of its ground-truth class and that
        ground truth, summed and divided by the sampled RoIs (the reference's avg_factor)."""
        all_labels = torch.cat(labels)
        positive = torch.where(all_labels > 0)[0]
        if positive.numel() == 0:
            return box_regression.sum() * 0.0
        per_class = box_regression.reshape(box_regression.shape[0], -1, 4)
        deltas = per_class[positive, all_labels[positive]]
        boxes = stage.box_coder.decode_single(deltas, torch.cat(proposals)[positive])
        gt_boxes = torch.cat(
            [_matched_boxes(t["boxes"], m) for t, m in zip(targets, matched, strict=True)]
        )[positive]
        loss = generalized_box_iou_loss(boxes, gt_boxes, reduction="sum")
        return self.config.giou_loss_weight * loss / all_labels.numel()


def _stage(
    config: InstanceConfig, channels: int, iou: float, weights: tuple[float, ...]
) -> RoIHeads:
    return RoIHeads(
        box_roi_pool=roi_pool(config, BOX_ROI_SIZE),
        box_head=box_head(config, channels),
        box_predictor=FastRCNNPredictor(config.box_head_dim, config.num_classes + 1),
        fg_iou_thresh=iou,
        bg_iou_thresh=iou,
        batch_size_per_image=config.box_batch_size_per_image,
        positive_fraction=POSITIVE_FRACTION,
        bbox_reg_weights=tuple(weights),
        score_thresh=config.box_score_thresh,
        nms_thresh=config.box_nms_thresh,
        detections_per_img=config.box_detections_per_img,
        mask_roi_pool=roi_pool(config, MASK_ROI_SIZE),
        mask_head=mask_head(config, channels),
        mask_predictor=mask_predictor(config),
    )


def _box_forward(
    stage: RoIHeads,
    features: dict[str, Tensor],
    proposals: list[Tensor],
    image_sizes: list[tuple[int, int]],
) -> tuple[Tensor, Tensor]:
    pooled = stage.box_roi_pool(features, proposals, image_sizes)
    return stage.box_predictor(stage.box_head(pooled))


def _regress(
    stage: RoIHeads,
    box_regression: Tensor,
    proposals: list[Tensor],
    labels: Tensor,
    image_sizes: list[tuple[int, int]],
) -> list[Tensor]:
    """Each RoI moved by its class `labels`' deltas, clipped to its image: the next proposals."""
    per_class = box_regression.reshape(box_regression.shape[0], -1, 4)
    deltas = per_class[torch.arange(len(labels), device=labels.device), labels]
    boxes = stage.box_coder.decode_single(deltas, torch.cat(proposals))
    per_image = boxes.split([len(p) for p in proposals])
    return [
        box_ops.clip_boxes_to_image(b, size) for b, size in zip(per_image, image_sizes, strict=True)
    ]


def _mask_loss(
    stage: RoIHeads,
    features: dict[str, Tensor],
    proposals: list[Tensor],
    image_sizes: list[tuple[int, int]],
    labels: list[Tensor],
    matched: list[Tensor],
    targets: list[dict[str, Tensor]],
) -> Tensor:
    """torchvision's mask loss on the stage's positive RoIs."""
    positive = [torch.where(image_labels > 0)[0] for image_labels in labels]
    positive_boxes = [p[k] for p, k in zip(proposals, positive, strict=True)]
    logits = stage.mask_predictor(
        stage.mask_head(stage.mask_roi_pool(features, positive_boxes, image_sizes))
    )
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    return maskrcnn_loss(
        logits,
        positive_boxes,
        [t["masks"] for t in targets],
        [t["labels"] for t in targets],
        [m[k] for m, k in zip(matched, positive, strict=True)],
    )


def _matched_boxes(gt_boxes: Tensor, matched: Tensor) -> Tensor:
    if gt_boxes.numel() == 0:  # no object in the image: every RoI is background
        return gt_boxes.new_zeros((len(matched), 4))
    return gt_boxes[matched]
