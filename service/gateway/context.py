"""What the REST and gRPC gateways of one service share."""

from dataclasses import dataclass

from service.gateway.pipeline import Admission
from service.metrics import Metrics
from service.queue.base import GatewayTransport
from service.settings import Settings


@dataclass
class ServiceContext:
    settings: Settings
    transport: GatewayTransport
    metrics: Metrics
    admission: Admission
    worker: object = None  # the embedded worker, when there is one (queue depth for metrics)

    @classmethod
    def create(
        cls,
        settings: Settings,
        transport: GatewayTransport,
        worker=None,
        metrics: Metrics | None = None,
    ):
        admission = Admission(
            settings.max_frames_in_flight, settings.session_window, settings.retry_after_s
        )
        return cls(settings, transport, metrics or Metrics(), admission, worker)

    def observe_frame(self, model: str, seconds: float) -> None:
        """A frame answered, and its time from send to result: queue wait plus inference."""
        self.metrics.frames.labels(model).inc()
        self.metrics.stage_seconds.labels("queue_and_inference").observe(seconds)

    def refresh_gauges(self) -> None:
        self.metrics.sessions.set(self.admission.open_sessions)
        if self.worker is not None:
            self.metrics.queue_depth.set(self.worker.queue_depth())
