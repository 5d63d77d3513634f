"""The worker: models on the device, sessions with their state, one batcher per model version.

It reads messages from a transport (in-process or Redis), keeps each session on the model version
it started with (a newly installed version takes new sessions only; the old one is freed when its
last session ends), expires idle sessions, and answers every frame: with its result, or with an
error that names the frame. No input reaches the batcher that could stop it.
"""

import logging
import threading
import time
from dataclasses import dataclass, field

from service.queue.base import WorkerTransport
from service.queue.messages import CloseSession, ErrorCode, Frame, OpenSession, Reply
from service.worker.batcher import Batcher
from service.worker.runner import ItemResult, ModelInfo, ModelRunner, OptionError, WorkItem

log = logging.getLogger(__name__)


@dataclass
class WorkerConfig:
    max_batch_size: int = 8
    max_wait_ms: float = 5.0
    max_sessions: int = 256
    session_idle_s: float = 60.0


@dataclass
class Session:
    session_id: str
    runner: ModelRunner
    state: object
    reply_to: str
    last_active: float = field(default_factory=time.monotonic)
    in_flight: int = 0
    closing: bool = False


class Worker:
    def __init__(
        self, transport: WorkerTransport, config: WorkerConfig | None = None, metrics=None
    ):
        self.transport = transport
        self.config = config or WorkerConfig()
        self.metrics = metrics
        self._current: dict[str, ModelRunner] = {}  # model name -> version for new sessions
        self._batchers: dict[int, Batcher] = {}  # id(runner) -> its batcher
        self._sessions: dict[str, Session] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()

    # --- models -----------------------------------------------------------------------------
    def install(self, runner: ModelRunner) -> None:
        """Serve `runner` to new sessions of its model; sessions already open keep theirs."""
        with self._lock:
            old = self._current.get(runner.info.name)
            self._batchers[id(runner)] = Batcher(
                runner,
                self.config.max_batch_size,
                self.config.max_wait_ms,
                on_done=self._batch_done,
                on_batch=self._observe_batch,
            )
            self._current[runner.info.name] = runner
            log.info("serving %s version %s", runner.info.name, runner.info.version)
            if old is not None:
                self._release_if_unused(old)

    def models(self) -> list[ModelInfo]:
        with self._lock:
            return [r.info for r in self._current.values()]

    def runner(self, name: str) -> ModelRunner | None:
        with self._lock:
            return self._current.get(name)

    def queue_depth(self) -> int:
        with self._lock:
            return sum(b.queue_depth() for b in self._batchers.values())

    def session_count(self) -> int:
        with self._lock:
            return len(self._sessions)

    def _release_if_unused(self, runner: ModelRunner) -> None:
        in_use = runner is self._current.get(runner.info.name) or any(
            s.runner is runner for s in self._sessions.values()
        )
        if not in_use and id(runner) in self._batchers:
            self._batchers.pop(id(runner)).stop()
            log.info("freed %s version %s", runner.info.name, runner.info.version)

    # --- the loop -----------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until `stop()`; call from the thread that owns this worker."""
        last_sweep = time.monotonic()
        while not self._stop.is_set():
            if self.queue_depth() >= 2 * self.config.max_batch_size:
                # Enough work queued here: leave the shared streams' frames to idle workers.
                self._stop.wait(0.002)
                continue
            for message in self.transport.fetch(timeout=0.1):
                self.handle(message)
            if time.monotonic() - last_sweep > 1.0:
                self._expire_idle_sessions()
                last_sweep = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            for batcher in self._batchers.values():
                batcher.stop()

    def handle(self, message) -> None:
        try:
            if isinstance(message, OpenSession):
                self._open(message)
            elif isinstance(message, Frame):
                self._frame(message)
            elif isinstance(message, CloseSession):
                self._close(message)
        except Exception:  # a bug must cost one session, never the worker
            log.exception("worker failed on %s", type(message).__name__)
            self._reply(
                Reply(
                    message.session_id,
                    error_code=ErrorCode.INTERNAL,
                    error="internal error in the worker",
                    closed=True,
                ),
                message.reply_to,
            )

    def _open(self, msg: OpenSession) -> None:
        with self._lock:
            error = self._open_session(msg.session_id, msg.model, msg.options, msg.reply_to)
        if error is not None:
            self._reply(
                Reply(
                    msg.session_id,
                    model=msg.model,
                    error_code=error[0],
                    error=error[1],
                    closed=True,
                ),
                msg.reply_to,
            )

    def _open_session(
        self, session_id: str, model: str, options: dict, reply_to: str
    ) -> tuple[ErrorCode, str] | None:
        runner = self._current.get(model)
        if runner is None:
            return ErrorCode.NOT_FOUND, f"model '{model}' is not served by this worker"
        if session_id in self._sessions:
            return ErrorCode.INVALID_ARGUMENT, f"session {session_id} is already open"
        if len(self._sessions) >= self.config.max_sessions:
            return ErrorCode.RESOURCE_EXHAUSTED, "the worker holds its maximum of sessions"
        try:
            state = runner.open_session(dict(options))
        except OptionError as e:
            return ErrorCode.INVALID_ARGUMENT, str(e)
        self._sessions[session_id] = Session(session_id, runner, state, reply_to)
        self._batchers[id(runner)].open_sessions += 1
        return None

    def _frame(self, msg: Frame) -> None:
        with self._lock:
            session = self._sessions.get(msg.session_id)
            if session is None and msg.model:
                # Stateless routing: any worker may get any frame, with the options it carries.
                runner = self._current.get(msg.model)
                if runner is not None and not runner.stateful:
                    self._open_session(msg.session_id, msg.model, msg.options, msg.reply_to)
                    session = self._sessions.get(msg.session_id)
            if session is None:
                self._reply(
                    Reply(
                        msg.session_id,
                        index=msg.index,
                        error_code=ErrorCode.STATE_LOST,
                        error="session state lost: this worker does not hold the "
                        "session (it expired, ended, or its worker restarted)",
                    ),
                    msg.reply_to,
                )
                self.transport.done(msg)
                return
            session.in_flight += 1
            session.last_active = time.monotonic()
            item = WorkItem(
                msg.session_id,
                msg.index,
                msg.time,
                msg.image,
                session.state,
                msg.prompt,
                message=msg,
            )
            self._batchers[id(session.runner)].submit(item)

    def _close(self, msg: CloseSession) -> None:
        with self._lock:
            session = self._sessions.get(msg.session_id)
            if session is None:
                return
            session.closing = True
            if session.in_flight == 0:
                self._finish(session)

    def _finish(self, session: Session, error: tuple[ErrorCode, str] | None = None) -> None:
        """End a session: flush held-back outputs, free its state, send its last reply."""
        self._forget(session)
        runner = session.runner
        try:
            for out in runner.flush(session.state):
                self._reply(self._result_reply(session, out), session.reply_to)
        finally:
            runner.close_session(session.state)
            code, text = error if error else (None, "")
            self._reply(
                Reply(
                    session.session_id,
                    model=runner.info.name,
                    model_version=runner.info.version,
                    error_code=code,
                    error=text,
                    closed=True,
                ),
                session.reply_to,
            )
            self._release_if_unused(runner)

    def _forget(self, session: Session) -> None:
        if self._sessions.pop(session.session_id, None) is not None:
            batcher = self._batchers.get(id(session.runner))
            if batcher is not None:
                batcher.open_sessions -= 1

    def _expire_idle_sessions(self) -> None:
        now = time.monotonic()
        with self._lock:
            idle = [
                s
                for s in self._sessions.values()
                if s.in_flight == 0 and now - s.last_active > self.config.session_idle_s
            ]
            for session in idle:
                log.info(
                    "session %s idle for %.0f s: ended",
                    session.session_id,
                    now - session.last_active,
                )
                if session.runner.stateful:
                    self._finish(
                        session,
                        (
                            ErrorCode.STATE_LOST,
                            f"session expired after {self.config.session_idle_s:.0f} s idle",
                        ),
                    )
                else:
                    self._forget(session)
                    session.runner.close_session(session.state)

    # --- results ------------------------------------------------------------------------------
    def _observe_batch(self, size: int) -> None:
        if self.metrics is not None:
            self.metrics.batch_size.observe(size)

    def _batch_done(self, items: list[WorkItem], results: list[ItemResult]) -> None:
        for item, result in zip(items, results, strict=True):
            with self._lock:
                session = self._sessions.get(item.session_id)
            if session is None:
                continue
            if isinstance(result, Exception):
                reply = Reply(
                    item.session_id,
                    index=item.index,
                    time=item.time,
                    model=session.runner.info.name,
                    model_version=session.runner.info.version,
                    error_code=ErrorCode.INVALID_ARGUMENT
                    if isinstance(result, OptionError)
                    else ErrorCode.INTERNAL,
                    error=f"frame {item.index}: {result}",
                )
                self._reply(reply, session.reply_to)
            else:
                for out in result:
                    self._reply(self._result_reply(session, out), session.reply_to)
            self.transport.done(item.message)
            with self._lock:
                session.in_flight -= 1
                session.last_active = time.monotonic()
                if session.closing and session.in_flight == 0:
                    self._finish(session)

    def _result_reply(self, session: Session, out) -> Reply:
        info = session.runner.info
        return Reply(
            session.session_id,
            index=out.index,
            time=out.time,
            objects=out.objects,
            model=info.name,
            model_version=info.version,
        )

    def _reply(self, reply: Reply, reply_to: str) -> None:
        try:
            self.transport.reply(reply, reply_to)
        except Exception:
            log.exception("could not send a reply for session %s", reply.session_id)
