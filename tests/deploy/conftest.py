"""Fixtures of the deployment tests."""

import pytest

from models.data.synthetic.export import generate_video
from models.data.synthetic.world import WorldConfig
from models.data.video import write_mp4

SMALL_VIDEO = WorldConfig(width=160, height=120, frames=6, fps=8, max_objects=3)


@pytest.fixture(scope="session")
def video_file(tmp_path_factory):
    """A short real H.264 video (160x120, 6 frames)."""
    path = tmp_path_factory.mktemp("deploy-videos") / "small.mp4"
    write_mp4(path, generate_video(SMALL_VIDEO, 77, 0).frames, SMALL_VIDEO.fps)
    return path
