"""Spatio-temporal action detection (family "action"): MMAction2's SlowFast + ACRN and SlowOnly
AVA detectors, parameter for parameter.

Model: ActionDetector(clips, rois) -> class logits (N, num_classes), row 0 the background slot;
action_scores() -> sigmoid scores without it (models.action.model). Config: ActionConfig
(defaults: the SlowFast-ACRN R50 release; slowonly_r50(); small() for the CPU). Checkpoints:
family "action", architecture = ActionConfig.to_dict(), registered here with its load-time probe.
The releases' weights: models.action.mmaction_weights.
"""

from models.action.config import ActionConfig
from models.action.inference import prepare_clip, probe_action_model
from models.action.model import FAMILY, ActionDetector, build_action_model
from models.checkpoints.registry import register_family

register_family(FAMILY, build_action_model, probe=probe_action_model)

__all__ = ["FAMILY", "ActionConfig", "ActionDetector", "build_action_model", "prepare_clip"]
