"""Panoptic segmentation: MaskFormer (family "panoptic"), MMDetection's R50 COCO configuration.

Model: MaskFormer(images, image_sizes) -> MaskFormerOutput (every decoder layer's class and mask
logits). Training: models.panoptic.loss.MaskFormerLoss (Hungarian matching per layer,
models.panoptic.matcher). Inference: models.panoptic.inference (per-frame segment-id maps and
segments, no overlap). The release's weights: models.panoptic.mmdet_weights.

Not yet registered with models.checkpoints.registry: that waits for the serving probe.
"""

from models.panoptic.config import PanopticConfig
from models.panoptic.model import FAMILY, MaskFormer, MaskFormerOutput, build_maskformer

__all__ = ["FAMILY", "MaskFormer", "MaskFormerOutput", "PanopticConfig", "build_maskformer"]
