"""Panoptic segmentation: MaskFormer (family "panoptic"), MMDetection's R50 COCO configuration.

Model: MaskFormer(images, image_sizes) -> MaskFormerOutput (every decoder layer's class and mask
logits). Training: models.panoptic.loss.MaskFormerLoss (Hungarian matching per layer,
models.panoptic.matcher); the job is models.train.panoptic. Inference: models.panoptic.inference
(per-frame segment-id maps and segments, no overlap). Checkpoints: family "panoptic",
architecture = PanopticConfig.to_dict(), registered here with its load-time probe. The release's
weights: models.panoptic.mmdet_weights.
"""

from models.checkpoints.registry import register_family
from models.panoptic.config import PanopticConfig
from models.panoptic.inference import probe_maskformer
from models.panoptic.model import FAMILY, MaskFormer, MaskFormerOutput, build_maskformer

register_family(FAMILY, build_maskformer, probe=probe_maskformer)

__all__ = ["FAMILY", "MaskFormer", "MaskFormerOutput", "PanopticConfig", "build_maskformer"]
