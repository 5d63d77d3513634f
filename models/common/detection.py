"""What the two-stage detectors (MaskTrack R-CNN, Cascade Mask R-CNN) share: the configuration of
the backbone, RPN and heads, the builders of those parts on torchvision's modules, and the
per-frame `detect()` from frames of any size to FrameDetections at the input size.

A family's config extends DetectorConfig with its own fields; a family's model extends
TwoStageDetector and implements `forward(images, image_sizes, min_score)` -> raw per-image dicts
(boxes in network pixels, scores, labels, mask_probs (N, 1, 28, 28), embeddings (N, D), D may
be 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import MultiScaleRoIAlign

import models.common.swin  # noqa: F401  (registers the Swin backbones)
from models.common.backbones import backbone_names, build_backbone, freeze_batchnorm
from models.common.config import ManifestConfig, require
from models.common.detections import FrameDetections, to_input_pixels
from models.common.image import IMAGENET_MEAN, IMAGENET_STD, Frame, prepare_batch
from models.common.roi_align import multiscale_roi_align

BOX_ROI_SIZE = 7  # torchvision's box RoIAlign output
MASK_ROI_SIZE = 14  # torchvision's mask RoIAlign output
GROUP_NORM_GROUPS = 16


@dataclass(frozen=True)
class DetectorConfig(ManifestConfig):
    backbone: str = "resnet50_fpn"  # a registered backbone (models.common.backbones)
    num_classes: int = 40  # object categories, background not counted; labels are 1..num_classes
    fpn_channels: int = 256
    backbone_bn_eps: float = 1e-5
    trainable_backbone_layers: int = 5  # ResNet-50 stages with gradients, counted from the top
    freeze_backbone_bn: bool = False  # keep the trunk's batch-norm statistics as loaded

    # Test (and training) resize: keep the aspect ratio, fit in long x short, pad to a multiple.
    image_long_edge: int = 640
    image_short_edge: int = 360
    size_divisible: int = 32
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD

    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)  # one size per pyramid level
    anchor_aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)

    # torchvision counts nms_pre per pyramid level, as MMDetection's RPN does.
    rpn_pre_nms_top_n_train: int = 200
    rpn_post_nms_top_n_train: int = 200
    rpn_pre_nms_top_n_test: int = 200
    rpn_post_nms_top_n_test: int = 200
    rpn_nms_thresh: float = 0.7
    rpn_batch_size_per_image: int = 64

    # RoIAlign of the heads. False / 2: torchvision's (its COCO weights were trained with it; our
    # checkpoints too). True / 0: MMDetection's: box corners shifted half a pixel so that a
    # feature sits at its pixel's centre, and an adaptive number of samples a bin.
    roi_align_aligned: bool = False
    roi_sampling_ratio: int = 2

    box_head_dim: int = 1024
    # 0: torchvision's box head (two fc layers). n > 0: n 3x3 convs of fpn_channels with a norm
    # (box_head_norm) before one fc layer (the "4conv1fc" head).
    box_head_convs: int = 0
    box_head_norm: str = "group"  # "group" or "batch" (batch: the Cascade Swin release's)
    box_batch_size_per_image: int = 128
    box_score_thresh: float = 0.01
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100

    mask_head_channels: int = 256
    mask_threshold: float = 0.5
    # The score threshold a served session starts with (its score_threshold option overrides
    # it): 0.5, or what `vidserve train vis-calibrate` chose on validation videos with negatives.
    served_score_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.backbone not in backbone_names():
            raise ValueError(f"backbone must be one of {backbone_names()}, got {self.backbone!r}")
        require(self.num_classes >= 1, "num_classes must be >= 1")
        require(
            self.image_long_edge >= self.image_short_edge > 0,
            "need image_long_edge >= image_short_edge > 0",
        )
        require(self.size_divisible > 0, "size_divisible must be > 0")
        require(len(self.anchor_sizes) == 5, "anchor_sizes needs one size per level (5)")
        require(0.0 <= self.box_score_thresh < 1.0, "box_score_thresh must be in [0, 1)")
        require(0.0 < self.mask_threshold < 1.0, "mask_threshold must be in (0, 1)")
        require(0.0 <= self.served_score_threshold <= 1.0, "served_score_threshold in [0, 1]")
        require(self.box_head_convs >= 0, "box_head_convs must be >= 0")
        require(self.box_head_norm in ("group", "batch"), "box_head_norm: 'group' or 'batch'")
        require(self.roi_sampling_ratio >= 0, "roi_sampling_ratio must be >= 0 (0: adaptive)")


# --- the parts ----------------------------------------------------------------------------------
def detector_backbone(config: DetectorConfig) -> nn.Module:
    return build_backbone(
        config.backbone,
        fpn_channels=config.fpn_channels,
        trainable_layers=config.trainable_backbone_layers,
        bn_eps=config.backbone_bn_eps,
    )


def anchor_generator(config: DetectorConfig) -> AnchorGenerator:
    return AnchorGenerator(
        tuple((size,) for size in config.anchor_sizes),
        (tuple(config.anchor_aspect_ratios),) * len(config.anchor_sizes),
    )


def region_proposal_network(config: DetectorConfig, channels: int) -> RegionProposalNetwork:
    """torchvision's RPN with MaskRCNN's defaults for what the config does not set."""
    anchors = anchor_generator(config)
    return RegionProposalNetwork(
        anchors,
        RPNHead(channels, anchors.num_anchors_per_location()[0]),
        fg_iou_thresh=0.7,
        bg_iou_thresh=0.3,
        batch_size_per_image=config.rpn_batch_size_per_image,
        positive_fraction=0.5,
        pre_nms_top_n={
            "training": config.rpn_pre_nms_top_n_train,
            "testing": config.rpn_pre_nms_top_n_test,
        },
        post_nms_top_n={
            "training": config.rpn_post_nms_top_n_train,
            "testing": config.rpn_post_nms_top_n_test,
        },
        nms_thresh=config.rpn_nms_thresh,
    )


def roi_pool(config: DetectorConfig, output_size: int) -> MultiScaleRoIAlign:
    # With the default config, the RoIAlign torchvision's MaskRCNN makes itself.
    return multiscale_roi_align(output_size, config.roi_sampling_ratio, config.roi_align_aligned)


def box_head(config: DetectorConfig, channels: int) -> nn.Module:
    if config.box_head_convs == 0:
        return TwoMLPHead(channels * BOX_ROI_SIZE**2, config.box_head_dim)
    norm = _group_norm if config.box_head_norm == "group" else nn.BatchNorm2d
    return FastRCNNConvFCHead(
        (channels, BOX_ROI_SIZE, BOX_ROI_SIZE),
        [channels] * config.box_head_convs,
        [config.box_head_dim],
        norm_layer=norm,
    )


def mask_head(config: DetectorConfig, channels: int) -> MaskRCNNHeads:
    """The 4-conv mask head (3x3 convs with bias, ReLU)."""
    return MaskRCNNHeads(channels, [config.mask_head_channels] * 4, 1)


def mask_predictor(config: DetectorConfig) -> MaskRCNNPredictor:
    """Deconv x2 + per-class 1x1 logits, a channel for background too as torchvision counts."""
    width = config.mask_head_channels
    return MaskRCNNPredictor(width, width, config.num_classes + 1)


def _group_norm(channels: int) -> nn.GroupNorm:
    # Group norm: a head's statistics then never depend on what else is in the batch, so a
    # frame's detections are the same alone or batched with other streams.
    return nn.GroupNorm(min(GROUP_NORM_GROUPS, channels), channels)


# --- the model ----------------------------------------------------------------------------------
class TwoStageDetector(nn.Module):
    """The shared outside of a two-stage detector: device, architecture, train mode and the
    per-frame detect(); a subclass sets `config` and `backbone` and implements forward()."""

    config: DetectorConfig
    backbone: nn.Module

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def architecture(self) -> dict[str, Any]:
        """The manifest's architecture dict: the family's builder takes it back."""
        return self.config.to_dict()

    def train(self, mode: bool = True) -> TwoStageDetector:
        super().train(mode)
        if mode and self.config.freeze_backbone_bn:
            freeze_batchnorm(self.backbone.body)
        return self

    @torch.inference_mode()
    def detect(
        self,
        frames: list[Frame],
        *,
        min_score: float | None = None,
        mask_probs: bool = False,
    ) -> list[FrameDetections]:
        """One forward pass over frames of any sizes (from any videos), results per frame.

        frames: RGB uint8 H x W x 3 (numpy or tensor), or float 3 x H x W tensors in [0, 1].
        min_score: drop detections below it before masks are pasted (a serving threshold saves
        most of the mask work); None keeps all above the config's box_score_thresh, as the
        reference evaluation does.
        mask_probs: also return the soft masks at input size (large: N x H x W float32).
        """
        if self.training:
            raise RuntimeError("detect() needs eval mode; call model.eval() first")
        if not frames:
            return []
        config = self.config
        batch = prepare_batch(
            frames,
            long_edge=config.image_long_edge,
            short_edge=config.image_short_edge,
            mean=config.image_mean,
            std=config.image_std,
            size_divisible=config.size_divisible,
            device=self.device,
        )
        raw = self(batch.tensor, batch.image_sizes, min_score)
        return [
            to_input_pixels(
                image_raw,
                network_size,
                input_size,
                config.mask_threshold,
                mask_probs,
                roi_aligned=config.roi_align_aligned,
            )
            for image_raw, network_size, input_size in zip(
                raw, batch.image_sizes, batch.input_sizes, strict=True
            )
        ]


def probe_detector(model: TwoStageDetector) -> list[FrameDetections]:
    """A detector family's load-time probe (models.checkpoints.probe): detect() on a noise frame
    of the model's input size, every detection kept, so that every head runs too."""
    from models.checkpoints.probe import probe_frame

    frame = probe_frame(model.config.image_short_edge, model.config.image_long_edge)
    return model.detect([frame.to(model.device)], min_score=0.0)


def keep_min_score(
    boxes: list[Tensor], scores: list[Tensor], labels: list[Tensor], min_score: float | None
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Each image's detections scoring at least min_score (all when None). The same result as
    filtering afterwards: NMS and the top-k cut only ever let a box be removed by a higher-scoring
    one; done before the mask (and track) heads, which then cost in proportion to what is kept."""
    if min_score is None:
        return boxes, scores, labels
    keep = [image_scores >= min_score for image_scores in scores]
    return tuple(select_per_image(values, keep) for values in (boxes, scores, labels))


def select_per_image(per_image: list[Tensor], keep: list[Tensor]) -> list[Tensor]:
    return [values[mask] for values, mask in zip(per_image, keep, strict=True)]
