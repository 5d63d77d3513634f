"""The released Cascade Mask R-CNN Swin-B (COCO) weights into our CascadeMaskRCNN, and back.

The release (SwinTransformer/Swin-Transformer-Object-Detection,
cascade_mask_rcnn_swin_base_patch4_window7_mstrain_480-800_giou_4conv1f_adamw_3x_coco) is an mmcv
checkpoint of that repository's MMDetection 2.11 fork; its state dict (the file's 'state_dict'
entry) holds 505 entries, names and shapes listed in ../shared/reference/ (a copy in
tests/instance/data/cascade_mask_rcnn_swin_b_coco_checkpoint_keys.txt). Our default
InstanceConfig is that architecture, so every entry has one place, name for name:

- Swin trunk (torchvision's `SwinTransformer.features`): the patch embedding's conv and norm are
  `features.0.0` / `features.0.2`; the release's stage i is `features.(2i+1)` and the patch merge
  at the end of its stage i (`layers.i.downsample`) is torchvision's `features.(2i+2)`, which runs
  before stage i+1 (the same computation in the same order; both concatenate the 2x2 neighbours
  as x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]). Blocks keep their names but the
  MLP's: `mlp.fc1` / `mlp.fc2` are torchvision's `mlp.0` / `mlp.3`. The attention's qkv stays one
  fused Linear: both reshape its output as (3, heads, head_dim), i.e. rows [q; k; v], heads
  within each. The extra per-output norms `backbone.norm0..3` are our `norms.0..3`.
- relative_position_index is a persistent buffer in both, (49, 49) in the release and flattened
  (2401,) in torchvision, computed by the same formula: it is checked against that formula (a file
  with another index is refused: its bias tables would be read in another order) and flattened.
- FPN: `lateral_convs.i.conv` / `fpn_convs.i.conv` are `inner_blocks.i.0` / `layer_blocks.i.0`.
- RPN: `rpn_conv` / `rpn_cls` / `rpn_reg` are `conv.0.0` / `cls_logits` / `bbox_pred`, unchanged:
  both lay the 3 anchors of a location out in the order of the aspect ratios (0.5, 1, 2), and
  both mean height / width by a ratio (MMDetection's AnchorGenerator: h_ratios = sqrt(ratios),
  w_ratios = 1 / h_ratios; torchvision's AnchorGenerator the same), with one size per level
  (scale 8 x strides 4..64 = our anchor_sizes 32..512); objectness is a sigmoid per anchor and
  the deltas are anchor-major (channel 4a + k) in both; the RPN's stds are 1 (weights 1).
- Box heads (per stage s): `shared_convs.k.conv` / `.bn` (3x3 conv without bias, batch norm with
  its running statistics and counter) are `box_head.k.0` / `box_head.k.1` of torchvision's
  FastRCNNConvFCHead, `shared_fcs.0` is `box_head.5` (after the Flatten at index 4; both flatten
  in C, H, W order). MMDetection 2.x puts the background LAST in `fc_cls` (row 80), torchvision
  first (row 0): the rows are rotated. `fc_reg` holds 4 class-specific deltas for each of the 80
  classes and none for the background; torchvision's `bbox_pred` has 4 for each of its 81 outputs
  with the background first: 4 zero rows are prepended, so class k (0-based in the release) is read
  at our rows 4(k+1)..4(k+1)+3.
- Mask heads: `convs.k.conv` are `mask_head.k.0`, `upsample` (ConvTranspose2d) is `conv5_mask`,
  and `conv_logits` (80 channels) gets a zero channel 0 for the background as
  `mask_fcn_logits` (81): a detection's mask is always read at its own foreground class.

The box deltas need no scaling: the release's DeltaXYWHBBoxCoder encodes (dx, dy, dw, dh) divided
by its target_stds, torchvision's BoxCoder multiplied by its weights, so the weights 1 / std give
the same decoded boxes (both centre boxes at x1 + w / 2 with w = x2 - x1, and clamp dw, dh at
log(1000 / 16) from above; MMDetection clamps them from below too, i.e. a box shrunk more than
60-fold, which no trained head asks for). The release's third-stage stds are 0.033 and 0.067,
i.e. weights 30.30 and 14.93: InstanceConfig's defaults are these exact inverses
(models.instance.config.RELEASE_TARGET_STDS), not rounded ones.

The reverse direction (ours -> the release's names and layout) drops the background's box-delta
rows and mask channel, which no detection reads (torchvision drops the background's boxes and
pastes each detection's mask from its own class): ours -> release -> ours gives them back as
zeros, everything else exactly.

What still differs from the release's own code at inference: torchvision rounds its base
anchors to whole pixels, and torchvision's Swin skips the window shift along a dimension whose
padded size is one window (e.g. 7 tokens at stride 32), where the release shifts and masks; at
the release's 800 x 1333 input every stage is larger than a window.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from models.checkpoints.checkpoint import describe_mismatch
from models.checkpoints.errors import CheckpointError
from models.instance.config import InstanceConfig
from models.instance.model import CascadeMaskRCNN, build_cascade_mask_rcnn
from models.vis.mmtracking_weights import background_first, prepend_zero_rows

RELEASE_CLASSES = 80
BOX_DELTAS_PER_CLASS = 4
_RELATIVE_POSITION_INDEX = "relative_position_index"
_WRAPPER_KEY = "state_dict"  # mmcv's {'meta', 'state_dict', 'optimizer', ...}


# ---- names ------------------------------------------------------------------------------------
def _swin_block(match: re.Match[str]) -> str:
    stage = (int(match["feature"]) - 1) // 2
    rest = match["rest"].replace("mlp.0.", "mlp.fc1.").replace("mlp.3.", "mlp.fc2.")
    return f"backbone.layers.{stage}.blocks.{match['block']}.{rest}"


def _swin_merge(match: re.Match[str]) -> str:
    stage = int(match["feature"]) // 2 - 1  # the merge after release stage i is features.(2i+2)
    return f"backbone.layers.{stage}.downsample.{match['rest']}"


def _box_head(match: re.Match[str]) -> str:
    head = f"roi_head.bbox_head.{match['stage']}"
    if match["layer"] == "5":  # torchvision's index 4 is the Flatten, 5 the Linear
        return f"{head}.shared_fcs.0.{match['rest']}"
    if match["part"] is None:
        raise KeyError(f"{match[0]}: a conv layer of the box head without its conv / norm part")
    part = "conv" if match["part"] == "0" else "bn"
    return f"{head}.shared_convs.{match['layer']}.{part}.{match['rest']}"


# (pattern on our name, the release's name: a template for match.expand or a function).
_OURS_TO_RELEASE: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = tuple(
    (re.compile(pattern), target)
    for pattern, target in (
        (r"backbone\.body\.features\.0\.0\.(?P<rest>.+)", r"backbone.patch_embed.proj.\g<rest>"),
        (r"backbone\.body\.features\.0\.2\.(?P<rest>.+)", r"backbone.patch_embed.norm.\g<rest>"),
        (
            r"backbone\.body\.features\.(?P<feature>[1357])\.(?P<block>\d+)\.(?P<rest>.+)",
            _swin_block,
        ),
        (r"backbone\.body\.features\.(?P<feature>[246])\.(?P<rest>.+)", _swin_merge),
        (r"backbone\.body\.norms\.(?P<i>\d)\.(?P<rest>.+)", r"backbone.norm\g<i>.\g<rest>"),
        (
            r"backbone\.fpn\.inner_blocks\.(?P<i>\d)\.0\.(?P<rest>.+)",
            r"neck.lateral_convs.\g<i>.conv.\g<rest>",
        ),
        (
            r"backbone\.fpn\.layer_blocks\.(?P<i>\d)\.0\.(?P<rest>.+)",
            r"neck.fpn_convs.\g<i>.conv.\g<rest>",
        ),
        (r"rpn\.head\.conv\.0\.0\.(?P<rest>.+)", r"rpn_head.rpn_conv.\g<rest>"),
        (r"rpn\.head\.cls_logits\.(?P<rest>.+)", r"rpn_head.rpn_cls.\g<rest>"),
        (r"rpn\.head\.bbox_pred\.(?P<rest>.+)", r"rpn_head.rpn_reg.\g<rest>"),
        (
            r"roi_heads\.stages\.(?P<stage>\d)\.box_head\.(?P<layer>\d)\.(?:(?P<part>[01])\.)?"
            r"(?P<rest>.+)",
            _box_head,
        ),
        (
            r"roi_heads\.stages\.(?P<stage>\d)\.box_predictor\.cls_score\.(?P<rest>.+)",
            r"roi_head.bbox_head.\g<stage>.fc_cls.\g<rest>",
        ),
        (
            r"roi_heads\.stages\.(?P<stage>\d)\.box_predictor\.bbox_pred\.(?P<rest>.+)",
            r"roi_head.bbox_head.\g<stage>.fc_reg.\g<rest>",
        ),
        (
            r"roi_heads\.stages\.(?P<stage>\d)\.mask_head\.(?P<i>\d)\.0\.(?P<rest>.+)",
            r"roi_head.mask_head.\g<stage>.convs.\g<i>.conv.\g<rest>",
        ),
        (
            r"roi_heads\.stages\.(?P<stage>\d)\.mask_predictor\.conv5_mask\.(?P<rest>.+)",
            r"roi_head.mask_head.\g<stage>.upsample.\g<rest>",
        ),
        (
            r"roi_heads\.stages\.(?P<stage>\d)\.mask_predictor\.mask_fcn_logits\.(?P<rest>.+)",
            r"roi_head.mask_head.\g<stage>.conv_logits.\g<rest>",
        ),
    )
)


def release_name(our_name: str) -> str:
    """The release's name of our parameter or buffer `our_name`."""
    for pattern, target in _OURS_TO_RELEASE:
        match = pattern.fullmatch(our_name)
        if match:
            return target(match) if callable(target) else match.expand(target)
    raise KeyError(f"{our_name}: no counterpart in the Cascade Swin release")


