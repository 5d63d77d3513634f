"""The two sides of a queue transport. In-process and Redis Streams implement both.

The gateway side is asyncio (it runs in the gateways' event loop); the worker side is blocking
(it runs in the worker's thread or process).
"""

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from service.queue.messages import Frame, Reply, WorkMessage
from service.worker.runner import ModelInfo


@dataclass
class SessionHandle:
    """A gateway's view of one open session: where its replies arrive."""

    session_id: str
    model: str
    replies: asyncio.Queue = field(default_factory=asyncio.Queue)
    worker_id: str | None = None  # stateful sessions: the worker that holds the state


class WorkerTransport(ABC):
    @abstractmethod
    def fetch(self, timeout: float, busy: frozenset[str] = frozenset()) -> list[WorkMessage]:
        """Messages for this worker, waiting at most `timeout` seconds for the first.

        `busy` names models whose queue at this worker is full: a transport with work shared
        by several workers (Redis' per-model streams) leaves theirs to other workers for now.
        Messages of sessions this worker holds are always read (their windows bound them)."""

    @abstractmethod
    def reply(self, reply: Reply, reply_to: str) -> None:
        """Send a reply to the gateway that waits for it (thread-safe)."""

    def done(self, frame: Frame) -> None:  # noqa: B027 - most transports need no acknowledgement
        """The frame is answered: a transport that redelivers lost work may forget it now."""

    def set_draining(self) -> None:  # noqa: B027 - one worker per transport: nothing to say
        """The worker is shutting down: advertise it for no new session, take no shared work."""


class GatewayTransport(ABC):
    @abstractmethod
    async def open(self, model: str, options: dict) -> SessionHandle:
        """Open a session; raises NoWorker when no worker serves the model."""

    @abstractmethod
    async def send(self, session: SessionHandle, frame: Frame) -> None: ...

    @abstractmethod
    async def close(self, session: SessionHandle) -> None:
        """End the session: the worker answers its remaining frames, then a closing reply."""

    @abstractmethod
    async def models(self) -> list[ModelInfo]:
        """The models the workers behind this transport serve now."""

    async def start(self) -> None:  # noqa: B027
        """Connect (Redis) or nothing (in-process)."""

    async def stop(self) -> None:  # noqa: B027
        """Disconnect."""


class NoWorker(RuntimeError):
    """No worker serves the model asked for (503)."""
