"""The worker: models on the device, sessions with their state, one scheduler for the device.

It reads messages from a transport (in-process or Redis), keeps each session on the model version
it started with (a newly installed version takes new sessions only; the old one is freed when its
last session ends), expires idle sessions, and answers every frame it takes: exactly one reply per
frame says it was taken (its own result, its error, or a bare TAKEN when its result comes later);
results for earlier frames (a clip model's key frames) may follow at any time; a closing session is
flushed before its END reply. No input reaches the scheduler that could stop it.
"""

import logging
import threading
import time
from dataclasses import dataclass, field

from service import requestid
from service.queue.base import WorkerTransport
from service.queue.messages import (
    CloseSession,
    ErrorCode,
    Frame,
    OpenSession,
    Reply,
    ReplyKind,
)
from service.worker.runner import (
    ActionsOutput,
    FrameOutput,
    ModelInfo,
    ModelRunner,
    OptionError,
    Output,
    WorkItem,
    forward_context,
)
from service.worker.scheduler import Scheduler

log = logging.getLogger(__name__)


@dataclass
class WorkerConfig:
    max_batch_size: int = 8
    max_wait_ms: float = 5.0
    max_sessions: int = 256
    session_idle_s: float = 60.0
    # A model with this many frames taken and unanswered here is "busy": a transport with shared
    # work (Redis' per-model streams) leaves that model's frames to other workers meanwhile.
    max_queued_per_model: int = 16
    device: str = "cpu"  # where the models are: the forwards' autocast and frame copies
    precision: str = "fp32"  # fp32, fp16 (CUDA) or bf16: the forwards' autocast


@dataclass
class Session:
    session_id: str
    runner: ModelRunner
    state: object
    reply_to: str
    last_active: float = field(default_factory=time.monotonic)
    in_flight: int = 0
    closing: bool = False
    # Opened by a stateless frame that arrived on its own (Redis: any worker takes any frame, and
    # no close ever reaches this worker): it ends as soon as its frames are answered and never
    # counts against max_sessions.
    implicit: bool = False
    request_id: str = ""  # the client request's: the session's log lines carry it
    gateway_gone: bool = False  # its gateway died: nobody reads its replies


