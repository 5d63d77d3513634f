"""Graceful drain of the gateways on SIGTERM: stop admitting, finish what is in flight, stop.

uvicorn on its own stops listening at SIGTERM (a new client gets "connection refused", and a
load balancer learns nothing) and re-raises the signal once it is done, so the process dies by
it. Here SIGTERM instead:

1. marks the service draining: every new HTTP request but /healthz and /metrics answers
   503 problem+json with `Retry-After` (so `/readyz` answers 503 and load balancers stop
   sending), and the gRPC server stops taking new calls (UNAVAILABLE; its health service goes
   with it) while its open calls go on;
2. waits until the HTTP requests and the gRPC sessions in flight are done, or the grace period
   (`VIDSERVE_DRAIN_GRACE_S`) runs out;
3. then lets uvicorn stop, and the process exits 0. Ctrl-C (SIGINT) stops at once, as before.
"""

import asyncio
import json
import logging
import signal
import time

import uvicorn

log = logging.getLogger(__name__)

OPEN_WHILE_DRAINING = ("/healthz", "/metrics")


class DrainGate:
    """ASGI wrapper of the REST app: counts the HTTP requests in flight and, while draining,
    refuses new ones with 503 and `Retry-After`."""

    def __init__(self, app, retry_after_s: int = 1):
        self.app = app
        self.retry_after_s = retry_after_s
        self.draining = False
        self.in_flight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.draining and scope.get("path") not in OPEN_WHILE_DRAINING:
            return await self._refuse(send)
        self.in_flight += 1
        try:
            return await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _refuse(self, send) -> None:
        body = json.dumps(
            {
                "type": "about:blank",
                "title": "Shutting down",
                "status": 503,
                "detail": "this server is shutting down; retry after "
                f"{self.retry_after_s} s (another instance will answer)",
            }
        ).encode()
        headers = [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(self.retry_after_s).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def drain_gateways(gate: DrainGate, admission, grpc_server, grace_s: float) -> float:
    """Stop admitting on both ports and wait for what is in flight (HTTP requests, gRPC
    sessions), at most `grace_s`; returns the seconds it took."""
    started = time.monotonic()
    gate.draining = True
    # New gRPC calls are refused at once; open ones have the grace period to finish.
    grpc_stopped = asyncio.create_task(grpc_server.stop(grace_s))
    log.info(
        "draining: %d HTTP requests and %d sessions in flight, grace %g s",
        gate.in_flight,
        admission.open_sessions,
        grace_s,
    )
    deadline = started + grace_s
    while (gate.in_flight or admission.reserved) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if gate.in_flight or admission.reserved:
        log.warning(
            "drain grace of %g s ran out: %d HTTP requests, %d sessions cut",
            grace_s,
            gate.in_flight,
            admission.open_sessions,
        )
    await grpc_stopped
    took = time.monotonic() - started
    log.info("drained in %.1f s", took)
    return took


class DrainingServer(uvicorn.Server):
    """uvicorn's server whose SIGTERM runs `on_drain` (a coroutine function) before stopping, and
    does not re-raise the signal afterwards: the process exits 0."""

    def __init__(self, config: uvicorn.Config, on_drain):
        super().__init__(config)
        self._on_drain = on_drain
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame) -> None:
        if sig == signal.SIGTERM and self._loop is not None and not self.should_exit:
            if self._drain_task is None:  # a second SIGTERM changes nothing
                self._loop.call_soon_threadsafe(self._start_drain)
            return
        super().handle_exit(sig, frame)

    def _start_drain(self) -> None:
        if self._drain_task is None:
            self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        try:
            await self._on_drain()
        except Exception:
            log.exception("draining failed: stopping")
        finally:
            # What is still open after the grace period is cut without waiting.
            self.config.timeout_graceful_shutdown = 1
            self.should_exit = True
