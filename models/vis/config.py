"""The MaskTrack R-CNN configuration: the `architecture` dict of a "vis" checkpoint manifest.

Defaults are the YouTube-VIS 2019 reference (MMTracking masktrack_rcnn_r50_fpn_12e_youtubevis2019):
proposals nms_pre 200 / max 200 at train and test, RPN sampler 64, R-CNN sampler 128, score
threshold 0.01, NMS 0.5, at most 100 detections, mask threshold 0.5, 640x360 keep-ratio resize
padded to a multiple of 32, track head 12544 -> 1024 -> 1024.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from models.common.backbones import backbone_names
from models.common.config import ManifestConfig, require
from models.common.image import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class VisConfig(ManifestConfig):
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

    # RoIAlign of the box, mask and track heads. False / 2: torchvision's (its COCO weights were
    # trained with it; our checkpoints too). True / 0: MMDetection's, the reference's: box
    # corners shifted half a pixel so that a feature sits at its pixel's centre, and an adaptive
    # number of samples a bin (ceil(RoI size / output size)).
    roi_align_aligned: bool = False
    roi_sampling_ratio: int = 2

    box_head_dim: int = 1024
    # 0: torchvision's box head (two fc layers, as the reference). n > 0: n 3x3 convs of
    # fpn_channels with group norm before one fc layer (the "4conv1fc" head of Faster R-CNN v2).
    box_head_convs: int = 0
    box_batch_size_per_image: int = 128
    box_score_thresh: float = 0.01
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100

    mask_head_channels: int = 256
    mask_threshold: float = 0.5

    track_embed_dim: int = 1024
    track_rois_per_image: int = 128
    track_positive_fraction: float = 0.25
    track_iou_thresh: float = 0.5
    # 0: the reference's embeddings, ReLU features compared by raw dot products. > 0: the last
    # layer has no ReLU and embeddings are L2-normalised and scaled by sqrt(this), so that a dot
    # product is this times a cosine similarity. On the small model the reference's raw dot
    # products collapsed to near zero in training (ids then rested on IoU and label alone); with
    # 16 the track loss fell to ~0.01 and the same object scores ~15 against below 0 for others.
    track_cosine_scale: float = 0.0

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
        require(
            0.0 < self.track_positive_fraction <= 1.0, "track_positive_fraction must be in (0, 1]"
        )
        require(self.track_cosine_scale >= 0.0, "track_cosine_scale must be >= 0")
        require(self.box_head_convs >= 0, "box_head_convs must be >= 0")
        require(self.roi_sampling_ratio >= 0, "roi_sampling_ratio must be >= 0 (0: adaptive)")

    @classmethod
    def small(cls, num_classes: int = 40, **overrides: Any) -> VisConfig:
        """The CPU-sized model: small backbone, narrow heads, a conv box head, cosine track
        embeddings, and 320x240 input (the synthetic world's own size: its objects are 20-50
        pixels across, and their shape is all that tells their category).

        The conv head: with the reference's two fc layers the classifier confused shapes
        (squares taken for discs, stars for crosses, on training frames too). With 4 convs its
        loss over steps 400-850 averaged 0.59 against 0.73 (same seed, data and schedule), for
        about 5% more time a step; the shipped checkpoint names 93% of detected objects right."""
        settings: dict[str, Any] = dict(
            backbone="small",
            num_classes=num_classes,
            fpn_channels=64,
            image_long_edge=320,
            image_short_edge=240,
            box_head_dim=256,
            box_head_convs=4,
            mask_head_channels=64,
            track_embed_dim=256,
            track_cosine_scale=16.0,
            # Scenes of a few objects: 64 sampled RoIs per image (16 positives) teach as much as
            # 128 and cost ~40% less per step on a CPU, where RoIAlign's backward is dear.
            box_batch_size_per_image=64,
            track_rois_per_image=64,
        )
        settings.update(overrides)
        return cls(**settings)
