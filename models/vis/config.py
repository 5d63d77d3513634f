"""The MaskTrack R-CNN configuration: the `architecture` dict of a "vis" checkpoint manifest.

Defaults are the YouTube-VIS 2019 reference (MMTracking masktrack_rcnn_r50_fpn_12e_youtubevis2019):
proposals nms_pre 200 / max 200 at train and test, RPN sampler 64, R-CNN sampler 128, score
threshold 0.01, NMS 0.5, at most 100 detections, mask threshold 0.5, 640x360 keep-ratio resize
padded to a multiple of 32, track head 12544 -> 1024 -> 1024.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from models.common.backbones import BACKBONE_NAMES
from models.common.image import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class VisConfig:
    backbone: str = "resnet50_fpn"  # one of models.common.backbones.BACKBONE_NAMES
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

    box_head_dim: int = 1024
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

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONE_NAMES:
            raise ValueError(f"backbone must be one of {BACKBONE_NAMES}, got {self.backbone!r}")
        _require(self.num_classes >= 1, "num_classes must be >= 1")
        _require(
            self.image_long_edge >= self.image_short_edge > 0,
            "need image_long_edge >= image_short_edge > 0",
        )
        _require(self.size_divisible > 0, "size_divisible must be > 0")
        _require(len(self.anchor_sizes) == 5, "anchor_sizes needs one size per level (5)")
        _require(0.0 <= self.box_score_thresh < 1.0, "box_score_thresh must be in [0, 1)")
        _require(0.0 < self.mask_threshold < 1.0, "mask_threshold must be in (0, 1)")
        _require(
            0.0 < self.track_positive_fraction <= 1.0, "track_positive_fraction must be in (0, 1]"
        )

    @classmethod
    def small(cls, num_classes: int = 40, **overrides: Any) -> VisConfig:
        """The CPU-sized model: small backbone, narrow heads, 320x180 input (padded 320x192)."""
        settings: dict[str, Any] = dict(
            backbone="small",
            num_classes=num_classes,
            fpn_channels=64,
            image_long_edge=320,
            image_short_edge=180,
            box_head_dim=256,
            mask_head_channels=64,
            track_embed_dim=256,
            # Scenes of a few objects: 64 sampled RoIs per image (16 positives) teach as much as
            # 128 and cost ~40% less per step on a CPU, where RoIAlign's backward is dear.
            box_batch_size_per_image=64,
            track_rois_per_image=64,
        )
        settings.update(overrides)
        return cls(**settings)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        return {
            f.name: list(value) if isinstance(value, tuple) else value
            for f in dataclasses.fields(self)
            for value in [getattr(self, f.name)]
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VisConfig:
        """The inverse of to_dict(). Unknown keys are an error (silently ignoring one would
        build a different architecture); missing keys take their defaults, so that manifests
        written before a field was added keep loading."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown VisConfig keys: {', '.join(unknown)}")
        hints = typing.get_type_hints(cls)
        values = {name: _coerce(name, value, hints[name]) for name, value in data.items()}
        return cls(**values)


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """JSON value -> the field's type; lists become tuples, ints may stand for floats."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{name} must be a list, got {type(value).__name__}")
        item_type = typing.get_args(hint)[0]
        return tuple(_coerce(name, item, item_type) for item in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    expected = hint if isinstance(hint, type) else None
    if expected is not None and not isinstance(value, expected):
        raise ValueError(f"{name} must be {expected.__name__}, got {type(value).__name__}")
    if expected is int and isinstance(value, bool):
        raise ValueError(f"{name} must be int, got bool")
    return value


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
