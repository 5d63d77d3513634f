"""Putting the service together: models from the store into a worker, hot reload, gateways.

`vidserve serve` (embedded default): gateway and worker in one process over the in-process queue.
`vidserve serve --redis-url` runs the gateways only; `vidserve worker --redis-url` runs a worker.
"""

import asyncio
import importlib
import json
import logging
import os
import sys
import threading
from pathlib import Path

from models.checkpoints.manifest import MANIFEST_FILE, WEIGHTS_FILE
from models.checkpoints.store import CheckpointStore
from service.settings import Settings, resolve_device
from service.worker.runners import load_runners
from service.worker.worker import Worker, WorkerConfig

log = logging.getLogger(__name__)


def worker_config(settings: Settings) -> WorkerConfig:
    return WorkerConfig(
        max_batch_size=settings.max_batch_size,
        max_wait_ms=settings.max_wait_ms,
        max_sessions=settings.max_sessions,
        session_idle_s=settings.session_idle_s,
        device=resolve_device(settings.device),
        precision=settings.precision,
    )


def install_plugins(worker: Worker, plugins: str) -> list[str]:
    """Import the plugin modules (they register families and pipelines as they load) and install
    the models they serve themselves; the names installed."""
    installed = []
    for module_name in filter(None, (name.strip() for name in plugins.split(","))):
        module = importlib.import_module(module_name)
        for runner in getattr(module, "runners", list)():
            worker.install(runner)
            installed.append(f"{runner.info.name}:{runner.info.version}")
        log.info("plugin %s loaded", module_name)
    return installed


class ModelHost:
    """Keeps a worker serving the newest version of every model in the store.

    Polls the store (and, with Redis, also wakes on announcements); a new version is loaded
    beside the running one and installed between batches; a broken one (bad files, NaN weights,
    a probe forward pass that is not finite: models.checkpoints.checkpoint) is refused with a log
    line and the old version keeps serving. A refused version is tried again once its files
    change (a version refused while half-written is picked up when complete).
    """

    def __init__(
        self,
        worker: Worker,
        store: Path,
        device: str,
        poll_s: float = 2.0,
        redis_url: str | None = None,
        only: str = "",
    ):
        self.worker = worker
        self.store = CheckpointStore(store)
        # The checkpoint names this host loads (Settings.models); None: every one in the store.
        self.only = {n.strip() for n in only.split(",") if n.strip()} or None
        self.device = resolve_device(device)
        self.poll_s = poll_s
        self.redis_url = redis_url
        self.loaded: dict[tuple[str, str], str] = {}  # (family, name) -> version installed
        # (family, name, version) -> the signature of its files when it was refused
        self.refused: dict[tuple[str, str, str], tuple] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()

    def sync(self) -> list[str]:
        """Install what changed in the store; returns the names of newly installed versions."""
        installed = []
        for (family, name), version in self.store.snapshot().items():
            if self.only is not None and name not in self.only:
                continue
            key = (family, name)
            if self.loaded.get(key) == version:
                continue
            path = self.store.path(family, name, version)
            signature = files_signature(path)
            if self.refused.get((family, name, version)) == signature:
                continue  # refused as it is now: wait for its files to change
            try:
                runners = load_runners(path, name, self.device, self.worker.runner)
            except Exception as e:  # a broken checkpoint must not stop the serving one
                kept = self.loaded.get(key)
                log.error(
                    "refused checkpoint %s: %s; %s",
                    path,
                    e,
                    f"version {kept} keeps serving" if kept else "nothing serves it yet",
                )
                self.refused[(family, name, version)] = signature
                continue
            self.refused.pop((family, name, version), None)
            for runner in runners:
                self.worker.install(runner)
                installed.append(f"{runner.info.name}:{runner.info.version}")
            self.loaded[key] = version
        return installed

    def missing(self) -> list[str]:
        """The names asked for (Settings.models) that the store does not hold (yet)."""
        held = {name for _, name in self.store.snapshot()}
        return sorted((self.only or set()) - held)

    def start(self) -> None:
        threading.Thread(target=self._watch, daemon=True, name="model-host").start()
        if self.redis_url:
            threading.Thread(target=self._listen, daemon=True, name="announcements").start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_s)
            self._wake.clear()
            try:
                self.sync()
            except Exception:
                log.exception("checking the checkpoint store failed")

    def _listen(self) -> None:
        """Wake the watcher when a trainer announces a checkpoint on Redis."""
        import redis

        from models.train.announce import CHECKPOINT_CHANNEL

        while not self._stop.is_set():
            try:
                with redis.Redis.from_url(self.redis_url) as client:
                    pubsub = client.pubsub()
                    pubsub.subscribe(CHECKPOINT_CHANNEL)
                    while not self._stop.is_set():
                        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                        if message:
                            log.info("checkpoint announced: %s", json.loads(message["data"]))
                            self._wake.set()
            except redis.RedisError as e:
                log.warning("announcement channel: %s; retrying", e)
                self._stop.wait(2.0)


