"""Reading public PyTorch checkpoints (.pth) for conversion to our safetensors format.

torch.load runs with weights_only=True: the unpickler only rebuilds tensors and plain
containers, so a file carrying any other pickled object is refused instead of executed.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from models.checkpoints.errors import CheckpointError

# Wrappers training scripts commonly put around the state dict.
_STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict")


def load_pth_state_dict(path: Path | str) -> dict[str, Tensor]:
    """The tensors of a .pth file (a state dict, or one inside a common wrapper), on the CPU."""
    path = Path(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(path, "missing") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise CheckpointError(
            path,
            "refused: not a weights-only PyTorch file (torch.load weights_only=True failed; it "
            f"may carry pickled objects, or be corrupt): {load_error_reason(error)}",
        ) from None
    return tensors_only(unwrap_state_dict(loaded, path), path)


def unwrap_state_dict(loaded: object, path: Path) -> Mapping:
    if not isinstance(loaded, Mapping):
        raise CheckpointError(path, f"expected a state dict, found a {type(loaded).__name__}")
    for key in _STATE_DICT_KEYS:
        inner = loaded.get(key)
        if isinstance(inner, Mapping):
            return inner
    return loaded


def tensors_only(state: Mapping, path: Path) -> dict[str, Tensor]:
    not_tensors = [str(key) for key, value in state.items() if not isinstance(value, Tensor)]
    if not_tensors:
        raise CheckpointError(
            path, f"state dict entries that are not tensors: {', '.join(not_tensors[:5])}"
        )
    return {str(key): value for key, value in state.items()}


def load_error_reason(error: BaseException) -> str:
    """The informative part of torch.load's message: the unpickler's own line when present
    (it names the refused global), else the first line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if line.startswith("WeightsUnpickler error:"):
            return line.split(". Please")[0]
    return lines[0] if lines else type(error).__name__
