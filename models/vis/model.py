"""MaskTrack R-CNN on torchvision's Mask R-CNN parts.

Per frame: backbone + FPN -> RPN -> box head -> mask head -> track head (an embedding per
detection). The tracker (models.vis.tracker) is a separate, per-video object, so that a worker
can batch the per-frame pass across videos and keep the tracker per session.

The detector's parameter names are torchvision's maskrcnn_resnet50_fpn names ('backbone.*',
'rpn.*', 'roi_heads.*'); the track head adds 'track_head.*'.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import (
    FastRCNNConvFCHead,
    FastRCNNPredictor,
    TwoMLPHead,
)
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import maskrcnn_inference
from torchvision.models.detection.rpn import RPNHead

from models.common.backbones import build_backbone, freeze_batchnorm
from models.common.image import Frame, prepare_batch
from models.vis.config import VisConfig
from models.vis.detections import FrameDetections, to_input_pixels
from models.vis.targets import prepare_training_batch
from models.vis.track_head import TrackEmbedHead, multiscale_roi_align

FAMILY = "vis"
BOX_ROI_SIZE = 7  # torchvision's box RoIAlign output, also the track head's
MASK_ROI_SIZE = 14  # torchvision's mask RoIAlign output
GROUP_NORM_GROUPS = 16


class MaskTrackRCNN(nn.Module):
    def __init__(self, config: VisConfig):
        super().__init__()
        self.config = config
        detector = _torchvision_mask_rcnn(config)
        # Only these three parts of the torchvision model are kept: its transform and forward
        # are replaced by our own batching, which also returns what the track head needs.
        self.backbone = detector.backbone
        self.rpn = detector.rpn
        self.roi_heads = detector.roi_heads
        self.track_head = TrackEmbedHead(
            self.backbone.out_channels,
            embed_dim=config.track_embed_dim,
            roi_size=BOX_ROI_SIZE,
            rois_per_image=config.track_rois_per_image,
            positive_fraction=config.track_positive_fraction,
            iou_thresh=config.track_iou_thresh,
            cosine_scale=config.track_cosine_scale,
            sampling_ratio=config.roi_sampling_ratio,
            aligned=config.roi_align_aligned,
        )

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def architecture(self) -> dict[str, Any]:
        """The manifest's architecture dict: build_masktrack_rcnn(VisConfig.from_dict(it))."""
        return self.config.to_dict()

    def train(self, mode: bool = True) -> MaskTrackRCNN:
        super().train(mode)
        if mode and self.config.freeze_backbone_bn:
            freeze_batchnorm(self.backbone.body)
        return self

    def forward(
        self,
        images: Tensor,
        image_sizes: list[tuple[int, int]],
        min_score: float | None = None,
    ) -> list[dict[str, Tensor]]:
        """Raw per-image detections for a normalised, padded batch (eval mode only).

        Each dict: boxes (N, 4) in network pixels, labels, scores, mask_probs (N, 1, 28, 28) in
        box coordinates, embeddings (N, D). min_score drops detections before the mask and
        track heads run, which then cost in proportion to what is kept.
        """
        if self.training:
            raise RuntimeError("forward() is the inference pass; call eval() or training_losses()")
        features = self.backbone(images)
        proposals, _ = self.rpn(ImageList(images, image_sizes), features)
        boxes, scores, labels = self._detect_boxes(features, proposals, image_sizes)
        if min_score is not None:
            # Same result as filtering afterwards: NMS and the top-k cut only ever let a box be
            # removed by a higher-scoring one.
            keep = [image_scores >= min_score for image_scores in scores]
            boxes, labels = _select(boxes, keep), _select(labels, keep)
            scores = _select(scores, keep)
        mask_probs = self._mask_probs(features, boxes, labels, image_sizes)
        embeddings = self.track_head(features, boxes, image_sizes).split([len(b) for b in boxes])
        return [
            {"boxes": b, "scores": s, "labels": lab, "mask_probs": m, "embeddings": e}
            for b, s, lab, m, e in zip(boxes, scores, labels, mask_probs, embeddings, strict=True)
        ]

    def _detect_boxes(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """torchvision's RoIHeads box branch at inference: per-class boxes, score threshold,
        per-class NMS, top detections_per_img."""
        heads = self.roi_heads
        box_features = heads.box_head(heads.box_roi_pool(features, proposals, image_sizes))
        class_logits, box_regression = heads.box_predictor(box_features)
        return heads.postprocess_detections(class_logits, box_regression, proposals, image_sizes)

    def _mask_probs(
        self,
        features: dict[str, Tensor],
        boxes: list[Tensor],
        labels: list[Tensor],
        image_sizes: list[tuple[int, int]],
    ) -> list[Tensor]:
        """The RoI mask probabilities (N, 1, 28, 28) of each detection's own class."""
        heads = self.roi_heads
        if sum(len(image_boxes) for image_boxes in boxes) == 0:
            size = 2 * heads.mask_roi_pool.output_size[0]
            return [image_boxes.new_zeros((0, 1, size, size)) for image_boxes in boxes]
        mask_features = heads.mask_head(heads.mask_roi_pool(features, boxes, image_sizes))
        return list(maskrcnn_inference(heads.mask_predictor(mask_features), labels))

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
            to_input_pixels(image_raw, network_size, input_size, config.mask_threshold, mask_probs)
            for image_raw, network_size, input_size in zip(
                raw, batch.image_sizes, batch.input_sizes, strict=True
            )
        ]

    def training_losses(
        self,
        key_images: list[Frame],
        key_targets: list[dict[str, Tensor]],
        ref_images: list[Frame],
        ref_targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        """torchvision's Mask R-CNN losses on the key frames + the track loss against the
        reference frames (train mode only).

        Targets, in the pixels of their image: boxes (N, 4) x1 y1 x2 y2, labels (N,) in
        1..num_classes, masks (N, H, W) uint8, instance_ids (N,) linking key and reference
        instances. Images are resized as at test time (a no-op if already at that size).
        Returns loss_objectness, loss_rpn_box_reg, loss_classifier, loss_box_reg, loss_mask,
        loss_track; the reference's total loss is their plain sum.
        """
        if not self.training:
            raise RuntimeError("training_losses() needs train mode; call model.train() first")
        if len(key_images) != len(ref_images) or not key_images:
            raise ValueError("need one reference image for each key image, and at least one")
        count = len(key_images)
        # Key and reference frames go through the backbone as one batch.
        batch, targets = prepare_training_batch(
            list(key_images) + list(ref_images),
            list(key_targets) + list(ref_targets),
            self.config,
            self.device,
        )
        features = self.backbone(batch.tensor)
        return self.heads_losses(batch, features, targets, slice(0, count), slice(count, None))

    def heads_losses(
        self, batch, features: OrderedDict, targets: list, key: slice, ref: slice
    ) -> dict[str, Tensor]:
        """RPN, box, mask and track losses of the key frames `key` of a prepared batch (and
        their reference frames `ref`) whose backbone features are computed. The trainer calls
        it pair by pair (models/train/vis.py), training_losses for the whole batch at once."""
        key_features = OrderedDict((name, level[key]) for name, level in features.items())
        ref_features = OrderedDict((name, level[ref]) for name, level in features.items())
        key_sizes, ref_sizes = batch.image_sizes[key], batch.image_sizes[ref]
        key_t, ref_t = targets[key], targets[ref]
        key_list = ImageList(batch.tensor[key], key_sizes)
        proposals, rpn_losses = self.rpn(key_list, key_features, key_t)
        _, detector_losses = self.roi_heads(key_features, proposals, key_sizes, key_t)
        track_loss = self.track_head.loss(
            key_features, proposals, key_t, key_sizes, ref_features, ref_t, ref_sizes
        )
        return {**rpn_losses, **detector_losses, "loss_track": track_loss}


def build_masktrack_rcnn(config: VisConfig | dict[str, Any] | None = None) -> MaskTrackRCNN:
    """A randomly initialised MaskTrack R-CNN (eval mode) for a config or architecture dict."""
    if config is None:
        config = VisConfig()
    elif isinstance(config, dict):
        config = VisConfig.from_dict(config)
    return MaskTrackRCNN(config).eval()


def probe_masktrack_rcnn(model: MaskTrackRCNN) -> list[FrameDetections]:
    """The family's load-time probe (models.checkpoints.probe): detect() on a noise frame of the
    model's input size, every detection kept, so that the mask and track heads run too."""
    from models.checkpoints.probe import probe_frame

    frame = probe_frame(model.config.image_short_edge, model.config.image_long_edge)
    return model.detect([frame.to(model.device)], min_score=0.0)


def _select(per_image: list[Tensor], keep: list[Tensor]) -> list[Tensor]:
    return [values[mask] for values, mask in zip(per_image, keep, strict=True)]


def _roi_pool(config: VisConfig, output_size: int) -> nn.Module:
    # With the default config, the RoIAlign torchvision's MaskRCNN makes itself.
    return multiscale_roi_align(output_size, config.roi_sampling_ratio, config.roi_align_aligned)


def _box_head(config: VisConfig, channels: int) -> nn.Module:
    if config.box_head_convs == 0:
        return TwoMLPHead(channels * BOX_ROI_SIZE**2, config.box_head_dim)
    return FastRCNNConvFCHead(
        (channels, BOX_ROI_SIZE, BOX_ROI_SIZE),
        [channels] * config.box_head_convs,
        [config.box_head_dim],
        norm_layer=_group_norm,
    )


def _group_norm(channels: int) -> nn.GroupNorm:
    # Group norm, not batch norm: a head's statistics then never depend on what else is in the
    # batch, so a frame's detections are the same alone or batched with other streams.
    return nn.GroupNorm(min(GROUP_NORM_GROUPS, channels), channels)


def _torchvision_mask_rcnn(config: VisConfig) -> MaskRCNN:
    """A torchvision MaskRCNN with our backbone, heads and thresholds.

    With the default config every part has the shape maskrcnn_resnet50_fpn gives it, so
    torchvision's COCO weights load (num_classes=90: torchvision counts background).
    """
    backbone = build_backbone(
        config.backbone,
        fpn_channels=config.fpn_channels,
        trainable_layers=config.trainable_backbone_layers,
        bn_eps=config.backbone_bn_eps,
    )
    channels = backbone.out_channels
    classes_with_background = config.num_classes + 1
    anchors = AnchorGenerator(
        tuple((size,) for size in config.anchor_sizes),
        (tuple(config.anchor_aspect_ratios),) * len(config.anchor_sizes),
    )
    return MaskRCNN(
        backbone,
        num_classes=None,
        min_size=config.image_short_edge,
        max_size=config.image_long_edge,
        image_mean=list(config.image_mean),
        image_std=list(config.image_std),
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(channels, anchors.num_anchors_per_location()[0]),
        rpn_pre_nms_top_n_train=config.rpn_pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=config.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=config.rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=config.rpn_post_nms_top_n_test,
        rpn_nms_thresh=config.rpn_nms_thresh,
        rpn_batch_size_per_image=config.rpn_batch_size_per_image,
        box_roi_pool=_roi_pool(config, BOX_ROI_SIZE),
        box_head=_box_head(config, channels),
        box_predictor=FastRCNNPredictor(config.box_head_dim, classes_with_background),
        box_score_thresh=config.box_score_thresh,
        box_nms_thresh=config.box_nms_thresh,
        box_detections_per_img=config.box_detections_per_img,
        box_batch_size_per_image=config.box_batch_size_per_image,
        mask_roi_pool=_roi_pool(config, MASK_ROI_SIZE),
        mask_head=MaskRCNNHeads(channels, [config.mask_head_channels] * 4, 1),
        mask_predictor=MaskRCNNPredictor(
            config.mask_head_channels, config.mask_head_channels, classes_with_background
        ),
    )
