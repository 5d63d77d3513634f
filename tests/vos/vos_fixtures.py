"""Helpers shared by the VOS tests: the official key list, a tiny model, synthetic videos."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import numpy as np
import torch

from models.data.synthetic.export import generate_video
from models.data.synthetic.world import WorldConfig
from models.vos import STCN, VosConfig

# A copy of the list in the shared reference folder, committed so that CI never needs that folder.
KEY_LIST = Path(__file__).parent / "data" / "stcn_checkpoint_keys.txt"
SHARED_KEY_LIST = (
    Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "stcn_checkpoint_keys.txt"
)


def parse_key_list(path: Path) -> dict[str, tuple[int, ...]]:
    """{name: shape} of a key list: one `name (d0, d1, ...)` a line, '#' lines are comments."""
    shapes: dict[str, tuple[int, ...]] = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, shape = line.strip().split(" ", 1)
        shapes[name] = tuple(ast.literal_eval(shape))
    return shapes


def key_list_total_numel(path: Path) -> int:
    """The total the header states ("..., 54,469,252 parameters")."""
    match = re.search(r"([\d,]+) parameters", path.read_text())
    assert match, f"{path} header states no parameter count"
    return int(match.group(1).replace(",", ""))


def tiny_config(**overrides) -> VosConfig:
    """The small design made tinier still: the tests check mechanics, not accuracy."""
    settings = dict(
        key_stem_width=8,
        key_widths=(8, 16, 16),
        key_dim=16,
        key_comp_dim=16,
        value_stem_width=8,
        value_widths=(8, 8, 16),
        value_dim=16,
        cbam_reduction=4,
        decoder_widths=(16, 8, 8),
        short_edge=None,
    )
    settings.update(overrides)
    return VosConfig.small(**settings)


@cache
def tiny_model(seed: int = 0) -> STCN:
    """An untrained tiny STCN in eval mode (shared: sessions never change the model)."""
    torch.manual_seed(seed)
    return STCN(tiny_config()).eval()


@cache
def synthetic_video(width: int = 96, height: int = 64, frames: int = 6, seed: int = 3):
    """A rendered synthetic video with at least two objects on its first frame."""
    config = WorldConfig(width=width, height=height, frames=frames, max_objects=3, difficulty=0.2)
    for index in range(20):
        video = generate_video(config, seed, index)
        if len(visible_ids(video.object_map[0])) >= 2:
            return video
    raise AssertionError("no synthetic video with two objects on frame 0")


def visible_ids(ids: np.ndarray) -> list[int]:
    return [int(i) for i in np.unique(ids) if i != 0]


def box_mask(height: int, width: int, top: int, left: int, size: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


def random_frames(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """(count, H, W, 3) uint8 noise frames."""
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)
