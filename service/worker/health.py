"""A worker's own HTTP port (`VIDSERVE_WORKER_PORT`): liveness, readiness and metrics, so that
Docker healthchecks, Kubernetes probes and Prometheus can watch a worker that has no gateway.

    GET /healthz   200 while the process answers
    GET /readyz    200 once a model is loaded, else 503 (problem+json, as the gateway's); 503
                   while draining
    GET /metrics   Prometheus text: this worker's batch sizes, queue depth and sessions held
"""

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from service.metrics import Metrics

log = logging.getLogger(__name__)


class WorkerHealthServer:
    """Serves the three endpoints from a daemon thread; `port` 0 picks a free port."""

    def __init__(self, worker, metrics: Metrics, host: str, port: int, worker_id: str = ""):
        self.worker = worker
        self.metrics = metrics
        self.worker_id = worker_id
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]

    def start(self) -> None:
        threading.Thread(target=self._server.serve_forever, daemon=True, name="health").start()
        log.info("worker health and metrics on port %d", self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, path: str) -> tuple[int, str, bytes]:
        if path == "/healthz":
            return 200, "application/json", _json({"status": "ok", "worker": self.worker_id})
        if path == "/readyz":
            models = self.worker.models()
            draining = getattr(self.worker, "draining", False)
            if not models or draining:
                body = {
                    "type": "about:blank",
                    "title": "Not ready",
                    "status": 503,
                    "detail": "shutting down (draining)" if draining else "no model loaded yet",
                }
                return 503, "application/problem+json", _json(body)
            body = {"status": "ready", "worker": self.worker_id, "models": _versions(models)}
            return 200, "application/json", _json(body)
        if path == "/metrics":
            self.metrics.queue_depth.set(self.worker.queue_depth())
            self.metrics.sessions.set(self.worker.session_count())
            return 200, "text/plain; version=0.0.4", self.metrics.render()
        return 404, "application/json", _json({"status": 404, "detail": f"no {path} here"})

    def _handler(self):
        answer = self._answer

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                status, media_type, body = answer(self.path.split("?", 1)[0])
                self.send_response(status)
                self.send_header("Content-Type", media_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # probes every few seconds: keep the log quiet
                pass

        return Handler


def _versions(models) -> dict[str, str]:
    return {m.name: m.version for m in models}


def _json(data) -> bytes:
    return json.dumps(data).encode()
