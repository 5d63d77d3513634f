"""The Cascade Mask R-CNN configuration: the `architecture` dict of an "instance" checkpoint.

Defaults are the released Cascade Mask R-CNN Swin-B (Swin-Transformer-Object-Detection's
cascade_mask_rcnn_swin_base_patch4_window7_mstrain_480-800_giou_4conv1f_adamw_3x_coco): 80
classes; RPN nms_pre 2000 / max 2000 in training, 1000 / 1000 at test, NMS 0.7, 256 sampled
anchors; three stages with IoU 0.5 / 0.6 / 0.7, loss weights 1 / 0.5 / 0.25, box-coder standard
deviations 0.1-0.2, 0.05-0.1, 0.033-0.067 (torchvision's weights: their inverses); 4conv1fc box
heads with batch norm, 512 sampled RoIs a stage, class-specific regression with a GIoU loss
(weight 10); at test score threshold 0.05, NMS 0.5, 100 detections; mask threshold 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from models.common.config import require
from models.common.detection import DetectorConfig

# The release's DeltaXYWHBBoxCoder target_stds of its three stages (its config, verbatim), and
# torchvision's BoxCoder weights that decode the same: their inverses, exactly (1 / 0.033 is
# 30.30, not 30: rounded weights would move stage-3 boxes by about 1%).
RELEASE_TARGET_STDS = (
    (0.1, 0.1, 0.2, 0.2),
    (0.05, 0.05, 0.1, 0.1),
    (0.033, 0.033, 0.067, 0.067),
)
RELEASE_BOX_WEIGHTS = tuple(tuple(1.0 / std for std in stage) for stage in RELEASE_TARGET_STDS)


@dataclass(frozen=True)
class InstanceConfig(DetectorConfig):
    """DetectorConfig (backbone, RPN, heads) + the cascade's stages."""

    backbone: str = "swin_b"
    num_classes: int = 80
    image_long_edge: int = 1333
    image_short_edge: int = 800
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_batch_size_per_image: int = 256
    roi_align_aligned: bool = True
    roi_sampling_ratio: int = 0
    box_head_convs: int = 4
    box_head_norm: str = "batch"
    box_batch_size_per_image: int = 512
    box_score_thresh: float = 0.05

    stage_iou_thresholds: tuple[float, ...] = (0.5, 0.6, 0.7)
    stage_loss_weights: tuple[float, ...] = (1.0, 0.5, 0.25)
    stage_box_weights: tuple[tuple[float, float, float, float], ...] = RELEASE_BOX_WEIGHTS
    giou_loss_weight: float = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        stages = len(self.stage_iou_thresholds)
        require(stages >= 1, "need at least one stage")
        require(
            len(self.stage_loss_weights) == stages and len(self.stage_box_weights) == stages,
            "stage_iou_thresholds, stage_loss_weights and stage_box_weights need one entry a stage",
        )
        require(self.box_head_convs > 0, "the cascade's box heads are conv heads (box_head_convs)")
        require(all(0.0 < t < 1.0 for t in self.stage_iou_thresholds), "IoU thresholds in (0, 1)")

    @property
    def stages(self) -> int:
        return len(self.stage_iou_thresholds)

    @classmethod
    def small(cls, num_classes: int = 80, **overrides: Any) -> InstanceConfig:
        """The CPU-sized model: the small Swin (32 channels, depths 2-2-2-2), narrow heads and
        the synthetic world's 320x240 input, with MaskTrack R-CNN's small proposal and sampling
        budgets (scenes of a few objects 20-50 pixels across)."""
        settings: dict[str, Any] = dict(
            backbone="swin_small",
            num_classes=num_classes,
            fpn_channels=64,
            image_long_edge=320,
            image_short_edge=240,
            rpn_pre_nms_top_n_train=200,
            rpn_post_nms_top_n_train=200,
            rpn_pre_nms_top_n_test=200,
            rpn_post_nms_top_n_test=200,
            rpn_batch_size_per_image=64,
            box_head_dim=256,
            box_batch_size_per_image=64,
            mask_head_channels=64,
            roi_align_aligned=False,
            roi_sampling_ratio=2,
        )
        settings.update(overrides)
        return cls(**settings)
