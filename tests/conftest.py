"""Shared fixtures, each made once per test session: a small synthetic dataset, the tests' own
redis-server, and for the serving tests a video and a running `vidserve serve`."""

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


# --- serving: one video and one `vidserve serve` shared by every folder ---------------------------
@pytest.fixture(scope="session")
def video_file(tmp_path_factory):
    """A 10-frame synthetic video (320x240 H.264)."""
    return _serving_video(tmp_path_factory, "objects.mp4", 0)


@pytest.fixture(scope="session")
def other_video_file(tmp_path_factory):
    return _serving_video(tmp_path_factory, "other.mp4", 1)


def _serving_video(tmp_path_factory, name: str, index: int):
    from models.data.video import write_mp4
    from tests.service.conftest import VIDEO_WORLD

    path = tmp_path_factory.mktemp("videos") / name
    write_mp4(path, generate_video(VIDEO_WORLD, 4242, index).frames, VIDEO_WORLD.fps)
    return path


# The shared server's limits: what tests/service/test_rest.py's bad-input cases are refused by.
SHARED_SERVER_ENV = {
    "VIDSERVE_MAX_UPLOAD_BYTES": str(3 * 1024 * 1024),
    "VIDSERVE_MAX_FRAMES_IN_FLIGHT": "128",
    "VIDSERVE_MAX_VIDEO_FRAMES": "40",
    "VIDSERVE_MAX_WIDTH": "400",
    "VIDSERVE_MAX_HEIGHT": "300",
}


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One `vidserve serve` (embedded worker, shipped checkpoints, SHARED_SERVER_ENV) for the whole
    test session: a start costs 10-15 s on 2 cores. Tests on it must not depend on its history:
    they read counters before and compare after, and leave no session open."""
    from tests.service.conftest import Server

    with open(tmp_path_factory.mktemp("logs") / "server.log", "w") as log:
        srv = Server(env=SHARED_SERVER_ENV, log=log)
        yield srv
        srv.stop()


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device (skipped without one)")
    config.addinivalue_line("markers", "gpu_smoke: benchmarks/gpu_suite.py --smoke on the CPU")
