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

from torch import Tensor
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import maskrcnn_inference

from models.common.detection import (
    BOX_ROI_SIZE,
    MASK_ROI_SIZE,
    TwoStageDetector,
    anchor_generator,
    box_head,
    detector_backbone,
    keep_min_score,
    mask_head,
    mask_predictor,
    probe_detector,
    region_proposal_network,
    roi_pool,
)
from models.common.detections import FrameDetections
from models.common.image import Frame
from models.vis.config import VisConfig
from models.vis.targets import prepare_training_batch
from models.vis.track_head import TrackEmbedHead

FAMILY = "vis"


class MaskTrackRCNN(TwoStageDetector):
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
        boxes, scores, labels = keep_min_score(boxes, scores, labels, min_score)
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
    """The family's load-time probe: every head runs on a noise frame."""
    return probe_detector(model)


def _torchvision_mask_rcnn(config: VisConfig) -> MaskRCNN:
    """A torchvision MaskRCNN with our backbone, heads and thresholds.

    With the default config every part has the shape maskrcnn_resnet50_fpn gives it, so
    torchvision's COCO weights load (num_classes=90: torchvision counts background).
    """
    backbone = detector_backbone(config)
    channels = backbone.out_channels
    return MaskRCNN(
        backbone,
        num_classes=None,
        min_size=config.image_short_edge,
        max_size=config.image_long_edge,
        image_mean=list(config.image_mean),
        image_std=list(config.image_std),
        rpn_anchor_generator=anchor_generator(config),
        rpn_head=region_proposal_network(config, channels).head,
        rpn_pre_nms_top_n_train=config.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=config.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=config.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=config.rpn_post_nms_top_n_test,
        rpn_nms_thresh=config.rpn_nms_thresh,
        rpn_batch_size_per_image=config.rpn_batch_size_per_image,
        box_roi_pool=roi_pool(config, BOX_ROI_SIZE),
        box_head=box_head(config, channels),
        box_predictor=FastRCNNPredictor(config.box_head_dim, config.num_classes + 1),
        box_score_thresh=config.box_score_thresh,
        box_nms_thresh=config.box_nms_thresh,
        box_detections_per_img=config.box_detections_per_img,
        box_batch_size_per_image=config.box_batch_size_per_image,
        mask_roi_pool=roi_pool(config, MASK_ROI_SIZE),
        mask_head=mask_head(config, channels),
        mask_predictor=mask_predictor(config),
    )
