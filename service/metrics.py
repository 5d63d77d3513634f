"""Prometheus metrics of a gateway and the worker it embeds. One registry per service instance,
so that several instances (tests) never share counters."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "vidserve_requests_total",
            "Requests by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.frames = Counter(
            "vidserve_frames_total", "Frames answered, by model", ["model"], registry=r
        )
        self.errors = Counter("vidserve_errors_total", "Errors by code", ["code"], registry=r)
        self.queue_depth = Gauge("vidserve_queue_depth", "Frames waiting for a batch", registry=r)
        self.sessions = Gauge("vidserve_open_sessions", "Sessions open at this gateway", registry=r)
        self.batch_size = Histogram(
            "vidserve_batch_size",
            "Frames per forward pass",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32),
            registry=r,
        )
        self.stage_seconds = Histogram(
            "vidserve_stage_seconds",
            "Seconds per frame in each stage",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
