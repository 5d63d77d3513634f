"""The whole system as docker-compose.yml (with the CPU override) describes it, run as local
processes: the compose commands, environments and start-up order, with the compose service names
and volumes mapped to this machine. Redis is a redis-server the tests start themselves
(tests/redis_server.py, a database of its own), the checkpoint volume a temporary folder seeded by
the same script the compose file runs.

A trainer run of a few iterations then publishes a checkpoint and announces it; the running
workers load it and new requests report the new version. The workers' store polling is slowed
to 10 minutes here, so that only the Redis announcement can make them pick it up in time.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis

from service.queue.redis_streams import GROUP, WORKERS_HASH, work_stream
from service.settings import SHIPPED_CHECKPOINTS
from tests.deploy.files import COMPOSE, COMPOSE_CPU, ROOT, load_compose
from tests.service.conftest import free_port

REDIS_DB = 3  # of the tests' own redis-server (tests/service/test_redis.py has 1 and 2)
BIN = Path(sys.executable).parent  # the environment's `vidserve`
TRAINER_ARGS = ["--iters", "3", "--batch-size", "2", "--val-videos", "1", "--seed", "3"]
TINY_DATA = {"TRAIN_VIDEOS": "3", "TRAIN_FRAMES": "6", "TRAIN_SIZE": "128x96"}


class Compose:
    """Services of the compose files as local processes."""

    def __init__(self, root: Path, redis_url: str):
        self.root = root
        self.redis_url = redis_url  # what the compose file's redis://redis:6379 is here
        self.paths = {  # container path -> this machine
            "/app": str(ROOT),
            "/checkpoints": str(root / "checkpoints"),
            "/data": str(root / "data"),
        }
        base, cpu = load_compose(COMPOSE)["services"], load_compose(COMPOSE_CPU)["services"]
        self.services = {
            name: {
                **spec,
                "environment": {
                    **spec.get("environment", {}),
                    **cpu.get(name, {}).get("environment", {}),
                },
            }
            for name, spec in base.items()
        }
        self.processes: list[subprocess.Popen] = []
        self.logs = root / "logs"
        self.logs.mkdir()

    def local(self, value: str) -> str:
        """A value as the compose file has it, with container paths and hosts mapped here."""
        if value.startswith("redis://redis:6379"):
            return self.redis_url
        for inside, here in self.paths.items():
            if value == inside or value.startswith(inside + "/"):
                return here + value[len(inside) :]
        return value

    def command(self, name: str, args: list[str] | None = None) -> list[str]:
        service = self.services[name]
        entry = service.get("entrypoint", [])
        words = [*entry, *(service.get("command", []) if args is None else args)]
        if words[0] == "vidserve":
            words[0] = str(BIN / "vidserve")
        return [self.local(w) for w in words]

    def environment(self, name: str, **overrides: str) -> dict[str, str]:
        env = {k: self.local(str(v)) for k, v in self.services[name]["environment"].items()}
        return {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "VIDSERVE_HOST": "127.0.0.1",
            "OMP_NUM_THREADS": "1",  # four processes on a small shared machine
            **env,
            **overrides,
        }

    def start(self, name: str, log_name: str, **env: str) -> subprocess.Popen:
        log = open(self.logs / f"{log_name}.log", "w")  # noqa: SIM115
        process = subprocess.Popen(
            self.command(name),
            cwd=ROOT,
            env=self.environment(name, **env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.processes.append(process)
        return process

    def run(self, name: str, args: list[str] | None = None, timeout=300, **env: str):
        return subprocess.run(
            self.command(name, args),
            cwd=ROOT,
            env=self.environment(name, **env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def log(self, log_name: str) -> str:
        return (self.logs / f"{log_name}.log").read_text()

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_until(check, what: str, timeout: float, processes=()) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for process in processes:
            assert process.poll() is None, f"{what}: a process exited ({process.returncode})"
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{what}: not after {timeout} s"
        time.sleep(0.3)


def ready(url: str) -> bool:
    return httpx.get(f"{url}/readyz", timeout=3).status_code == 200


@pytest.fixture(scope="module")
def system(tmp_path_factory, redis_server):
    if not any(SHIPPED_CHECKPOINTS.glob("*/*/*/manifest.json")):
        pytest.fail(f"no shipped checkpoint in {SHIPPED_CHECKPOINTS}")
    redis_server.client(REDIS_DB).flushdb()  # the tests' own server: nothing else lives there
    compose = Compose(tmp_path_factory.mktemp("compose"), redis_server.url(REDIS_DB))
    try:
        # checkpoints-init: the shipped checkpoint into the (empty) volume.
        seeded = compose.run("checkpoints-init")
        assert seeded.returncode == 0, seeded.stdout + seeded.stderr
        # worker x2 (compose: `--scale worker=2`), each with its health port.
        workers = []
        for k in range(2):
            port = free_port()
            process = compose.start(
                "worker", f"worker{k}", VIDSERVE_WORKER_PORT=str(port), VIDSERVE_RELOAD_POLL_S="600"
            )
            workers.append((process, f"http://127.0.0.1:{port}"))
        for process, url in workers:
            wait_until(lambda u=url: ready(u), "worker /readyz", 120, [process])
        # gateway, once the workers are healthy (depends_on: service_healthy).
        port, grpc_port = free_port(), free_port()
        gateway = compose.start(
            "gateway", "gateway", VIDSERVE_PORT=str(port), VIDSERVE_GRPC_PORT=str(grpc_port)
        )
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: ready(url), "gateway /readyz", 120, [gateway])
        yield compose, url, workers
    finally:
        compose.stop()


def model_versions(url: str) -> dict[str, str]:
    return {m["name"]: m["version"] for m in httpx.get(f"{url}/v1/models").json()["models"]}


def segment(url: str, video: Path, model: str) -> dict:
    response = httpx.post(
        f"{url}/v1/segment",
        files={"video": ("v.mp4", video.read_bytes())},
        data={"model": model, "max_frames": "3"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    return response.json()


def shipped_version() -> str:
    return max(p.parent.name for p in SHIPPED_CHECKPOINTS.glob("vis/masktrack/*/manifest.json"))


def test_the_system_comes_up_and_serves_the_shipped_checkpoint(system, video_file):
    compose, url, workers = system
    version = shipped_version()
    seeded = compose.root / "checkpoints" / "vis" / "masktrack" / version
    assert (seeded / "model.safetensors").is_file(), "checkpoints-init seeded the volume"
    served = model_versions(url)
    assert (served["masktrack"], served["masktrack-instance"]) == (version, version)
    for _, worker in workers:
        assert httpx.get(f"{worker}/readyz").json()["models"]["masktrack"] == version
    assert segment(url, video_file, "masktrack")["model_version"] == version
    assert segment(url, video_file, "masktrack-instance")["model_version"] == version
    # The stream and consumer group that KEDA's trigger (deploy/k8s) watches exist, with a lag.
    client = redis.Redis.from_url(compose.redis_url)
    groups = client.xinfo_groups(work_stream("masktrack-instance"))
    assert [g["name"].decode() for g in groups] == [GROUP]
    assert "lag" in groups[0] and "pending" in groups[0]
    registry = [json.loads(v) for v in client.hgetall(WORKERS_HASH).values()]
    assert len(registry) == 2
    for info in registry:
        stateful = {m["name"]: m["stateful"] for m in info["models"]}
        assert (stateful["masktrack"], stateful["masktrack-instance"]) == (True, False)
    metrics = httpx.get(f"{workers[0][1]}/metrics").text
    assert "vidserve_batch_size_bucket" in metrics


def test_a_trainer_run_reaches_the_running_workers(system, video_file):
    compose, url, workers = system
    old = model_versions(url)["masktrack"]
    # `docker compose --profile train run trainer --iters 3 ...` with a tiny synthetic dataset.
    trained = compose.run("trainer", TRAINER_ARGS, **TINY_DATA)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    published = Path(re.search(r"published (\S+)", trained.stdout).group(1))
    new = published.name
    assert published.parent == compose.root / "checkpoints" / "vis" / "masktrack"
    assert new > old

    wait_until(lambda: model_versions(url)["masktrack"] == new, "new version in /v1/models", 60)
    served = model_versions(url)
    assert (served["masktrack"], served["masktrack-instance"]) == (new, new)
    for k, (_, worker) in enumerate(workers):
        wait_until(
            lambda w=worker: httpx.get(f"{w}/readyz").json()["models"]["masktrack"] == new,
            f"worker {k} on the new version",
            60,
        )
        assert "checkpoint announced" in compose.log(f"worker{k}"), "woken by the announcement"
    for model in ("masktrack", "masktrack-instance"):
        result = segment(url, video_file, model)
        assert result["model_version"] == new
        assert {f["model_version"] for f in result["frames"]} == {new}
    shutil.rmtree(compose.root / "data", ignore_errors=True)
