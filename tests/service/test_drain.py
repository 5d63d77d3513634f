"""Graceful drain on SIGTERM (workers, the embedded server) and the janitor that deletes what
dead gateways and workers leave in Redis: real processes on the tests' own redis-server."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import httpx
import pytest
import redis

from models.data.synthetic.export import generate_video
from models.data.synthetic.world import WorldConfig
from models.data.video import write_mp4
from service.gateway.grpc_convert import frame_from_proto
from service.gateway.grpc_gen import vidserve_pb2 as pb
from service.gateway.grpc_gen import vidserve_pb2_grpc as pb_grpc
from service.queue.base import NoWorker
from service.queue.inprocess import InProcessTransport
from service.queue.messages import ErrorCode, Frame
from service.queue.redis_streams import (
    ALIVE_TTL_MS,
    GATEWAY_FORGET_S,
    GATEWAYS_HASH,
    WORKERS_HASH,
    RedisGatewayTransport,
    alive_key,
    dead_gateways,
    gateway_alive_key,
    inbox_stream,
    reply_stream,
    sweep,
)
from service.settings import SHIPPED_CHECKPOINTS
from service.worker.runners import load_runner_from_store
from service.worker.worker import Worker, WorkerConfig
from tests.service.conftest import MASKTRACK_ONLY, ROOT, Server, free_port
from tests.service.test_grpc import png

DRAIN_DB = 9  # databases of the tests' own redis-server (test_redis has 1, 2, 6; deploy 3)
JANITOR_DB = 10
UNIT_DB = 11
GRACE_S = 20
FRAMES = generate_video(WorldConfig(width=160, height=120, frames=24, fps=8), 21, 0).frames


# --- helpers -------------------------------------------------------------------------------------
def start_worker(url: str, log, port: int, env=None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "worker", "--redis-url", url]
        + ["--store", str(SHIPPED_CHECKPOINTS), "--max-batch-size", "4", "--port", str(port)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "VIDSERVE_HOST": "127.0.0.1", **MASKTRACK_ONLY, **(env or {})},
    )


def worker_id(port: int, process: subprocess.Popen, timeout: float = 120) -> str:
    """The id of the worker whose health port is `port`, once it is ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the worker exited with {process.returncode}"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return httpx.get(f"http://127.0.0.1:{port}/healthz").json()["worker"]
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError("the worker did not come up")


def heartbeats(client: redis.Redis) -> dict[str, dict]:
    return {k.decode(): json.loads(v) for k, v in client.hgetall(WORKERS_HASH).items()}