def release_names(our_names: Iterable[str]) -> dict[str, str]:
    """{our name: the release's name} for a model's entries; one-to-one (checked)."""
    table = {name: release_name(name) for name in our_names}
    if len(set(table.values())) != len(table):
        raise AssertionError("two of our entries map onto one release name")  # a bug in the map
    return table


# ---- layouts ----------------------------------------------------------------------------------
def _class_layout_to_ours(our_name: str, tensor: Tensor) -> Tensor:
    """The release's class-indexed rows in torchvision's layout (background first)."""
    if ".box_predictor.cls_score." in our_name:
        return background_first(tensor)
    if ".box_predictor.bbox_pred." in our_name:
        return prepend_zero_rows(tensor, BOX_DELTAS_PER_CLASS)  # no deltas for the background
    if ".mask_predictor.mask_fcn_logits." in our_name:
        return prepend_zero_rows(tensor, 1)  # no mask for the background
    return tensor


def _class_layout_to_release(our_name: str, tensor: Tensor) -> Tensor:
    """Ours back in the release's layout: background last, no background deltas or mask."""
    if ".box_predictor.cls_score." in our_name:
        return torch.cat([tensor[1:], tensor[:1]])
    if ".box_predictor.bbox_pred." in our_name:
        return tensor[BOX_DELTAS_PER_CLASS:].clone()
    if ".mask_predictor.mask_fcn_logits." in our_name:
        return tensor[1:].clone()
    return tensor


