"""The released MaskFormer R50 COCO panoptic weights into our MaskFormer, and back; and the
official (detectron2-named) release into the same names.

MMDetection's release (maskformer_r50_ms-16xb1-75e_coco, mmdet 3.x): 534 state-dict entries,
names and shapes listed in ../shared/reference/ (a copy in
tests/panoptic/data/maskformer_r50_panoptic_coco_checkpoint_keys.txt). Our default
PanopticConfig is that architecture and our module tree is named as MMDetection's (see
models.panoptic.model), so the name map is the IDENTITY, backbone included: torchvision's ResNet
names (conv1, bn1, layerN.M.convK / bnK / downsample.0 / .1) are MMDetection's ResNet names, and
the head is `panoptic_head.*` with the release's own module names. Choosing the identity means no
map to keep in step with the model: converting is checking that every name is there with its
shape, nothing missing and nothing extra, and refusing the file with the differences otherwise.
Layouts agree too: the fused attention in_proj ([q; k; v] rows) is torch's nn.MultiheadAttention
in both, "no object" is the last row of cls_embed in both, the mask MLP's Linear layers sit at
Sequential indices 0, 2, 4 in both. The release's file wraps the state dict as {'meta',
'state_dict'}; both forms are accepted.

The official release (facebookresearch/MaskFormer, maskformer_panoptic_R50_bs64_554k, a
detectron2 pickle of numpy arrays under 'model') names the same tensors otherwise:
convert_detectron2_state_dict maps them (the name map of the key file's '#d2' section). Its
backbone norms are FrozenBatchNorm2d (no batch counter: ours get 0) and its criterion's
`empty_weight` buffer is the loss's no-object weight vector, not a weight of the network: it is
dropped. That the two releases compute the same for the same weights (positions, padding, input
normalisation) is not checked here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from models.checkpoints.checkpoint import describe_mismatch
from models.checkpoints.errors import CheckpointError
from models.panoptic.config import PanopticConfig
from models.panoptic.model import MaskFormer, build_maskformer

_MMDET_WRAPPER_KEY = "state_dict"  # mmengine's {'meta', 'state_dict', ...}
_D2_WRAPPER_KEY = "model"  # detectron2's {'model', '__author__', ...}
_D2_SKIPPED = frozenset({"criterion.empty_weight"})
_BATCH_COUNTER = "num_batches_tracked"


# ---- MMDetection's release ------------------------------------------------------------------
def release_architecture() -> PanopticConfig:
    """Our configuration of the release: the default PanopticConfig."""
    return PanopticConfig()


def reference_shapes(config: PanopticConfig | None = None) -> dict[str, tuple[int, ...]]:
    """Our model's entry names and shapes for `config` (default: the release's architecture)."""
    with torch.device("meta"):  # names and shapes only: no memory, no initialisation
        model = MaskFormer(config or release_architecture())
    return _shapes(model.state_dict())


def release_name(our_name: str) -> str:
    """The release's name of our entry: the same name (the map is the identity)."""
    return our_name


def convert_release_state_dict(
    state: Mapping[str, Any],
    reference: Mapping[str, tuple[int, ...]] | None = None,
    source: Path | str = "<state dict>",
) -> dict[str, Tensor]:
    """The release's state dict (or its {'meta', 'state_dict'} wrapper) in our names, for the
    model whose entries are `reference` ({our name: shape}; default: the release's
    architecture). Anything missing, unexpected, of another shape or no tensor is a
    CheckpointError naming `source` and the entries."""
    state = _unwrap(state, _MMDET_WRAPPER_KEY, source)
    _require_tensors(state, source)
    reference = dict(reference if reference is not None else reference_shapes())
    expected = {release_name(name): shape for name, shape in reference.items()}
    problems = describe_mismatch(_shapes(state), expected)
    if problems:
        raise CheckpointError(source, f"not the MMDetection MaskFormer layout: {problems}")
    return {ours: state[release_name(ours)] for ours in reference}


