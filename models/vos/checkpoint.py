"""The "vos" family builder, and the official STCN weights converted to it.

`build_vos_model(architecture)` is what the checkpoint registry calls with a manifest's
`architecture` dict (a `VosConfig.to_dict()`); models/vos/__init__.py registers it.

`load_official_stcn(path)` reads a public `stcn.pth` (or a stage-0 checkpoint) with the shared
weights-only reader (torch.load weights_only=True: nothing but tensors is unpickled), and
`convert_official_state_dict` makes it fit the reference model exactly:
- a `module.` prefix (a DataParallel save) is stripped;
- BatchNorm `num_batches_tracked` buffers may be present or not (absent ones are set to 0);
- a 4-channel `value_encoder.conv1.weight` (stage 0: RGB + one mask) gets a zero fifth channel,
  as the official evaluation does, so "other objects" start with no effect.
Any other difference in names or shapes is an error that lists the entries that differ.
`convert_official_stcn` writes the result as one of our checkpoints (safetensors + manifest).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from models.checkpoints.checkpoint import describe_mismatch, save_checkpoint
from models.checkpoints.convert import load_pth_state_dict
from models.checkpoints.errors import CheckpointError
from models.checkpoints.manifest import Manifest
from models.vos.config import VosConfig
from models.vos.network import STCN, VALUE_INPUT_CHANNELS

FAMILY = "vos"
DATA_PARALLEL_PREFIX = "module."
BATCH_COUNT_SUFFIX = "num_batches_tracked"
VALUE_CONV1 = "value_encoder.conv1.weight"
OFFICIAL_SOURCE = "hkchengrex/STCN stcn.pth (DAVIS 2017 val J&F 85.3 as published)"


class StateDictMismatchError(ValueError):
    """A state dict that does not fit the model: names missing, unexpected, or of other shape."""


def build_vos_model(architecture: Mapping[str, Any] | VosConfig | None = None) -> STCN:
    """The family builder: a randomly initialised STCN of that configuration (default: the
    reference)."""
    if architecture is None:
        config = VosConfig()
    elif isinstance(architecture, VosConfig):
        config = architecture
    else:
        config = VosConfig.from_dict(dict(architecture))
    return STCN(config)


PROBE_SHORT_EDGE = 240  # probe frames are small: what is checked is the numbers, not the size


def probe_stcn(model: STCN) -> list:
    """The family's load-time probe (models.checkpoints.probe): two noise frames through a
    session prompted with a square on the first, so that the key and value encoders, the memory
    read and the decoder all run."""
    import numpy as np

    from models.checkpoints.probe import probe_frame
    from models.vos.video import segment_video

    height = min(model.config.short_edge or PROBE_SHORT_EDGE, PROBE_SHORT_EDGE)
    width = height * 4 // 3
    mask = np.zeros((height, width), dtype=bool)
    mask[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = True
    frames = [probe_frame(height, width, seed).numpy() for seed in (0, 1)]
    return list(segment_video(model, frames, {1: mask}))


def load_official_stcn(path: Path | str, model: STCN | None = None) -> STCN:
    """The reference model (or `model`) with the weights of an official STCN .pth, in eval mode.

    Raises CheckpointError naming the file when it cannot be read or does not fit.
    """
    state = load_pth_state_dict(path)
    assign = model is None
    if model is None:
        # Built on the meta device and given the file's tensors: no random init to throw away.
        with torch.device("meta"):
            model = STCN(VosConfig())
    try:
        converted = convert_official_state_dict(state, model.state_dict())
    except StateDictMismatchError as error:
        raise CheckpointError(path, str(error)) from None
    model.load_state_dict(converted, strict=True, assign=assign)
    return model.eval()


def convert_official_stcn(pth_path: Path | str, out: Path | str, version: str) -> Manifest:
    """An official STCN .pth written as our checkpoint folder `out` (family "vos")."""
    model = load_official_stcn(pth_path)
    return save_checkpoint(
        model,
        out,
        family=FAMILY,
        architecture=model.config.to_dict(),
        class_names=[],  # VOS is class-agnostic: objects are whatever the prompts say
        version=version,
        training={"source": OFFICIAL_SOURCE, "converted_from": Path(pth_path).name},
    )


def convert_official_state_dict(
    state: Mapping[str, Tensor], target: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """`state` renamed and padded to fit `target` (a model's state_dict()) key for key."""
    converted = _strip_prefix(state, DATA_PARALLEL_PREFIX)
    converted = _pad_value_conv1(converted)
    for name, tensor in target.items():
        if name.endswith(BATCH_COUNT_SUFFIX) and name not in converted:
            converted[name] = torch.zeros_like(tensor, device="cpu")
    problems = describe_mismatch(_shapes(converted), _shapes(target))
    if problems:
        raise StateDictMismatchError(f"state dict does not fit STCN: {problems}")
    return converted


def _strip_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    if not state or not all(name.startswith(prefix) for name in state):
        return dict(state)
    return {name[len(prefix) :]: tensor for name, tensor in state.items()}


def _pad_value_conv1(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A stage-0 value encoder sees RGB + its mask; add the "other objects" channel as zeros."""
    weight = state.get(VALUE_CONV1)
    if weight is None or weight.dim() != 4 or weight.shape[1] != VALUE_INPUT_CHANNELS - 1:
        return state
    padding = weight.new_zeros((weight.shape[0], 1, *weight.shape[2:]))
    return {**state, VALUE_CONV1: torch.cat([weight, padding], dim=1)}


def _shapes(state: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in state.items()}
