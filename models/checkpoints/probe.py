"""Checks that a checkpoint computes numbers before it serves: every weight finite, and a forward
pass on a probe frame whose every intermediate output is finite.

A checkpoint whose sha256 matches its manifest can still be unusable: a training run that
diverged publishes NaN or inf weights as faithfully as good ones, and a served NaN model answers
"no objects" on every frame without any error. Loading refuses both (CheckpointError):

- `check_finite_weights(state)`: no NaN or inf in any floating tensor (cheap: one pass);
- `probe_model(model, family)`: the family's probe (registered with the family, see
  models.checkpoints.registry) runs one forward pass on a probe frame of the model's input size
  (noise); hooks on every module check every floating tensor each one returns, so an overflow
  anywhere in the network (finite weights, inf activations) is named by the module it starts in.
  A family without a probe gets the weight check only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from models.checkpoints.errors import CheckpointError
from models.checkpoints.registry import get_probe

_MAX_LISTED = 5


def check_finite_weights(state: Mapping[str, Tensor], where: Path) -> None:
    """CheckpointError naming the tensors that hold NaN or inf."""
    bad = [
        name
        for name, tensor in state.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        shown = ", ".join(bad[:_MAX_LISTED])
        more = f" and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
        raise CheckpointError(
            where, f"weights hold NaN or inf in {len(bad)} tensors: {shown}{more}"
        )


def probe_model(model: nn.Module, family: str, where: Path) -> None:
    """Run the family's probe (one forward pass on a probe frame, the model in eval mode) and
    raise CheckpointError if any module's output, or the probe's result, is not finite."""
    probe = get_probe(family)
    if probe is None:
        return
    first_bad: list[str] = []

    def check(module_name: str):
        def hook(_module, _inputs, output) -> None:
            if not first_bad and not _all_finite(output):
                first_bad.append(module_name or type(model).__name__)

        return hook

    handles = [module.register_forward_hook(check(name)) for name, module in model.named_modules()]
    try:
        with torch.inference_mode():
            result = probe(model)
    except Exception as error:  # a forward pass that fails outright is as unusable
        raise CheckpointError(
            where, f"the probe forward pass failed: {type(error).__name__}: {error}"
        ) from None
    finally:
        for handle in handles:
            handle.remove()
    if first_bad:
        raise CheckpointError(
            where,
            f"a forward pass on a probe frame gives NaN or inf, first in module '{first_bad[0]}'",
        )
    if not _all_finite(result):
        raise CheckpointError(where, "a forward pass on a probe frame gives NaN or inf")


def probe_frame(height: int, width: int, seed: int = 0) -> Tensor:
    """A uint8 (H, W, 3) RGB noise frame, the same for every call (its own generator)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=generator)


def _all_finite(value: Any) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in _float_tensors(value))


def _float_tensors(value: Any, depth: int = 0) -> Iterator[Tensor]:
    if depth > 8:
        return
    if isinstance(value, Tensor):
        if value.is_floating_point() and value.numel():
            yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _float_tensors(item, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _float_tensors(item, depth + 1)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for item in dataclasses.fields(value):
            yield from _float_tensors(getattr(value, item.name), depth + 1)
    elif isinstance(getattr(value, "tensors", None), Tensor):  # torchvision's ImageList
        yield from _float_tensors(value.tensors, depth + 1)