def to_release_state_dict(ours: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our state dict (or a part of it) in the release's names."""
    return {release_name(name): tensor for name, tensor in ours.items()}


def load_release_state_dict(
    checkpoint: Mapping[str, Any], source: Path | str = "<state dict>"
) -> MaskFormer:
    """A MaskFormer (eval mode, CPU) holding the release's weights."""
    config = release_architecture()
    converted = convert_release_state_dict(checkpoint, reference_shapes(config), source)
    model = build_maskformer(config)
    model.load_state_dict(converted, strict=True)  # every name and shape checked above
    return model.eval()


# ---- the official (detectron2) release ---------------------------------------------------------
def _d2_backbone_stage(match: re.Match[str]) -> str:
    layer = f"backbone.layer{int(match['stage']) - 1}.{match['block']}"
    part, rest = match["part"], match["rest"]
    if part == "shortcut":
        return f"{layer}.downsample.{1 if rest.startswith('norm.') else 0}.{_after_norm(rest)}"
    if rest.startswith("norm."):
        return f"{layer}.bn{part[-1]}.{_after_norm(rest)}"
    return f"{layer}.{part}.{rest}"


def _after_norm(rest: str) -> str:
    return rest.removeprefix("norm.")


_PIXEL = r"sem_seg_head\.pixel_decoder\."
_DECODER = r"sem_seg_head\.predictor\.transformer\.decoder\."
_OURS_PIXEL = "panoptic_head.pixel_decoder."
_OURS_HEAD = "panoptic_head."

# (pattern on detectron2's name, ours: a template for match.expand or a function), first match.
_D2_TO_OURS: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = tuple(
    (re.compile(pattern), target)
    for pattern, target in (
        (r"backbone\.stem\.conv1\.norm\.(?P<rest>.+)", r"backbone.bn1.\g<rest>"),
        (r"backbone\.stem\.conv1\.(?P<rest>weight)", r"backbone.conv1.\g<rest>"),
        (
            r"backbone\.res(?P<stage>[2-5])\.(?P<block>\d+)\.(?P<part>conv[123]|shortcut)\."
            r"(?P<rest>.+)",
            _d2_backbone_stage,
        ),
        (
            _PIXEL + r"adapter_(?P<i>[123])\.norm\.(?P<rest>.+)",
            lambda m: f"{_OURS_PIXEL}lateral_convs.{int(m['i']) - 1}.gn.{m['rest']}",
        ),
        (
            _PIXEL + r"adapter_(?P<i>[123])\.(?P<rest>weight)",
            lambda m: f"{_OURS_PIXEL}lateral_convs.{int(m['i']) - 1}.conv.{m['rest']}",
        ),
        (_PIXEL + r"layer_4\.norm\.(?P<rest>.+)", _OURS_PIXEL + r"encoder_out_proj.gn.\g<rest>"),
        (_PIXEL + r"layer_4\.(?P<rest>weight)", _OURS_PIXEL + r"encoder_out_proj.conv.\g<rest>"),
        (
            _PIXEL + r"layer_(?P<i>[123])\.norm\.(?P<rest>.+)",
            lambda m: f"{_OURS_PIXEL}output_convs.{int(m['i']) - 1}.gn.{m['rest']}",
        ),
        (
            _PIXEL + r"layer_(?P<i>[123])\.(?P<rest>weight)",
            lambda m: f"{_OURS_PIXEL}output_convs.{int(m['i']) - 1}.conv.{m['rest']}",
        ),
        (_PIXEL + r"input_proj\.(?P<rest>.+)", _OURS_PIXEL + r"encoder_in_proj.\g<rest>"),
        (_PIXEL + r"mask_features\.(?P<rest>.+)", _OURS_PIXEL + r"mask_feature.\g<rest>"),
        (
            _PIXEL + r"transformer\.encoder\.layers\.(?P<i>\d+)\.(?P<rest>.+)",
            lambda m: f"{_OURS_PIXEL}encoder.layers.{m['i']}.{_d2_layer_part(m['rest'])}",
        ),
        (_DECODER + r"norm\.(?P<rest>.+)", _OURS_HEAD + r"transformer_decoder.post_norm.\g<rest>"),
        (
            _DECODER + r"layers\.(?P<i>\d+)\.(?P<rest>.+)",
            lambda m: (
                f"{_OURS_HEAD}transformer_decoder.layers.{m['i']}.{_d2_layer_part(m['rest'])}"
            ),
        ),
        (
            r"sem_seg_head\.predictor\.query_embed\.(?P<rest>.+)",
            r"panoptic_head.query_embed.\g<rest>",
        ),
        (
            r"sem_seg_head\.predictor\.class_embed\.(?P<rest>.+)",
            r"panoptic_head.cls_embed.\g<rest>",
        ),
        (
            r"sem_seg_head\.predictor\.mask_embed\.layers\.(?P<i>[012])\.(?P<rest>.+)",
            lambda m: f"{_OURS_HEAD}mask_embed.{2 * int(m['i'])}.{m['rest']}",
        ),
    )
)

# Inside one transformer layer: detectron2's (torch's TransformerEncoderLayer-like) names.
_D2_LAYER_PARTS = {
    "self_attn.": "self_attn.attn.",
    "multihead_attn.": "cross_attn.attn.",
    "linear1.": "ffn.layers.0.0.",
    "linear2.": "ffn.layers.1.",
    "norm1.": "norms.0.",
    "norm2.": "norms.1.",
    "norm3.": "norms.2.",
}


def _d2_layer_part(rest: str) -> str:
    for theirs, ours in _D2_LAYER_PARTS.items():
        if rest.startswith(theirs):
            return ours + rest.removeprefix(theirs)
    raise KeyError(f"{rest}: no counterpart in our transformer layers")


def detectron2_to_our_name(d2_name: str) -> str:
    """Our name of the official release's entry `d2_name`."""
    for pattern, target in _D2_TO_OURS:
        match = pattern.fullmatch(d2_name)
        if match:
            return target(match) if callable(target) else match.expand(target)
    raise KeyError(f"{d2_name}: no counterpart in our MaskFormer")


def convert_detectron2_state_dict(
    state: Mapping[str, Any],
    reference: Mapping[str, tuple[int, ...]] | None = None,
    source: Path | str = "<state dict>",
) -> dict[str, Tensor]:
    """The official release's state dict (detectron2 names; tensors or numpy arrays; or its
    {'model': ...} wrapper) in our names, batch counters added as 0, the criterion's buffer
    dropped. Refused (CheckpointError) unless every entry of our model is there exactly once
    with its shape and nothing else is."""
    state = _unwrap(state, _D2_WRAPPER_KEY, source)
    tensors = {name: _as_tensor(value) for name, value in state.items() if name not in _D2_SKIPPED}
    _require_tensors(tensors, source)
    converted: dict[str, Tensor] = {}
    unknown, duplicated = [], []
    for name, tensor in tensors.items():
        try:
            ours = detectron2_to_our_name(name)
        except KeyError:
            unknown.append(name)
            continue
        if ours in converted:
            duplicated.append(name)
        converted[ours] = tensor
    reference = dict(reference if reference is not None else reference_shapes())
    for name in reference:
        if name.endswith(_BATCH_COUNTER) and name not in converted:
            converted[name] = torch.zeros((), dtype=torch.long)  # FrozenBatchNorm2d keeps none
    problems = [
        _listing("unknown names", unknown),
        _listing("names mapped twice", duplicated),
        describe_mismatch(_shapes(converted), reference),
    ]
    problems = [problem for problem in problems if problem]
    if problems:
        raise CheckpointError(source, f"not the official MaskFormer layout: {'; '.join(problems)}")
    return converted


# ---- helpers ------------------------------------------------------------------------------------
def _unwrap(state: Mapping[str, Any], key: str, source: Path | str) -> Mapping[str, Any]:
    inner = state.get(key, state) if isinstance(state, Mapping) else state
    if not isinstance(inner, Mapping):
        raise CheckpointError(source, f"'{key}' is no state dict")
    return inner


def _require_tensors(state: Mapping[str, Any], source: Path | str) -> None:
    not_tensors = sorted(
        str(name) for name, value in state.items() if not isinstance(value, Tensor)
    )
    if not_tensors:
        raise CheckpointError(source, f"entries that are no tensors: {', '.join(not_tensors[:5])}")


def _listing(label: str, names: list[str]) -> str:
    if not names:
        return ""
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return f"{label} {len(names)}: {', '.join(sorted(names)[:5])}{more}"


def _as_tensor(value: Any) -> Any:
    return torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value


def _shapes(state: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in state.items()}
