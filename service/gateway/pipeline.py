"""The gateway's side of a session, shared by REST and gRPC.

`run_session` opens a session, sends frames as the window allows (at most `window` frames of a
session are with the worker at once, so a fast sender is slowed, never dropped), and yields the
results in frame order. Leaving the generator early (client gone, error) closes the session: frames
not yet sent are never sent, and the worker frees the session's state.

`Admission` bounds the work a gateway accepts: each open session reserves its window of frames;
beyond `max_frames_in_flight` a new session is refused with "busy, retry after".
"""

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from service.queue.base import GatewayTransport
from service.queue.messages import ErrorCode, Frame, Reply
from service.schemas import FrameResult


class SessionError(Exception):
    """A session failed: carries the error code that REST and gRPC map to their statuses."""

    def __init__(self, code: ErrorCode, message: str, frame_index: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.frame_index = frame_index


class Busy(Exception):
    """The gateway has no room for another session now."""

    def __init__(self, retry_after_s: int):
        super().__init__(f"busy: retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


@dataclass
class InputFrame:
    index: int
    time: float
    image: np.ndarray
    prompt: dict | None = None


class Reservation:
    def __init__(self, admission: "Admission"):
        self._admission = admission
        self._held = True

    def release(self) -> None:
        """Give the window back; a second call does nothing."""
        if self._held:
            self._held = False
            self._admission.reserved -= self._admission.window


class Admission:
    """Called from the event loop only (no locking needed)."""

    def __init__(self, max_frames_in_flight: int, window: int, retry_after_s: int = 1):
        self.capacity = max_frames_in_flight
        self.window = min(window, max_frames_in_flight)
        self.retry_after_s = retry_after_s
        self.reserved = 0

    def acquire(self) -> Reservation:
        """Reserve a session's window of frames, or raise Busy."""
        if self.reserved + self.window > self.capacity:
            raise Busy(self.retry_after_s)
        self.reserved += self.window
        return Reservation(self)

    @property
    def open_sessions(self) -> int:
        return self.reserved // self.window


async def run_session(
    transport: GatewayTransport,
    model: str,
    options: dict,
    frames: AsyncIterator[InputFrame],
    window: int,
    on_frame_latency=None,
) -> AsyncIterator[FrameResult]:
    """Yield one FrameResult per input frame, in input order; raises SessionError on failure."""
    session = await transport.open(model, options)
    slots = asyncio.Semaphore(window)
    expected: deque[int] = deque()  # indices sent, in order, not yet yielded
    sent_at: dict[int, float] = {}
    sender = asyncio.create_task(
        _send_all(transport, session, frames, slots, model, options, expected, sent_at)
    )
    closed = False
    try:
        # Stateless frames may come back out of order (several workers): yield in input order.
        arrived: dict[int, FrameResult] = {}
        async for reply in _replies(session, sender):
            if reply.error_code is not None:
                closed = reply.closed
                raise SessionError(reply.error_code, reply.error, reply.index)
            if reply.closed:
                closed = True
                break
            slots.release()
            started = sent_at.pop(reply.index, None)
            if on_frame_latency and started is not None:
                on_frame_latency(model, time.monotonic() - started)
            arrived[reply.index] = _frame_result(reply)
            while expected and expected[0] in arrived:
                yield arrived.pop(expected.popleft())
        await sender  # re-raises a decoding error of the input
    finally:
        if not sender.done():
            sender.cancel()
        if not closed:
            await transport.close(session)


async def _send_all(transport, session, frames, slots, model, options, expected, sent_at):
    async for frame in frames:
        await slots.acquire()
        expected.append(frame.index)
        sent_at[frame.index] = time.monotonic()
        await transport.send(
            session,
            Frame(
                session.session_id,
                frame.index,
                frame.time,
                frame.image,
                frame.prompt,
                model=model,
                options=options,
            ),
        )
    await transport.close(session)


async def _replies(session, sender: asyncio.Task) -> AsyncIterator[Reply]:
    """The session's replies; stops waiting if the sender failed (e.g. an undecodable frame)."""
    while True:
        getter = asyncio.ensure_future(session.replies.get())
        done, _ = await asyncio.wait({getter, sender}, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            yield getter.result()
            continue
        getter.cancel()
        if sender.exception() is not None:
            raise sender.exception()
        # Everything is sent; wait for the remaining replies.
        while True:
            yield await session.replies.get()


def _frame_result(reply: Reply) -> FrameResult:
    return FrameResult(
        frame_index=reply.index,
        time=reply.time,
        objects=reply.objects or [],
        model=reply.model,
        model_version=reply.model_version,
    )
