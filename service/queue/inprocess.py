"""The embedded default: gateway and worker in one process, joined by a thread-safe queue.

The gateways run in the asyncio loop; the worker reads from `fetch` in its own thread and its
replies are handed back to the loop with `call_soon_threadsafe`.
"""

import asyncio
import contextlib
import queue
import threading
import uuid

from service import requestid
from service.queue.base import GatewayTransport, NoWorker, SessionHandle, WorkerTransport
from service.queue.messages import CloseSession, Frame, OpenSession, Reply, WorkMessage
from service.worker.runner import ModelInfo


class InProcessTransport(GatewayTransport, WorkerTransport):
    def __init__(self):
        self._inbox: queue.Queue[WorkMessage] = queue.Queue()
        self._open: dict[str, tuple[asyncio.AbstractEventLoop, SessionHandle]] = {}
        self._lock = threading.Lock()
        self.worker = None  # set by attach(); the source of models()

    def attach(self, worker) -> None:
        self.worker = worker

    # --- gateway side ---------------------------------------------------------------------------
    async def open(self, model: str, options: dict) -> SessionHandle:
        if self.worker is None or self.worker.runner(model) is None:
            raise NoWorker(f"no worker serves model '{model}'")
        handle = SessionHandle(uuid.uuid4().hex, model)
        with self._lock:
            self._open[handle.session_id] = (asyncio.get_running_loop(), handle)
        self._inbox.put(
            OpenSession(handle.session_id, model, dict(options), request_id=requestid.current())
        )
        return handle

    async def send(self, session: SessionHandle, frame: Frame) -> None:
        self._inbox.put(frame)

    async def close(self, session: SessionHandle) -> None:
        self._inbox.put(CloseSession(session.session_id))

    async def models(self) -> list[ModelInfo]:
        return self.worker.models() if self.worker is not None else []

    # --- worker side ----------------------------------------------------------------------------
    def fetch(self, timeout: float, busy: frozenset[str] = frozenset()) -> list[WorkMessage]:
        # One queue, and every frame in it belongs to a session whose window bounds it: `busy`
        # changes nothing here.
        try:
            messages = [self._inbox.get(timeout=timeout)]
        except queue.Empty:
            return []
        while len(messages) < 256:  # take what is already there, without waiting
            try:
                messages.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        return messages

    def reply(self, reply: Reply, reply_to: str) -> None:
        with self._lock:
            entry = self._open.get(reply.session_id)
            if entry is not None and reply.closed:
                del self._open[reply.session_id]
        if entry is None:
            return  # the gateway gave the session up (client gone)
        loop, handle = entry
        # A closed loop means the server is shutting down: nobody waits for the reply.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(handle.replies.put_nowait, reply)
