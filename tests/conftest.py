"""Shared fixtures: a small synthetic dataset generated once per test session."""

import pytest

from models.data.synthetic.export import generate_dataset, generate_video
from models.data.synthetic.world import WorldConfig

SMALL_WORLD = WorldConfig(width=96, height=64, frames=12, fps=4, max_objects=3, difficulty=0.5)
SMALL_SEED = 7
SMALL_VIDEOS = 3


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """(folder, meta, rendered videos): the files on disk and the ground truth behind them."""
    out = tmp_path_factory.mktemp("synth") / "data"
    meta = generate_dataset(out, SMALL_WORLD, SMALL_VIDEOS, SMALL_SEED, split="val")
    videos = [generate_video(SMALL_WORLD, SMALL_SEED, i) for i in range(SMALL_VIDEOS)]
    return out, meta, videos
