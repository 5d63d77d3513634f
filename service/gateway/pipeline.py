"""The gateway's side of a session, shared by REST and gRPC.

`run_session` opens a session, sends frames as the window allows (at most `window` frames of a
session are with the worker and not yet taken into the session, so a fast sender is slowed, never
dropped), and yields the session's events: frame results in frame order, late results (a key
frame's actions) as they come, every one of them before the session ends. Leaving the generator
early (client gone, error) closes the session: frames not yet sent are never sent, and the worker
frees the session's state.

`Admission` bounds the work a gateway accepts: each open session reserves its window of frames;
beyond `max_frames_in_flight` a new session is refused with "busy, retry after".
"""

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from service import requestid
from service.queue.base import GatewayTransport
from service.queue.messages import ErrorCode, Frame, Reply, ReplyKind
from service.schemas import ActionsResult, Event, FrameResult, Stage

log = logging.getLogger(__name__)


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
    image: np.ndarray | None  # decoded RGB; None when the worker's side decodes `encoded`
    prompt: dict | None = None
    encoded: bytes | None = None  # the client's JPEG/PNG as sent (gRPC frames)


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
) -> AsyncIterator[Event]:
    """Yield the session's events until the worker's END: each frame's result (in input order
    when results overtake each other), and late ones (a key frame's actions, a clip model's
    frames) as they come; raises SessionError on failure."""
    session = await transport.open(model, options)
    # This line carries the request id (service.requestid): it ties the worker's lines, which
    # name the session, to the request.
    log.info("session %s opened: model %s", session.session_id, model)
    slots = asyncio.Semaphore(window)
    order = InputOrder()
    sent_at: dict[int, float] = {}
    sender = asyncio.create_task(
        _send_all(transport, session, frames, slots, model, options, order, sent_at)
    )
    closed = False
    try:
        async for reply in _replies(session, sender):
            if reply.error_code is not None:
                closed = reply.closed
                raise SessionError(reply.error_code, reply.error, reply.index)
            if reply.closed:
                closed = True
                break
            if reply.taken:
                # The worker has the frame in the session: the window may take another, whether
                # or not the frame's own result has come (a clip model answers it later).
                slots.release()
                started = sent_at.pop(reply.index, None)
                if on_frame_latency and started is not None:
                    on_frame_latency(model, time.monotonic() - started)
            for event in order.accept(reply):
                yield event
        for event in order.drain():
            yield event
        await sender  # re-raises a decoding error of the input
    finally:
        if not sender.done():
            sender.cancel()
        if not closed:
            await transport.close(session)


class InputOrder:
    """Puts frame results back in the order the frames were sent.

    Every frame gets exactly one `taken` reply (its result, or a bare TAKEN when its result
    comes later or never). A frame's result waits only for the taken replies of the frames sent
    before it (stateless frames on several workers overtake each other); other replies (actions,
    late frames) pass at once. Nothing is dropped: `drain` gives what is still held at the end."""

    def __init__(self):
        self.sent: deque[int] = deque()
        self.taken: dict[int, deque[Event | None]] = {}

    def sent_frame(self, index: int) -> None:
        self.sent.append(index)

    def accept(self, reply: Reply) -> list[Event]:
        event = reply_event(reply)
        if not reply.taken:
            return [event] if event is not None else []
        self.taken.setdefault(reply.index, deque()).append(event)
        ready = []
        while self.sent and self.taken.get(self.sent[0]):
            index = self.sent.popleft()
            held = self.taken[index].popleft()
            if not self.taken[index]:
                del self.taken[index]
            if held is not None:
                ready.append(held)
        return ready

    def drain(self) -> list[Event]:
        held = [e for events in self.taken.values() for e in events if e is not None]
        self.taken.clear()
        self.sent.clear()
        return held


async def _send_all(transport, session, frames, slots, model, options, order, sent_at):
    async for frame in frames:
        await slots.acquire()
        order.sent_frame(frame.index)
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
                encoded=frame.encoded,
                request_id=requestid.current(),
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


def reply_event(reply: Reply) -> Event | None:
    """The event a worker's reply carries (None for a bare TAKEN)."""
    stages = [Stage(name=name, version=version) for name, version in reply.stages]
    if reply.kind == ReplyKind.FRAME:
        return FrameResult(
            frame_index=reply.index,
            time=reply.time,
            objects=reply.objects or [],
            segments=reply.segments or [],
            model=reply.model,
            model_version=reply.model_version,
            stages=stages,
        )
    if reply.kind == ReplyKind.ACTIONS:
        return ActionsResult(
            key_frame=reply.index,
            time=reply.time,
            tracks=reply.tracks or [],
            model=reply.model,
            model_version=reply.model_version,
            stages=stages,
        )
    return None
