"""MMTracking's MaskTrack R-CNN weights (masktrack_rcnn_r50_fpn_12e_youtubevis2019) into our model.

The released file is an mmcv checkpoint, {'meta': ..., 'state_dict': ...}, whose state dict holds
the whole video model: `detector.*` (MMDetection's Mask R-CNN R50-FPN) and `track_head.*`
(MMTracking's RoIEmbedHead, two fc layers of 1024, a ReLU after each). Our default VisConfig is
that architecture, so every entry has a place, name for name (the key list with the released
layout: /work/shared/reference/masktrack_rcnn_r50_ytvis19_checkpoint_keys.txt):

- backbone: MMDetection's ResNet has torchvision's names under `detector.backbone.`;
- neck: the FPN's ConvModules (`lateral_convs.i.conv`, `fpn_convs.i.conv`) are torchvision's
  `inner_blocks.i.0` and `layer_blocks.i.0`; P6 is a max pool in both (no parameters);
- RPN: `rpn_conv` / `rpn_cls` / `rpn_reg` are `conv.0.0` / `cls_logits` / `bbox_pred` (sigmoid
  objectness, 3 anchors a location, deltas laid out anchor-major in both);
- box head: `shared_fcs.0/1` are `fc6/fc7` (both flatten RoI features in C, H, W order);
  MMDetection 2.x puts the background class LAST in `fc_cls` (index num_classes) where torchvision
  puts it first, so the rows are rotated; `fc_reg` has 4 class-specific deltas per foreground
  class and none for the background, which torchvision's `bbox_pred` has first: 4 zero rows are
  prepended (torchvision never decodes background boxes);
- mask head: `convs.i.conv` are `mask_head.i.0`, `upsample` (ConvTranspose2d) is `conv5_mask`;
  `conv_logits` has one channel per foreground class, torchvision's `mask_fcn_logits` one more
  for the background first: a zero channel is prepended (a detection's mask is always its own
  foreground class's);
- track head: `track_head.embed_head.fcs.i` are our `track_head.fcs.i` (our default
  track_cosine_scale 0 is the reference's ReLU embeddings compared by dot products).

The box coders agree too (MMDetection's target stds 0.1, 0.1, 0.2, 0.2 are torchvision's weights
10, 10, 5, 5). MMDetection's RoIAlign is "aligned" (half-pixel offset) with adaptive sampling, where
torchvision's is not: the architecture sets VisConfig.roi_align_aligned / roi_sampling_ratio to
the reference's. What still differs: torchvision rounds its base anchors to whole pixels (e.g.
a 32-pixel anchor of ratio 0.5 is 46 x 22 instead of 45.3 x 22.6).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from models.checkpoints.checkpoint import describe_mismatch
from models.checkpoints.errors import CheckpointError
from models.vis.config import VisConfig
from models.vis.model import build_masktrack_rcnn

# The 40 categories of YouTube-VIS 2019, in the order of their ids 1..40 (the dataset's
# train.json; MMTracking's YouTubeVISDataset.CLASSES_2019_version).
YOUTUBE_VIS_2019_CLASSES = (
    "person", "giant_panda", "lizard", "parrot", "skateboard", "sedan", "ape", "dog", "snake",
    "monkey", "hand", "rabbit", "duck", "cat", "cow", "fish", "train", "horse", "turtle", "bear",
    "motorbike", "giraffe", "leopard", "fox", "deer", "owl", "surfboard", "airplane", "truck",
    "zebra", "tiger", "elephant", "snowboard", "boat", "shark", "mouse", "frog", "eagle",
    "earless_seal", "tennis_racket",
)  # fmt: skip

CLASSIFIER = "detector.roi_head.bbox_head.fc_cls"
BOX_REGRESSOR = "detector.roi_head.bbox_head.fc_reg"
MASK_LOGITS = "detector.roi_head.mask_head.conv_logits"
SOURCE_NOTE = "MMTracking masktrack_rcnn_r50_fpn_12e_youtubevis2019 (YouTube-VIS 2019)"
_PYRAMID_LEVELS = 4
_MASK_CONVS = 4


def _prefix_pairs() -> list[tuple[str, str]]:
    """(our prefix, MMTracking's prefix) for every part of the model."""
    pairs = [
        ("backbone.body.", "detector.backbone."),
        ("rpn.head.conv.0.0.", "detector.rpn_head.rpn_conv."),
        ("rpn.head.cls_logits.", "detector.rpn_head.rpn_cls."),
        ("rpn.head.bbox_pred.", "detector.rpn_head.rpn_reg."),
        ("roi_heads.box_head.fc6.", "detector.roi_head.bbox_head.shared_fcs.0."),
        ("roi_heads.box_head.fc7.", "detector.roi_head.bbox_head.shared_fcs.1."),
        ("roi_heads.box_predictor.cls_score.", f"{CLASSIFIER}."),
        ("roi_heads.box_predictor.bbox_pred.", f"{BOX_REGRESSOR}."),
        ("roi_heads.mask_predictor.conv5_mask.", "detector.roi_head.mask_head.upsample."),
        ("roi_heads.mask_predictor.mask_fcn_logits.", f"{MASK_LOGITS}."),
        ("track_head.fcs.", "track_head.embed_head.fcs."),
    ]
    for level in range(_PYRAMID_LEVELS):
        pairs.append(
            (f"backbone.fpn.inner_blocks.{level}.0.", f"detector.neck.lateral_convs.{level}.conv.")
        )
        pairs.append(
            (f"backbone.fpn.layer_blocks.{level}.0.", f"detector.neck.fpn_convs.{level}.conv.")
        )
    for index in range(_MASK_CONVS):
        pairs.append(
            (f"roi_heads.mask_head.{index}.0.", f"detector.roi_head.mask_head.convs.{index}.conv.")
        )
    return pairs  # fmt: skip


_PREFIXES = _prefix_pairs()


def mmtracking_name(our_name: str) -> str:
    """The name MMTracking's checkpoint gives our parameter or buffer `our_name`."""
    for ours, theirs in _PREFIXES:
        if our_name.startswith(ours):
            return theirs + our_name[len(ours) :]
    raise KeyError(f"{our_name}: no MMTracking counterpart")


def mmtracking_architecture(num_classes: int) -> VisConfig:
    """Our configuration of the reference: ResNet-50-FPN, two fc layers of 1024 in the box and
    track heads, ReLU embeddings, MMDetection's batch-norm epsilon, YouTube-VIS test settings."""
    return VisConfig(
        backbone="resnet50_fpn",
        num_classes=num_classes,
        backbone_bn_eps=1e-5,
        roi_align_aligned=True,  # MMDetection's RoIAlign(output, sampling_ratio=0), aligned
        roi_sampling_ratio=0,
    )


def expected_mmtracking_keys(num_classes: int = len(YOUTUBE_VIS_2019_CLASSES)) -> set[str]:
    """Every name an MMTracking MaskTrack R-CNN checkpoint holds (for format detection)."""
    return {mmtracking_name(name) for name in _reference_shapes(num_classes)}


def convert_mmtracking_masktrack(
    state: Mapping[str, Tensor],
    class_names: list[str] | tuple[str, ...] | None = None,
    source: Path | str = "<state dict>",
) -> tuple[dict[str, Tensor], dict[str, Any], list[str]]:
    """MMTracking's state dict (the checkpoint's 'state_dict') as (our state dict, the manifest's
    architecture, class names). The result loads into build_masktrack_rcnn(architecture) with
    strict=True; anything missing, unexpected or of another shape is a CheckpointError naming
    `source` and the entries."""
    if f"{CLASSIFIER}.weight" not in state:
        raise CheckpointError(source, f"no {CLASSIFIER}.weight: not a MaskTrack R-CNN state dict")
    num_classes = int(state[f"{CLASSIFIER}.weight"].shape[0]) - 1  # + the background row
    classes = _class_names(num_classes, class_names, source)
    reference = _reference_shapes(num_classes)
    names = {ours: mmtracking_name(ours) for ours in reference}
    # Names first (shapes of the class-dependent entries differ between the two layouts).
    problems = describe_mismatch(dict.fromkeys(state, ()), dict.fromkeys(names.values(), ()))
    if problems:
        raise CheckpointError(source, f"not the MMTracking MaskTrack R-CNN layout: {problems}")
    converted = {ours: _our_layout(ours, state[theirs]) for ours, theirs in names.items()}
    problems = describe_mismatch(_shapes(converted), reference)
    if problems:
        raise CheckpointError(source, f"MaskTrack R-CNN entries of another shape: {problems}")
    return converted, mmtracking_architecture(num_classes).to_dict(), classes


def _our_layout(our_name: str, tensor: Tensor) -> Tensor:
    """The tensor rearranged for torchvision's class layout where the two differ."""
    if our_name.startswith("roi_heads.box_predictor.cls_score."):
        return background_first(tensor)
    if our_name.startswith("roi_heads.box_predictor.bbox_pred."):
        return prepend_zero_rows(tensor, 4)  # no box deltas for the background
    if our_name.startswith("roi_heads.mask_predictor.mask_fcn_logits."):
        return prepend_zero_rows(tensor, 1)  # no mask for the background
    return tensor


def background_first(rows: Tensor) -> Tensor:
    """MMDetection 2.x classifier rows (foreground 0..C-1, background C) in torchvision's order
    (background 0, foreground 1..C)."""
    return torch.cat([rows[-1:], rows[:-1]])


def prepend_zero_rows(rows: Tensor, count: int) -> Tensor:
    return torch.cat([rows.new_zeros((count, *rows.shape[1:])), rows])


def _class_names(
    num_classes: int, class_names: list[str] | tuple[str, ...] | None, source: Path | str
) -> list[str]:
    if class_names is None and num_classes == len(YOUTUBE_VIS_2019_CLASSES):
        class_names = YOUTUBE_VIS_2019_CLASSES
    if class_names is None or len(class_names) != num_classes:
        raise CheckpointError(
            source,
            f"the classifier has {num_classes} classes; give their {num_classes} names "
            "(only YouTube-VIS 2019's 40 are known)",
        )
    return list(class_names)


def _reference_shapes(num_classes: int) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):  # names and shapes only: no memory, no initialisation
        model = build_masktrack_rcnn(mmtracking_architecture(num_classes))
    return _shapes(model.state_dict())


def _shapes(state: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in state.items()}