class Worker:
    def __init__(
        self, transport: WorkerTransport, config: WorkerConfig | None = None, metrics=None
    ):
        self.transport = transport
        self.config = config or WorkerConfig()
        self.metrics = metrics
        self._current: dict[str, ModelRunner] = {}  # model name -> version for new sessions
        self._installed: set[int] = set()  # id() of every runner the scheduler knows
        self._sessions: dict[str, Session] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._draining = threading.Event()
        self.scheduler = Scheduler(
            self.config.max_batch_size,
            self.config.max_wait_ms,
            on_done=self._item_done,
            on_batch=self._observe_batch,
            context=forward_context(self.config.device, self.config.precision),
        )

    # --- models -----------------------------------------------------------------------------
    def install(self, runner: ModelRunner) -> None:
        """Serve `runner` to new sessions of its model; sessions already open keep theirs."""
        with self._lock:
            old = self._current.get(runner.info.name)
            self.scheduler.add_runner(runner)
            self._installed.add(id(runner))
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

    def queue_depth(self, model: str | None = None) -> int:
        """Frames taken and not yet answered: of one model, or of all (the sessions count them)."""
        return sum(n for name, n in self._in_flight_per_model().items() if model in (None, name))

    def _in_flight_per_model(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        with self._lock:
            for session in self._sessions.values():
                name = session.runner.info.name
                counts[name] = counts.get(name, 0) + session.in_flight
        return counts

    def session_count(self) -> int:
        with self._lock:
            return sum(not s.implicit for s in self._sessions.values())

    def busy_models(self) -> frozenset[str]:
        limit = self.config.max_queued_per_model
        return frozenset(n for n, depth in self._in_flight_per_model().items() if depth >= limit)

    def _release_if_unused(self, runner: ModelRunner) -> None:
        in_use = runner is self._current.get(runner.info.name) or any(
            s.runner is runner for s in self._sessions.values()
        )
        if not in_use and id(runner) in self._installed:
            self._installed.discard(id(runner))
            self.scheduler.remove_runner(runner)
            log.info("freed %s version %s", runner.info.name, runner.info.version)

    # --- the loop -----------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until `stop()`; call from the thread that owns this worker."""
        last_sweep = time.monotonic()
        while not self._stop.is_set():
            for message in self.transport.fetch(timeout=0.1, busy=self.busy_models()):
                self.handle(message)
            if time.monotonic() - last_sweep > 1.0:
                self._expire_idle_sessions()
                last_sweep = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        self.scheduler.stop()

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    def drain(self, grace_s: float) -> int:
        """Shut down gracefully (SIGTERM): take no new session (the transport stops advertising
        this worker and refuses an open that still arrives), serve the open sessions until they
        end or `grace_s` runs out, end those still open with an explicit UNAVAILABLE error, then
        stop. Call it from another thread than `run`'s; returns how many sessions were cut."""
        started = time.monotonic()
        self._draining.set()
        with self._lock:
            held = self.session_count()
        log.info("draining: %d sessions open, grace %.0f s", held, grace_s)
        self.transport.set_draining()
        deadline = started + grace_s
        while time.monotonic() < deadline and not self._stop.is_set():
            with self._lock:
                if not self._sessions:
                    break
            time.sleep(0.05)
        with self._lock:
            left = [s for s in self._sessions.values() if not s.implicit]
            for session in left:
                self._finish(
                    session,
                    (
                        ErrorCode.UNAVAILABLE,
                        "the worker shut down: the session was still open when its drain grace "
                        f"period ({grace_s:g} s) ran out; open it again",
                    ),
                )
        log.info(
            "drained in %.1f s (%d sessions cut at the deadline)",
            time.monotonic() - started,
            len(left),
        )
        self.stop()
        return len(left)

    def gateways(self) -> set[str]:
        """The gateways (`reply_to`) of the sessions held here."""
        with self._lock:
            return {s.reply_to for s in self._sessions.values() if s.reply_to and not s.implicit}

    def end_sessions_of(self, gateways: set[str]) -> int:
        """Free the sessions of gateways that died, without a reply (nobody reads it)."""
        with self._lock:
            gone = [s for s in self._sessions.values() if s.reply_to in gateways and not s.implicit]
            for session in gone:
                log.warning(
                    "session %s ended: its gateway %s is gone", session.session_id, session.reply_to
                )
                session.gateway_gone = True
                self._finish(session)
        return len(gone)

    def handle(self, message) -> None:
        with requestid.using(self._request_id_of(message)):
            self._handle(message)

    def _request_id_of(self, message) -> str:
        if isinstance(message, CloseSession):
            session = self._sessions.get(message.session_id)
            return session.request_id if session is not None else ""
        return message.request_id

    def _handle(self, message) -> None:
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
                    kind=ReplyKind.END,
                    error_code=ErrorCode.INTERNAL,
                    error="internal error in the worker",
                ),
                message.reply_to,
            )

    def _open(self, msg: OpenSession) -> None:
        with self._lock:
            error = self._open_session(
                msg.session_id, msg.model, msg.options, msg.reply_to, request_id=msg.request_id
            )
        if error is not None:
            self._reply(
                Reply(
                    msg.session_id,
                    kind=ReplyKind.END,
                    model=msg.model,
                    error_code=error[0],
                    error=error[1],
                ),
                msg.reply_to,
            )

    def _open_session(
        self,
        session_id: str,
        model: str,
        options: dict,
        reply_to: str,
        implicit: bool = False,
        request_id: str = "",
    ) -> tuple[ErrorCode, str] | None:
        runner = self._current.get(model)
        if runner is None:
            return ErrorCode.NOT_FOUND, f"model '{model}' is not served by this worker"
        if session_id in self._sessions:
            return ErrorCode.INVALID_ARGUMENT, f"session {session_id} is already open"
        if not implicit and self._draining.is_set():
            return (
                ErrorCode.UNAVAILABLE,
                "this worker is shutting down and takes no new session; open it again",
            )
        if not implicit and self.session_count() >= self.config.max_sessions:
            return ErrorCode.RESOURCE_EXHAUSTED, "the worker holds its maximum of sessions"
        try:
            state = runner.open_session(dict(options))
        except OptionError as e:
            return ErrorCode.INVALID_ARGUMENT, str(e)
        self._sessions[session_id] = Session(
            session_id, runner, state, reply_to, implicit=implicit, request_id=request_id
        )
        self.scheduler.session_opened(runner)
        if not implicit:  # (an implicit session lives for one frame: no line for each)
            log.info("session %s on %s %s", session_id, runner.info.name, runner.info.version)
        return None

    def _frame(self, msg: Frame) -> None:
        with self._lock:
            session = self._sessions.get(msg.session_id)
            error = None
            if session is None and msg.model:
                # Stateless routing: any worker may get any frame, with the options it carries.
                runner = self._current.get(msg.model)
                if runner is not None and not runner.stateful:
                    error = self._open_session(
                        msg.session_id,
                        msg.model,
                        msg.options,
                        msg.reply_to,
                        implicit=True,
                        request_id=msg.request_id,
                    )
                    session = self._sessions.get(msg.session_id)
            if session is None:
                code, text = error or (
                    ErrorCode.STATE_LOST,
                    "session state lost: this worker does not hold the session (it expired, "
                    "ended, or its worker restarted)",
                )
                self._reply(
                    Reply(msg.session_id, index=msg.index, taken=True, error_code=code, error=text),
                    msg.reply_to,
                )
                self.transport.done(msg)
                return
            if msg.image is None:
                raise ValueError("a frame reached the worker undecoded")
            session.in_flight += 1
            session.last_active = time.monotonic()
            item = WorkItem(
                msg.session_id, msg.index, msg.time, msg.image, session.state, msg.prompt, msg
            )
            self.scheduler.submit(session.runner, item)

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
        log.info("session %s ended%s", session.session_id, f": {error[1]}" if error else "")
        self._forget(session)
        runner = session.runner
        if session.gateway_gone:  # nobody reads its replies: free it, say nothing
            runner.close_session(session.state)
            self._release_if_unused(runner)
            return
        try:
            if error is None:
                for out in runner.flush(session.state):
                    self._reply(self._output_reply(session, out, taken=False), session.reply_to)
        except Exception as e:
            log.exception("flushing session %s failed", session.session_id)
            error = (ErrorCode.INTERNAL, f"flushing the session failed: {e}")
        finally:
            runner.close_session(session.state)
            code, text = error if error else (None, "")
            self._reply(
                Reply(
                    session.session_id,
                    kind=ReplyKind.END,
                    model=runner.info.name,
                    model_version=runner.info.version,
                    stages=runner.info.stage_list(),
                    error_code=code,
                    error=text,
                ),
                session.reply_to,
            )
            self._release_if_unused(runner)

    def _forget(self, session: Session) -> None:
        if self._sessions.pop(session.session_id, None) is not None:
            self.scheduler.session_opened(session.runner, -1)

    def _expire_idle_sessions(self) -> None:
        now = time.monotonic()
        with self._lock:
            idle = [
                s
                for s in self._sessions.values()
                if s.in_flight == 0 and now - s.last_active > self.config.session_idle_s
            ]
            for session in idle:
                with requestid.using(session.request_id):
                    self._expire(session, now)

    def _expire(self, session: Session, now: float) -> None:
        log.info("session %s idle for %.0f s: ended", session.session_id, now - session.last_active)
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
            self._release_if_unused(session.runner)

    # --- results ------------------------------------------------------------------------------
    def _observe_batch(self, forward: str, size: int) -> None:
        if self.metrics is not None:
            self.metrics.batch_size.observe(size)

    def _item_done(
        self, runner: ModelRunner, item: WorkItem, result: list[Output] | Exception
    ) -> None:
        """The scheduler finished a frame: answer it (exactly one reply marks it taken)."""
        with self._lock:
            session = self._sessions.get(item.session_id)
        if session is not None:
            for reply in self._replies_for(session, item, result):
                self._reply(reply, session.reply_to)
        self.transport.done(item.message)
        if session is None:
            return
        with self._lock:
            session.in_flight -= 1
            session.last_active = time.monotonic()
            if session.in_flight == 0:
                if session.closing:
                    self._finish(session)
                elif session.implicit:
                    self._forget(session)
                    runner.close_session(session.state)
                    self._release_if_unused(runner)

    def _replies_for(
        self, session: Session, item: WorkItem, result: list[Output] | Exception
    ) -> list[Reply]:
        if isinstance(result, Exception):
            code = (
                ErrorCode.INVALID_ARGUMENT
                if isinstance(result, OptionError)
                else ErrorCode.INTERNAL
            )
            return [
                self._stamp(
                    Reply(
                        item.session_id,
                        index=item.index,
                        time=item.time,
                        taken=True,
                        error_code=code,
                        error=f"frame {item.index}: {result}",
                    ),
                    session,
                )
            ]
        replies, taken = [], False
        for out in result:
            own = isinstance(out, FrameOutput) and out.index == item.index and not taken
            taken = taken or own
            replies.append(self._output_reply(session, out, taken=own))
        if not taken:
            bare = Reply(item.session_id, index=item.index, kind=ReplyKind.TAKEN, taken=True)
            replies.append(self._stamp(bare, session))
        return replies

    def _output_reply(self, session: Session, out: Output, taken: bool) -> Reply:
        return output_reply(session.session_id, out, session.runner.info, taken)

    @staticmethod
    def _stamp(reply: Reply, session: Session) -> Reply:
        return _stamp(reply, session.runner.info)

    def _reply(self, reply: Reply, reply_to: str) -> None:
        try:
            self.transport.reply(reply, reply_to)
        except Exception:
            log.exception("could not send a reply for session %s", reply.session_id)


def output_reply(session_id: str, out: Output, info: ModelInfo, taken: bool) -> Reply:
    """The reply that carries a runner's output to the gateway."""
    if isinstance(out, ActionsOutput):
        reply = Reply(
            session_id,
            index=out.key_frame,
            kind=ReplyKind.ACTIONS,
            time=out.time,
            tracks=out.tracks,
        )
    else:
        reply = Reply(
            session_id,
            index=out.index,
            kind=ReplyKind.FRAME,
            taken=taken,
            time=out.time,
            objects=out.objects,
            segments=out.segments,
        )
    return _stamp(reply, info)


def _stamp(reply: Reply, info: ModelInfo) -> Reply:
    reply.model, reply.model_version = info.name, info.version
    reply.stages = info.stage_list()
    return reply
