"""Gateway and two workers as separate processes joined by the real Redis on 127.0.0.1:6379."""

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis

from models.data.synthetic.export import generate_video
from models.data.synthetic.world import WorldConfig
from models.data.video import write_mp4
from service.settings import SHIPPED_CHECKPOINTS
from tests.service.conftest import ROOT, Server
from tests.service.test_rest import LOW, assert_same_frames, post

REDIS_URL = "redis://127.0.0.1:6379/7"  # a database of its own, emptied first


def start_worker(log) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service.cli",
            "worker",
            "--redis-url",
            REDIS_URL,
            "--store",
            str(SHIPPED_CHECKPOINTS),
            "--max-batch-size",
            "4",
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ),
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        redis.Redis.from_url(REDIS_URL).flushdb()
    except redis.ConnectionError:
        pytest.fail("the Redis server on 127.0.0.1:6379 is not running")
    logs = tmp_path_factory.mktemp("logs")
    log = open(logs / "cluster.log", "w")  # noqa: SIM115
    workers = [start_worker(log) for _ in range(2)]
    gateway = None
    try:
        gateway = Server(extra_args=["--redis-url", REDIS_URL], log=log)
        deadline = time.monotonic() + 120
        while len(redis.Redis.from_url(REDIS_URL).hkeys("vidserve:workers")) < 2:
            assert time.monotonic() < deadline, "the two workers did not come up"
            time.sleep(0.3)
        yield gateway, workers
    finally:
        for process in workers:
            process.kill()
        if gateway is not None:
            gateway.stop()
        log.close()


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    world = WorldConfig(width=160, height=120, frames=36, fps=8, max_objects=3)
    path = tmp_path_factory.mktemp("videos") / "long.mp4"
    write_mp4(path, generate_video(world, 99, 0).frames, world.fps)
    return path


def test_eight_concurrent_videos_through_two_workers(cluster, video_file, other_video_file, server):
    gateway, _ = cluster
    videos = [video_file.read_bytes(), other_video_file.read_bytes()]
    models = ["masktrack", "masktrack-instance"]
    # The embedded server (same checkpoint) gives the expected answers.
    expected = {
        (v, m): post(server, videos[v], {**LOW, "model": m}).json()["frames"]
        for v in range(2)
        for m in models
    }
    jobs = [(k % 2, models[k // 4]) for k in range(8)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda job: post(gateway, videos[job[0]], {**LOW, "model": job[1]}), jobs)
        )
    for (v, m), response in zip(jobs, answers, strict=True):
        assert response.status_code == 200, response.text
        assert_same_frames(response.json()["frames"], expected[(v, m)])
    frames_taken = redis.Redis.from_url(REDIS_URL).hgetall("vidserve:workers")
    assert len(frames_taken) == 2


def test_killing_a_worker_loses_no_stateless_frame_and_ends_its_sessions(cluster, long_video):
    gateway, workers = cluster
    data = long_video.read_bytes()

    def request(model):
        response = post(gateway, data, {"model": model, "score_threshold": "0.05"})
        return response, time.monotonic()

    with ThreadPoolExecutor(8) as pool:
        stateless = [pool.submit(request, "masktrack-instance") for _ in range(4)]
        stateful = [pool.submit(request, "masktrack") for _ in range(4)]
        time.sleep(2.0)  # mid-run
        victim = workers[0]
        victim.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        stateless_answers = [f.result() for f in stateless]
        stateful_answers = [f.result() for f in stateful]
    victim.wait()
    for response, _ in stateless_answers:
        assert response.status_code == 200, response.text
        indices = [f["frame_index"] for f in response.json()["frames"]]
        assert indices == list(range(36)), "every stateless frame is answered, once, in order"
    lost = [(r, t) for r, t in stateful_answers if r.status_code != 200]
    assert lost, "the killed worker held some of the stateful sessions"
    for response, finished in lost:
        assert response.status_code == 503
        assert "session state lost" in response.json()["detail"]
        assert finished - killed_at < 8, "the client is told within a few seconds"
    for response, _ in stateful_answers:
        if response.status_code == 200:
            assert len(response.json()["frames"]) == 36
    # The surviving worker keeps serving new sessions.
    after = post(gateway, data, {"model": "masktrack", "max_frames": "3"})
    assert after.status_code == 200 and len(after.json()["frames"]) == 3


def test_without_workers_the_gateway_says_503(cluster, video_file):
    """Last in the module: it stops every worker."""
    gateway, workers = cluster
    for process in workers:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # a clean exit leaves the registry at once
            process.wait(timeout=30)
    ready = httpx.get(f"{gateway.url}/readyz")
    assert ready.status_code == 503
    response = post(gateway, video_file.read_bytes())
    assert response.status_code == 503 and "no worker" in response.json()["detail"]