def wait_for(condition, timeout: float, what: str) -> float:
    """Seconds until `condition()` holds; fails after `timeout`."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout} s"
        time.sleep(0.1)
    return time.monotonic() - started


def config_request(model: str = "masktrack") -> pb.StreamRequest:
    return pb.StreamRequest(config=pb.SessionConfig(model=model, score_threshold=0.05))


def frame_request(index: int) -> pb.StreamRequest:
    image = png(FRAMES[index % len(FRAMES)])
    return pb.StreamRequest(frame=pb.ImageFrame(image=image, frame_index=index, time=index / 8))


@pytest.fixture
def db(redis_server, request):
    number = request.param if hasattr(request, "param") else UNIT_DB
    client = redis_server.client(number)
    client.flushdb()  # the test server's own database: nothing else lives there
    yield redis_server.url(number), client
    client.close()


# --- the worker's drain, in-process ---------------------------------------------------------------
@pytest.fixture(scope="module")
def runner():
    return load_runner_from_store(SHIPPED_CHECKPOINTS, "masktrack", "cpu")


def test_a_draining_worker_refuses_new_sessions_serves_open_ones_and_cuts_them_at_the_deadline(
    runner,
):
    transport = InProcessTransport()
    worker = Worker(transport, WorkerConfig(max_batch_size=4, max_wait_ms=20))
    transport.attach(worker)
    worker.install(runner)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()

    async def reply(handle):
        return await asyncio.wait_for(handle.replies.get(), 30)

    async def scenario():
        frame = lambda handle, i: Frame(handle.session_id, i, i / 8, FRAMES[i], model="masktrack")  # noqa: E731
        open_one = await transport.open("masktrack", {})
        await transport.send(open_one, frame(open_one, 0))
        assert (await reply(open_one)).error_code is None
        cut = asyncio.get_running_loop().run_in_executor(None, worker.drain, 1.5)
        await asyncio.sleep(0.2)
        assert worker.draining
        refused = await transport.open("masktrack", {})
        end = await reply(refused)
        assert end.closed and end.error_code == ErrorCode.UNAVAILABLE
        assert "shutting down" in end.error
        await transport.send(open_one, frame(open_one, 1))  # the open session is still served
        served = await reply(open_one)
        assert (served.index, served.error_code) == (1, None)
        last = await reply(open_one)  # never closed: cut when the grace period runs out
        assert last.closed and last.error_code == ErrorCode.UNAVAILABLE
        assert "grace period (1.5 s) ran out" in last.error
        return await cut

    try:
        assert asyncio.run(scenario()) == 1
        thread.join(timeout=10)
        assert not thread.is_alive(), "run() returns once drained"
    finally:
        worker.stop()


def test_a_worker_frees_the_sessions_of_a_gateway_that_died(runner):
    class Quiet(InProcessTransport):
        replies = 0

        def reply(self, reply, reply_to):
            Quiet.replies += 1

    worker = Worker(Quiet(), WorkerConfig())
    worker.install(runner)
    from service.queue.messages import OpenSession

    worker.handle(OpenSession("s1", "masktrack", {}, "gw-dead"))
    worker.handle(OpenSession("s2", "masktrack", {}, "gw-live"))
    assert worker.gateways() == {"gw-dead", "gw-live"}
    assert worker.end_sessions_of({"gw-dead"}) == 1
    assert worker.session_count() == 1 and worker.gateways() == {"gw-live"}
    assert Quiet.replies == 0, "nobody reads a dead gateway's replies"
    worker.stop()


# --- the janitor and the gateway's choice, on Redis ----------------------------------------------
def beat(client: redis.Redis, worker: str, info: dict, alive: bool = True) -> None:
    if alive:
        client.set(alive_key(worker), "1", px=ALIVE_TTL_MS * 30)
    client.hset(WORKERS_HASH, worker, json.dumps(info))


def test_the_janitor_deletes_what_dead_peers_left_and_only_that(db):
    _, client = db
    now = time.time()
    beat(client, "w-live", {"sessions": 0})
    beat(client, "w-dead", {"sessions": 3}, alive=False)
    for worker in ("w-live", "w-dead", "w-orphan"):  # an inbox without a registration too
        client.xadd(inbox_stream(worker), {"meta": "{}"})
    gateways = {"g-live": now, "g-dead": now, "g-long-dead": now - GATEWAY_FORGET_S - 1}
    for gateway, when in gateways.items():
        client.hset(GATEWAYS_HASH, gateway, json.dumps({"time": when}))
        client.xadd(reply_stream(gateway), {"reply": "{}"})
    client.set(gateway_alive_key("g-live"), "1", px=ALIVE_TTL_MS * 30)
    client.xadd(reply_stream("g-old-version"), {"reply": "{}"})  # never registered: kept

    removed = sweep(client)
    assert removed == {"workers": 1, "inboxes": 2, "replies": 2, "gateways": 1}
    assert set(heartbeats(client)) == {"w-live"}
    assert client.exists(inbox_stream("w-live")) and not client.exists(inbox_stream("w-dead"))
    assert not client.exists(inbox_stream("w-orphan"))
    assert client.exists(reply_stream("g-live"), reply_stream("g-old-version")) == 2
    assert not client.exists(reply_stream("g-dead"), reply_stream("g-long-dead"))
    # A dead gateway stays registered a while: a late reply re-creating its stream goes too.
    assert {k.decode() for k in client.hkeys(GATEWAYS_HASH)} == {"g-live", "g-dead"}
    assert dead_gateways(client, ["g-live", "g-dead", "g-old-version"]) == {"g-dead"}
    assert sweep(client) == {"workers": 0, "inboxes": 0, "replies": 0, "gateways": 0}


def test_a_gateway_opens_no_session_on_a_draining_worker(db):
    url, client = db
    model = {"name": "track", "task": "vis", "version": "v1", "classes": ["a"], "stateful": True}
    base = {"protocol": 2, "min_protocol": 2, "models": [model]}
    beat(client, "idle-but-draining", base | {"sessions": 0, "draining": True})
    beat(client, "busy", base | {"sessions": 5})

    async def scenario():
        gateway = RedisGatewayTransport(url)
        await gateway.start()
        try:
            first = await gateway.open("track", {})
            beat(client, "busy", base | {"sessions": 5, "draining": True})
            with pytest.raises(NoWorker):
                await gateway.open("track", {})
            assert await gateway.models() == []
            registered = client.hexists(GATEWAYS_HASH, gateway.gateway_id)
            alive = client.exists(gateway_alive_key(gateway.gateway_id))
            return first.worker_id, registered, alive, gateway.gateway_id
        finally:
            await gateway.stop()

    chosen, registered, alive, gateway_id = asyncio.run(scenario())
    assert chosen == "busy"
    assert registered and alive, "a gateway heartbeats"
    assert not client.hexists(GATEWAYS_HASH, gateway_id), "and leaves cleanly"
    assert not client.exists(gateway_alive_key(gateway_id))


# --- processes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("db", [DRAIN_DB], indirect=True)
def test_a_worker_given_sigterm_mid_stream_finishes_it_while_new_sessions_go_elsewhere(
    db, tmp_path
):
    url, client = db
    log = open(tmp_path / "cluster.log", "w")  # noqa: SIM115
    ports = [free_port(), free_port()]
    env = {"VIDSERVE_DRAIN_GRACE_S": str(GRACE_S)}
    workers = [start_worker(url, log, port, env) for port in ports]
    gateway = None
    try:
        ids = [worker_id(port, process) for port, process in zip(ports, workers, strict=True)]
        gateway = Server(extra_args=["--redis-url", url], log=log)
        short = tmp_path / "short.mp4"
        write_mp4(short, FRAMES[:3], 8)
        timings = {}

        async def stream() -> tuple[list[dict], list[str]]:
            during: list[str] = []

            async def requests():
                yield config_request()
                for index in range(len(FRAMES)):
                    yield frame_request(index)
                    await asyncio.sleep(0.15)  # a camera: the stream outlives the SIGTERM

            results = []
            async with grpc.aio.insecure_channel(gateway.grpc_target) as channel:
                call = pb_grpc.VideoSegmentationStub(channel).StreamFrames(requests())
                async for message in call:
                    results.append(frame_from_proto(message).model_dump(mode="json"))
                    if len(results) == 4:
                        await asyncio.to_thread(
                            wait_for,
                            lambda: any(h["sessions"] for h in heartbeats(client).values()),
                            5,
                            "the session in a heartbeat",
                        )
                        holder = next(w for w, h in heartbeats(client).items() if h["sessions"])
                        process = workers[ids.index(holder)]
                        process.send_signal(signal.SIGTERM)
                        timings["sigterm"] = time.monotonic()
                        timings["holder"] = holder
                        await asyncio.to_thread(
                            wait_for,
                            lambda h=holder: heartbeats(client)[h].get("draining"),
                            5,
                            "the heartbeat says draining",
                        )
                        # New sessions while it drains, three at once (without the drain the
                        # least busy worker would be the draining one for some): all go to the
                        # other worker, and are answered.
                        answers = await asyncio.gather(
                            *(
                                asyncio.to_thread(
                                    httpx.post,
                                    f"{gateway.url}/v1/segment",
                                    files={"video": ("s.mp4", short.read_bytes())},
                                    data={"model": "masktrack"},
                                    timeout=60,
                                )
                                for _ in range(3)
                            )
                        )
                        during.extend(f"{a.status_code} {a.text[:200]}" for a in answers)
            return results, during

        results, during = asyncio.run(stream())
        assert [r["frame_index"] for r in results] == list(range(len(FRAMES))), (
            "every frame of the stream is answered"
        )
        assert len(during) == 3 and all(a.startswith("200 ") for a in during), during
        holder = workers[ids.index(timings["holder"])]
        holder.wait(timeout=GRACE_S + 10)
        drained = time.monotonic() - timings["sigterm"]
        assert holder.returncode == 0
        assert drained < GRACE_S, f"it left when its session ended, not at the deadline ({drained})"
        print(f"\nworker drained and exited {drained:.1f} s after SIGTERM")
        assert timings["holder"] not in heartbeats(client), "a clean exit leaves no entry"
        assert "state lost" not in (tmp_path / "cluster.log").read_text()
    finally:
        for process in workers:
            if process.poll() is None:
                process.kill()
                process.wait()
        if gateway is not None:
            gateway.stop()
        log.close()


def test_the_embedded_server_given_sigterm_mid_request_completes_it(tmp_path):
    world = WorldConfig(width=320, height=240, frames=40, fps=8, max_objects=3)
    video = tmp_path / "long.mp4"
    write_mp4(video, generate_video(world, 77, 0).frames, world.fps)
    with open(tmp_path / "server.log", "w") as log:
        server = Server(env={"VIDSERVE_DRAIN_GRACE_S": str(GRACE_S), **MASKTRACK_ONLY}, log=log)
        try:
            lines, refused = [], {}
            with (
                httpx.Client(timeout=120) as client,
                client.stream(
                    "POST",
                    f"{server.url}/v1/segment",
                    files={"video": ("v.mp4", video.read_bytes())},
                    data={"score_threshold": "0.05"},
                    headers={"Accept": "application/x-ndjson"},
                ) as response,
            ):
                assert response.status_code == 200
                for line in response.iter_lines():
                    lines.append(json.loads(line))
                    if len(lines) == 1:  # mid-request
                        server.process.send_signal(signal.SIGTERM)
                        sigterm = time.monotonic()
                        wait_for(
                            lambda: httpx.get(f"{server.url}/readyz").status_code == 503,
                            5,
                            "/readyz 503 while draining",
                        )
                        new = httpx.post(
                            f"{server.url}/v1/segment",
                            files={"video": ("v.mp4", video.read_bytes())},
                        )
                        refused = {
                            "status": new.status_code,
                            "retry": new.headers.get("retry-after"),
                            "type": new.headers.get("content-type"),
                        }
            server.process.wait(timeout=GRACE_S + 10)
            stopped = time.monotonic() - sigterm
        finally:
            server.stop()
    frames = [line["frame"]["frame_index"] for line in lines if "frame" in line]
    assert frames == list(range(40)), "the request in flight is answered whole"
    assert "summary" in lines[-1]
    assert refused == {"status": 503, "retry": "1", "type": "application/problem+json"}
    assert server.process.returncode == 0
    assert stopped < GRACE_S
    print(f"\nembedded server drained and exited {stopped:.1f} s after SIGTERM")


@pytest.mark.parametrize("db", [JANITOR_DB], indirect=True)
def test_keys_of_killed_processes_are_deleted_and_a_dead_gateways_session_freed(db, tmp_path):
    url, client = db
    log = open(tmp_path / "cluster.log", "w")  # noqa: SIM115
    ports = [free_port(), free_port()]
    workers = [start_worker(url, log, port) for port in ports]
    gateway = None
    try:
        ids = [worker_id(port, process) for port, process in zip(ports, workers, strict=True)]
        gateway = Server(extra_args=["--redis-url", url], log=log)
        [gateway_id] = [k.decode() for k in client.hkeys(GATEWAYS_HASH)]
        opened = threading.Event()
        release = threading.Event()

        async def hold_a_session():
            async def requests():
                yield config_request()
                yield frame_request(0)
                await asyncio.to_thread(release.wait, 60)  # never closed by the client

            async with grpc.aio.insecure_channel(gateway.grpc_target) as channel:
                call = pb_grpc.VideoSegmentationStub(channel).StreamFrames(requests())
                try:
                    async for _ in call:
                        opened.set()
                except grpc.aio.AioRpcError:
                    pass  # its gateway is killed

        holder_thread = threading.Thread(target=lambda: asyncio.run(hold_a_session()))
        holder_thread.start()
        assert opened.wait(60), "the session answered its first frame"
        wait_for(
            lambda: any(h["sessions"] for h in heartbeats(client).values()), 5, "a session held"
        )
        holder = next(w for w, h in heartbeats(client).items() if h["sessions"])
        victim = next(w for w in ids if w != holder)
        assert client.exists(reply_stream(gateway_id))

        workers[ids.index(victim)].kill()  # kill -9
        workers[ids.index(victim)].wait()
        # A frame a gateway sent to it just before it died.
        client.xadd(inbox_stream(victim), {"meta": json.dumps({"type": "frame"}), "image": b"x"})
        gateway.process.kill()
        gateway.process.wait()
        killed = time.monotonic()
        wait_for(
            lambda: (
                not client.exists(inbox_stream(victim), reply_stream(gateway_id))
                and victim not in heartbeats(client)
                and heartbeats(client)[holder]["sessions"] == 0
            ),
            10,
            "the dead peers' keys deleted and the dead gateway's session freed",
        )
        took = time.monotonic() - killed
        print(f"\nkeys of killed processes gone, session freed {took:.1f} s after kill -9")
        assert not client.exists(gateway_alive_key(gateway_id), alive_key(victim))
        release.set()
        holder_thread.join(timeout=10)
    finally:
        release.set()
        for process in workers:
            if process.poll() is None:
                process.kill()
                process.wait()
        if gateway is not None:
            gateway.stop()
        log.close()
