"""Instance segmentation: Cascade Mask R-CNN with a Swin backbone (family "instance").

Per-frame pass (batched across videos and images): CascadeMaskRCNN.detect(frames) ->
FrameDetections, as MaskTrack R-CNN's detector. Training: CascadeMaskRCNN.training_losses(images,
targets). Checkpoints: family "instance", architecture = InstanceConfig.to_dict(). The release's
weights: models.instance.swin_weights.
"""

from models.checkpoints.registry import register_family
from models.instance.config import InstanceConfig
from models.instance.model import (
    FAMILY,
    CascadeMaskRCNN,
    build_cascade_mask_rcnn,
    probe_cascade_mask_rcnn,
)

register_family(FAMILY, build_cascade_mask_rcnn, probe=probe_cascade_mask_rcnn)

__all__ = ["FAMILY", "CascadeMaskRCNN", "InstanceConfig", "build_cascade_mask_rcnn"]
