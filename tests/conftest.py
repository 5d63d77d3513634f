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


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A redis-server of this test session's own (tests/redis_server.py); each module that uses
    it takes a database number of its own."""
    from tests.redis_server import RedisServer, redis_server_binary

    if redis_server_binary() is None:
        pytest.skip("redis-server is not on PATH (apt-get install redis-server); CI has it")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server):
    """The URL of database 0 of the tests' own redis-server."""
    return redis_server.url(0)