def model_host(worker: Worker, settings: Settings) -> ModelHost:
    """The host of the settings' store for this worker; names asked for (VIDSERVE_MODELS) that
    the store lacks are logged: a trainer may publish them later, and the host loads them then."""
    host = ModelHost(
        worker,
        settings.checkpoint_store,
        settings.device,
        settings.reload_poll_s,
        settings.redis_url,
        settings.models,
    )
    missing = host.missing()
    if missing:
        held = sorted({name for _, name in host.store.snapshot()})
        log.warning(
            "not in the store %s: %s (it holds: %s); each loads when it is published",
            settings.checkpoint_store,
            ", ".join(missing),
            ", ".join(held) or "nothing",
        )
    return host


def files_signature(folder: Path) -> tuple:
    """What changes when a checkpoint folder's files are written, replaced or completed: each
    file's size, modification time and inode (None for a file not there)."""
    signature = []
    for name in (MANIFEST_FILE, WEIGHTS_FILE):
        try:
            stat = (folder / name).stat()
        except OSError:
            signature.append(None)
        else:
            signature.append((stat.st_size, stat.st_mtime_ns, stat.st_ino))
    return tuple(signature)


def lower_this_thread(nice: int) -> None:
    """Make the calling thread `nice` steps nicer (Linux: a thread's nice value is its own, and
    threads it starts inherit it). Elsewhere, or at 0, nothing."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    thread = threading.get_native_id()
    current = os.getpriority(os.PRIO_PROCESS, thread)
    os.setpriority(os.PRIO_PROCESS, thread, min(19, current + nice))
    log.info("gateway threads at nice %d", min(19, current + nice))


async def serve_embedded(settings: Settings, ready: threading.Event | None = None) -> None:
    """Gateways and worker in this process; returns when the server is stopped (Ctrl-C)."""
    from service.metrics import Metrics
    from service.queue.inprocess import InProcessTransport

    transport = InProcessTransport()
    metrics = Metrics()  # one registry: the gateway's /metrics shows the worker's batches too
    worker = Worker(transport, worker_config(settings), metrics)
    transport.attach(worker)
    host = model_host(worker, settings)
    loaded = install_plugins(worker, settings.plugins) + host.sync()
    log.info("loaded %s from %s", ", ".join(loaded) or "no model", settings.checkpoint_store)
    threading.Thread(target=worker.run, daemon=True, name="worker").start()
    host.start()
    # After the worker's thread started (it keeps this thread's priority): the threads this one
    # starts from now on (gRPC's, the decode pool's) inherit the lowered one.
    lower_this_thread(settings.gateway_nice)
    try:
        await serve_gateways(settings, transport, worker, ready, metrics)
    finally:
        host.stop()
        worker.stop()


async def serve_redis_gateway(settings: Settings, ready: threading.Event | None = None) -> None:
    """Only the gateways; `vidserve worker` processes behind Redis do the work."""
    from service.queue.redis_streams import RedisGatewayTransport

    await serve_gateways(settings, RedisGatewayTransport(settings.redis_url), None, ready)


def run_redis_worker(settings: Settings, stop: threading.Event | None = None) -> None:
    """A worker serving the store's models to gateways through Redis, until `stop` is set
    (`vidserve worker` sets it on SIGTERM): then it drains (no new session, the open ones served
    until they end or `drain_grace_s` runs out) and returns. Ctrl-C stops at once."""
    from service.queue.redis_streams import RedisWorkerTransport

    transport = RedisWorkerTransport(
        settings.redis_url, max_width=settings.max_width, max_height=settings.max_height
    )
    metrics = None
    if settings.worker_port is not None:
        from service.metrics import Metrics

        metrics = Metrics()
    worker = Worker(transport, worker_config(settings), metrics)
    transport.attach(worker)
    host = model_host(worker, settings)
    loaded = install_plugins(worker, settings.plugins) + host.sync()
    log.info("worker %s loaded %s", transport.worker_id, ", ".join(loaded) or "no model")
    health = None
    if metrics is not None:
        from service.worker.health import WorkerHealthServer

        health = WorkerHealthServer(
            worker, metrics, settings.host, settings.worker_port, transport.worker_id
        )
        health.start()
    transport.start()
    host.start()
    stop = stop or threading.Event()
    threading.Thread(
        target=lambda: (stop.wait(), worker.drain(settings.drain_grace_s)),
        daemon=True,
        name="drain",
    ).start()
    try:
        worker.run()
    finally:
        host.stop()
        transport.stop()
        if health is not None:
            health.stop()


async def serve_gateways(
    settings: Settings, transport, worker=None, ready: threading.Event | None = None, metrics=None
) -> None:
    """REST (uvicorn) and gRPC in this event loop, until uvicorn is told to stop; SIGTERM drains
    first (service.gateway.drain)."""
    import uvicorn

    from service.gateway.context import ServiceContext
    from service.gateway.drain import DrainGate, DrainingServer, drain_gateways
    from service.gateway.grpc_server import set_health, start_grpc_server
    from service.gateway.rest import create_app

    await transport.start()
    ctx = ServiceContext.create(settings, transport, worker, metrics)
    grpc_server = await start_grpc_server(ctx, settings.grpc_port)
    health_task = asyncio.create_task(_keep_health(grpc_server, transport, set_health))
    app = create_app(ctx)
    gate = DrainGate(app, settings.retry_after_s)
    await app.state.jobs.start()  # the job runner (service.gateway.jobs)
    config = uvicorn.Config(
        gate,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        lifespan="off",
        # uvicorn's lines (the access log too) go to the root handlers: with the request id.
        log_config=None,
        **_uvicorn_tls(settings),
    )

    async def drain() -> None:
        health_task.cancel()
        await app.state.jobs.stop()  # running jobs go back to the queue, not waited for
        await drain_gateways(gate, ctx.admission, grpc_server, settings.drain_grace_s)

    server = DrainingServer(config, drain)
    log.info(
        "REST on %s:%d, gRPC on port %d%s",
        settings.host,
        settings.port,
        grpc_server.bound_port,
        " (TLS)" if settings.tls_cert_file else "",
    )
    if ready is not None:
        asyncio.get_running_loop().call_later(0.2, ready.set)
    try:
        await server.serve()
    finally:
        health_task.cancel()
        await app.state.jobs.stop()
        await grpc_server.stop(grace=2)
        await transport.stop()


def _uvicorn_tls(settings: Settings) -> dict:
    """uvicorn's TLS options from the settings (none: plain HTTP); mTLS with a client CA."""
    if not settings.tls_cert_file and not settings.tls_key_file:
        return {}
    if not (settings.tls_cert_file and settings.tls_key_file):
        raise ValueError("TLS needs both VIDSERVE_TLS_CERT_FILE and VIDSERVE_TLS_KEY_FILE")
    options = {
        "ssl_certfile": str(settings.tls_cert_file),
        "ssl_keyfile": str(settings.tls_key_file),
    }
    if settings.tls_client_ca_file:
        import ssl

        options["ssl_ca_certs"] = str(settings.tls_client_ca_file)
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return options


async def _keep_health(grpc_server, transport, set_health) -> None:
    """gRPC health follows readiness: SERVING once a worker has a model."""
    while True:
        await set_health(grpc_server, bool(await transport.models()))
        await asyncio.sleep(1.0)
