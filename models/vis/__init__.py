"""Video instance segmentation: MaskTrack R-CNN (family "vis").

Per-frame pass (batched across videos): MaskTrackRCNN.detect(frames) -> FrameDetections.
Per-video state: Tracker.step(detections) -> track ids; Tracker.summaries() -> video-level
tracks. Training: MaskTrackRCNN.training_losses(key_images, key_targets, ref_images,
ref_targets). Checkpoints: family "vis", architecture = VisConfig.to_dict().
"""

from models.checkpoints.registry import register_family
from models.common.detections import FrameDetections
from models.vis.config import VisConfig
from models.vis.model import FAMILY, MaskTrackRCNN, build_masktrack_rcnn, probe_masktrack_rcnn
from models.vis.tracker import Tracker, TrackerConfig, TrackSummary, match_scores

register_family(FAMILY, build_masktrack_rcnn, probe=probe_masktrack_rcnn)

__all__ = [
    "FAMILY",
    "FrameDetections",
    "MaskTrackRCNN",
    "TrackSummary",
    "Tracker",
    "TrackerConfig",
    "VisConfig",
    "build_masktrack_rcnn",
    "match_scores",
]
