"""Video object segmentation: STCN (family "vos").

Model: STCN(VosConfig) with encode_keys (batched over frames of any sessions), encode_values,
decode and forward_clip (training). Inference: VosSession per video or stream
(add_prompt, step, memory_bytes), with a bounded memory; step_round runs the frames of many
sessions in batched passes (plan, step_round, commit); segment_video runs a whole video from
its first-frame masks (the DAVIS protocol). Checkpoints: family "vos",
architecture = VosConfig.to_dict(); load_official_stcn reads the published stcn.pth.
"""

from models.checkpoints.registry import register_family
from models.vos.checkpoint import (
    FAMILY,
    build_vos_model,
    convert_official_state_dict,
    convert_official_stcn,
    load_official_stcn,
    probe_stcn,
)
from models.vos.config import VosConfig
from models.vos.inference import (
    FramePlan,
    FrameStep,
    ObjectResult,
    PreparedFrame,
    PromptBudgetError,
    PromptError,
    SessionSettings,
    VosSession,
    encode_key_batch,
    label_map,
    masks_from_label_map,
    prepare_for_inference,
    prepare_frame,
    step_round,
)
from models.vos.memory import MemoryBank, MemoryBudget, MemoryBudgetError
from models.vos.network import STCN, KeyFeatures
from models.vos.video import segment_video

register_family(FAMILY, build_vos_model, probe=probe_stcn)

__all__ = [
    "FAMILY",
    "FramePlan",
    "FrameStep",
    "STCN",
    "KeyFeatures",
    "MemoryBank",
    "MemoryBudget",
    "MemoryBudgetError",
    "ObjectResult",
    "PreparedFrame",
    "PromptBudgetError",
    "PromptError",
    "SessionSettings",
    "VosConfig",
    "VosSession",
    "build_vos_model",
    "convert_official_state_dict",
    "convert_official_stcn",
    "encode_key_batch",
    "label_map",
    "load_official_stcn",
    "masks_from_label_map",
    "prepare_for_inference",
    "prepare_frame",
    "segment_video",
    "step_round",
]
