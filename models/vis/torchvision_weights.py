"""torchvision Mask R-CNN weights (maskrcnn_resnet50_fpn, e.g. its COCO file) into our model.

Our detector has torchvision's parameter names, so the state dict loads as it is, strictly for
every detector key. The track head is not in such a file and keeps its initialisation.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import Tensor
from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

from models.checkpoints import CheckpointError, Manifest, load_pth_state_dict, save_checkpoint
from models.checkpoints.checkpoint import describe_mismatch
from models.vis.config import VisConfig
from models.vis.model import FAMILY, MaskTrackRCNN, build_masktrack_rcnn

TRACK_HEAD_PREFIX = "track_head."
CLASSIFIER_KEY = "roi_heads.box_predictor.cls_score.weight"

# torchvision renamed these two heads' parameters; its COCO files still use the old names, which
# torchvision's own loader maps through version metadata that a plain dict may not carry.
_LEGACY_NAMES = [
    (re.compile(r"^rpn\.head\.conv\.(weight|bias)$"), lambda m: f"rpn.head.conv.0.0.{m[1]}"),
    (
        re.compile(r"^roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)$"),
        lambda m: f"roi_heads.mask_head.{int(m[1]) - 1}.0.{m[2]}",
    ),
]


def current_name(name: str) -> str:
    for pattern, rename in _LEGACY_NAMES:
        match = pattern.match(name)
        if match:
            return rename(match)
    return name


def load_torchvision_maskrcnn_state(
    model: MaskTrackRCNN, state_dict: dict[str, Tensor], source: Path | str = "<state dict>"
) -> None:
    """Load a torchvision MaskRCNN state dict into `model`: every detector parameter and buffer
    must be present with its shape (CheckpointError naming `source` otherwise)."""
    renamed = {current_name(name): tensor for name, tensor in state_dict.items()}
    expected = {
        name: tensor
        for name, tensor in model.state_dict().items()
        if not name.startswith(TRACK_HEAD_PREFIX)
    }
    # FrozenBatchNorm2d (torchvision's pretrained models) has no num_batches_tracked; the
    # counter only matters for momentum-free training, so our model's value is kept.
    for name, tensor in expected.items():
        if name.endswith("num_batches_tracked") and name not in renamed:
            renamed[name] = tensor
    problems = describe_mismatch(
        {name: tuple(t.shape) for name, t in renamed.items()},
        {name: tuple(t.shape) for name, t in expected.items()},
    )
    if problems:
        raise CheckpointError(source, f"not a Mask R-CNN state dict for this config: {problems}")
    model.load_state_dict(renamed, strict=False)


def coco_class_names() -> list[str]:
    """torchvision's 90 COCO labels 1..90 (including its 'N/A' gaps), background dropped."""
    return list(MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"][1:])


def convert_torchvision_maskrcnn(
    pth_path: Path | str,
    output_dir: Path | str,
    *,
    version: str,
    class_names: list[str] | None = None,
    backbone_bn_eps: float = 0.0,
    dataset_fingerprint: str = "torchvision:maskrcnn_resnet50_fpn:COCO_V1",
    **config_overrides: Any,
) -> Manifest:
    """Convert a torchvision maskrcnn_resnet50_fpn .pth file into a "vis" checkpoint.

    backbone_bn_eps=0.0 because torchvision's COCO_V1 Mask R-CNN weights were trained with
    that epsilon (torchvision sets it when it loads them). The track head is randomly
    initialised: the result detects and segments like the source, and needs training to track.
    """
    state = load_pth_state_dict(pth_path)
    if CLASSIFIER_KEY not in state:
        raise CheckpointError(pth_path, f"no {CLASSIFIER_KEY}: not a Mask R-CNN state dict")
    num_classes = int(state[CLASSIFIER_KEY].shape[0]) - 1
    if class_names is None:
        class_names = coco_class_names() if num_classes == 90 else None
    if class_names is None or len(class_names) != num_classes:
        raise ValueError(f"need {num_classes} class names for this file")
    config = VisConfig(
        backbone="resnet50_fpn",
        num_classes=num_classes,
        backbone_bn_eps=backbone_bn_eps,
        **config_overrides,
    )
    model = build_masktrack_rcnn(config)
    load_torchvision_maskrcnn_state(model, state, pth_path)
    return save_checkpoint(
        model,
        output_dir,
        family=FAMILY,
        architecture=config.to_dict(),
        class_names=class_names,
        version=version,
        dataset_fingerprint=dataset_fingerprint,
        training={"converted_from": str(pth_path), "track_head": "random initialisation"},
    )