def window_relative_position_index(window: int) -> Tensor:
    """The (window², window²) index into a Swin block's relative position bias table: Swin's
    formula, as torchvision's define_relative_position_index computes it (flattened there)."""
    coords = torch.stack(
        torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return relative[:, :, 0] * (2 * window - 1) + relative[:, :, 1]


def _position_index_to_ours(tensor: Tensor, source: Path | str, release: str) -> Tensor:
    """The release's (49, 49) index flattened as torchvision's, after checking it is Swin's."""
    side = tensor.shape[0] if tensor.dim() == 2 else 0
    window = round(side**0.5)
    if side == 0 or tensor.shape != (side, side) or window * window != side:
        raise CheckpointError(source, f"{release}: shape {tuple(tensor.shape)} is no window's")
    if not torch.equal(tensor.long(), window_relative_position_index(window)):
        raise CheckpointError(
            source,
            f"{release} differs from Swin's relative position index (torchvision recomputes it "
            "and would read the bias table in another order)",
        )
    return tensor.long().flatten()


# ---- conversion -------------------------------------------------------------------------------
def release_architecture() -> InstanceConfig:
    """Our configuration of the release: the default InstanceConfig (Swin-B, 80 classes, three
    4conv1fc batch-norm stages, box-coder weights exactly 1 / the release's stds)."""
    return InstanceConfig()


def reference_shapes(config: InstanceConfig | None = None) -> dict[str, tuple[int, ...]]:
    """Our model's entry names and shapes for `config` (default: the release's architecture)."""
    with torch.device("meta"):  # names and shapes only: no memory, no initialisation
        model = CascadeMaskRCNN(config or release_architecture())
    return _shapes(model.state_dict())


def expected_release_keys(config: InstanceConfig | None = None) -> frozenset[str]:
    """Every name a release file holds (for format detection)."""
    return frozenset(release_names(reference_shapes(config)).values())


def convert_release_state_dict(
    state: Mapping[str, Tensor],
    reference: Mapping[str, tuple[int, ...]] | None = None,
    source: Path | str = "<state dict>",
) -> dict[str, Tensor]:
    """The release's state dict in our names and layout, for the model whose entries are
    `reference` ({our name: shape}; default: the release's architecture; a part of a model, e.g.
    only 'backbone.body.*' entries, converts only that part). Anything missing, unexpected or of
    another shape is a CheckpointError naming `source` and the entries."""
    reference = dict(reference if reference is not None else reference_shapes())
    names = release_names(reference)
    # Names first: the class-indexed entries have other shapes in the two layouts.
    problems = describe_mismatch(dict.fromkeys(state, ()), dict.fromkeys(names.values(), ()))
    if problems:
        raise CheckpointError(source, f"not the Cascade Swin release's layout: {problems}")
    converted = {
        ours: _to_ours(ours, theirs, state[theirs], source) for ours, theirs in names.items()
    }
    problems = describe_mismatch(_shapes(converted), reference)
    if problems:
        raise CheckpointError(source, f"Cascade Swin entries of another shape: {problems}")
    return converted


def to_release_state_dict(ours: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our state dict (or a part of it) in the release's names and layout."""
    return {release_name(name): _to_release(name, tensor) for name, tensor in ours.items()}


def load_release_state_dict(
    checkpoint: Mapping[str, Any], source: Path | str = "<state dict>"
) -> CascadeMaskRCNN:
    """A CascadeMaskRCNN (eval mode, CPU) holding the release's weights. `checkpoint` is the
    file's state dict, or the mmcv wrapper around it ({'meta', 'state_dict', ...})."""
    state = checkpoint.get(_WRAPPER_KEY, checkpoint)
    if not isinstance(state, Mapping):
        raise CheckpointError(source, f"'{_WRAPPER_KEY}' is no state dict")
    not_tensors = sorted(
        str(name) for name, value in state.items() if not isinstance(value, Tensor)
    )
    if not_tensors:
        raise CheckpointError(source, f"entries that are no tensors: {', '.join(not_tensors[:5])}")
    config = release_architecture()
    converted = convert_release_state_dict(state, reference_shapes(config), source)
    model = build_cascade_mask_rcnn(config)
    model.load_state_dict(converted, strict=True)  # every name and shape checked above
    return model.eval()


def _to_ours(our_name: str, release: str, tensor: Tensor, source: Path | str) -> Tensor:
    if our_name.endswith(_RELATIVE_POSITION_INDEX):
        return _position_index_to_ours(tensor, source, release)
    return _class_layout_to_ours(our_name, tensor)


def _to_release(our_name: str, tensor: Tensor) -> Tensor:
    if our_name.endswith(_RELATIVE_POSITION_INDEX):
        side = round(tensor.numel() ** 0.5)
        return tensor.reshape(side, side)
    return _class_layout_to_release(our_name, tensor)


def _shapes(state: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in state.items()}
