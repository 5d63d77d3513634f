"""MMTracking's MaskTrack R-CNN checkpoint layout, from its key list, filled with random values."""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path

import torch

# A copy of the list in the shared reference folder, committed so that CI never needs that folder.
KEY_LIST = Path(__file__).parent / "data" / "masktrack_rcnn_r50_ytvis19_checkpoint_keys.txt"
SHARED_KEY_LIST = (
    Path(__file__).resolve().parents[2].parent
    / "shared"
    / "reference"
    / "masktrack_rcnn_r50_ytvis19_checkpoint_keys.txt"
)
_LINE = re.compile(r"^(\S+) (\([\d, ]*\)) (\w+)( \[buffer\])?$")


def parse_key_list(path: Path = KEY_LIST) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """{name: (shape, dtype)}: one `name (d0, d1, ...) dtype [buffer]` a line, '#' comments."""
    entries = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = _LINE.match(line.strip())
        assert match, f"unreadable key list line: {line!r}"
        name, shape, dtype, _buffer = match.groups()
        entries[name] = (tuple(ast.literal_eval(shape)), getattr(torch, dtype))
    return entries


def stated_parameter_count(path: Path = KEY_LIST) -> int:
    """The header's "...; 58,076,736 parameters"."""
    match = re.search(r"([\d,]+) parameters \(", path.read_text())
    assert match, f"{path} states no parameter count"
    return int(match.group(1).replace(",", ""))


def mmtracking_like_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Every entry of the key list, named and shaped as the released file, with random values
    of a freshly initialised network's scale (so a forward pass stays finite): weights ~
    N(0, 1/fan_in), norms' scales near 1, running variances 1, small biases, counters 0."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, (shape, dtype) in parse_key_list().items():
        if dtype != torch.float32:
            state[name] = torch.zeros(shape, dtype=dtype)
        elif name.endswith("running_var"):
            state[name] = torch.ones(shape)
        elif len(shape) >= 2:
            fan_in = math.prod(shape[1:])
            state[name] = torch.randn(shape, generator=generator) / math.sqrt(fan_in)
        elif _is_norm_scale(name):
            state[name] = 1 + 0.01 * torch.randn(shape, generator=generator)
        else:
            state[name] = 0.01 * torch.randn(shape, generator=generator)
    return state


def _is_norm_scale(name: str) -> bool:
    layer = name.rsplit(".", 1)[0]
    return name.endswith(".weight") and (".bn" in f".{layer}" or layer.endswith("downsample.1"))
