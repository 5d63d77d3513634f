"""The released MMAction2 AVA detectors' weights into our ActionDetector, and back.

Releases (MMAction2 v1.2.0; their names and shapes listed in ../shared/reference/, copies in
tests/action/data/):
- slowfast-acrn_kinetics400-pretrained-r50_8xb8-8x8x1-cosine-10e_ava21-rgb: 654 entries,
  ActionConfig() (= ActionConfig.slowfast_acrn_r50());
- slowonly_kinetics400-pretrained-r50_8xb16-4x16x1-20e_ava21-rgb: 320 entries,
  ActionConfig.slowonly_r50().

Our module tree is named as MMAction2's (models.action.model), so the name map is the IDENTITY:
converting checks that every entry is there with its shape, nothing missing, nothing extra, and
refuses the file with the differences otherwise. The released file is mmengine's checkpoint
after publish_model.py: {'meta', 'state_dict'}; a bare state dict is accepted too. It is read
with torch.load(weights_only=True) (models.checkpoints.convert), so a file that pickles anything
but tensors and plain containers is refused, not run. `data_preprocessor.*` entries (the
normaliser's mean and std, which some builds save) are not weights of the network: dropped; our
preprocessing has the same numbers (ActionConfig.image_mean / image_std).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from models.action.config import ActionConfig
from models.action.model import ActionDetector, build_action_model
from models.checkpoints.checkpoint import describe_mismatch
from models.checkpoints.convert import load_pth_state_dict, tensors_only, unwrap_state_dict
from models.checkpoints.errors import CheckpointError

PREPROCESSOR_PREFIX = "data_preprocessor."
RELEASES = {
    "slowfast_acrn_r50_ava21": ActionConfig.slowfast_acrn_r50,
    "slowonly_r50_4x16_ava21": ActionConfig.slowonly_r50,
}


def release_architecture(release: str = "slowfast_acrn_r50_ava21") -> ActionConfig:
    """Our configuration of a release (a key of RELEASES)."""
    if release not in RELEASES:
        raise KeyError(f"unknown release {release!r}; known: {', '.join(RELEASES)}")
    return RELEASES[release]()


def reference_entries(config: ActionConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Our model's state-dict entries for `config`: {name: (shape, dtype)}."""
    with torch.device("meta"):  # names, shapes and dtypes only: no memory, no initialisation
        model = ActionDetector(config)
    return {name: (tuple(t.shape), t.dtype) for name, t in model.state_dict().items()}


def release_name(our_name: str) -> str:
    """The release's name of our entry: the same name (the map is the identity)."""
    return our_name


def convert_release_state_dict(
    state: Mapping[str, Any], config: ActionConfig, source: Path | str = "<state dict>"
) -> dict[str, Tensor]:
    """The release's state dict (or its {'meta', 'state_dict'} wrapper) in our names, for the
    model of `config`. Anything missing, unexpected, of another shape or dtype, or no tensor is
    a CheckpointError naming `source` and the entries."""
    source_path = Path(source)
    weights = tensors_only(unwrap_state_dict(state, source_path), source_path)
    weights = {k: v for k, v in weights.items() if not k.startswith(PREPROCESSOR_PREFIX)}
    expected = {release_name(name): entry for name, entry in reference_entries(config).items()}
    problems = describe_mismatch(
        {name: tuple(t.shape) for name, t in weights.items()},
        {name: shape for name, (shape, _) in expected.items()},
    )
    if not problems:
        problems = _describe_dtypes(weights, expected)
    if problems:
        raise CheckpointError(
            source, f"not the MMAction2 {config.backbone} AVA detector's layout: {problems}"
        )
    return {ours: weights[release_name(ours)] for ours in expected}


def to_release_state_dict(ours: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our state dict (or a part of it) in the release's names."""
    return {release_name(name): tensor for name, tensor in ours.items()}


def load_release_file(path: Path | str, release: str = "slowfast_acrn_r50_ava21") -> ActionDetector:
    """An ActionDetector (eval mode, CPU) holding a released .pth file's weights."""
    return load_release_state_dict(load_pth_state_dict(path), release, source=path)


def load_release_state_dict(
    checkpoint: Mapping[str, Any],
    release: str = "slowfast_acrn_r50_ava21",
    source: Path | str = "<state dict>",
) -> ActionDetector:
    """An ActionDetector (eval mode, CPU) holding the release's weights."""
    config = release_architecture(release)
    converted = convert_release_state_dict(checkpoint, config, source)
    model = build_action_model(config)
    model.load_state_dict(converted, strict=True)  # every name and shape checked above
    return model.eval()


def _describe_dtypes(
    weights: Mapping[str, Tensor], expected: Mapping[str, tuple[tuple[int, ...], torch.dtype]]
) -> str:
    """Floating entries must be floating and counters integers: a float counter or an integer
    weight is another file, not a precision choice."""
    wrong = sorted(
        f"{name} {weights[name].dtype} != {dtype}"
        for name, (_, dtype) in expected.items()
        if weights[name].is_floating_point() != dtype.is_floating_point
    )
    if not wrong:
        return ""
    more = f" and {len(wrong) - 5} more" if len(wrong) > 5 else ""
    return f"wrong dtype {len(wrong)}: {', '.join(wrong[:5])}{more}"
