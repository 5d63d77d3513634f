"""One scheduler per device: the batches of all runners on it, one at a time, shared fairly.

Frames wait in one queue per `BatchedForward` (runners that share weights share one queue, so the
sessions of `masktrack`, `masktrack-instance` and a pipeline on the same detector batch together).
A queue is ready when it holds `max_batch_size` frames, when its oldest frame has waited
`max_wait_ms`, or at once when every open session of the queue already has a frame in it (a lone
stream pays no wait). Among ready queues the scheduler runs the one that has used the least device
time (fair queueing on measured seconds: a model whose batches take 500 ms gets the device as
often as one whose batches take 50 ms gets it ten times). A queue that was idle starts level with
the busiest, so idling banks no credit.

A batch runs `forward` once; if it fails, each item's forward runs again alone (the only retry).
Then each item's `step` runs once, in arrival order, and `on_done` gets its outputs or its error.
A session of a runner whose forward reads its state (`one_frame_per_batch`) has at most one frame
in a batch, so frame t+1's forward sees what frame t's step wrote. Forwards and steps run in the
worker's `ForwardContext`: the precision's autocast (VIDSERVE_PRECISION), frames to the device.
"""

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from service import requestid
from service.worker.runner import (
    BatchedForward,
    ForwardContext,
    ModelRunner,
    Output,
    WorkItem,
    run_forward,
)

log = logging.getLogger(__name__)

ItemDone = Callable[[ModelRunner, WorkItem, list[Output] | Exception], None]


@dataclass
class Queued:
    runner: ModelRunner
    item: WorkItem
    arrived: float  # monotonic seconds

    @property
    def one_per_batch(self) -> bool:
        return self.runner.stateful and self.runner.info.one_frame_per_batch


@dataclass
class ForwardQueue:
    """The frames waiting for one BatchedForward, and what it has cost."""

    forward: BatchedForward
    pending: deque[Queued] = field(default_factory=deque)
    runners: int = 0  # installed runners using this forward
    open_sessions: int = 0
    device_seconds: float = 0.0  # virtual time: what its batches have used

    def ready_count(self) -> int:
        """How many queued frames one batch could take now."""
        seen, count = set(), 0
        for queued in self.pending:
            sid = queued.item.session_id
            if queued.one_per_batch and sid in seen:
                continue
            seen.add(sid)
            count += 1
        return count

    def waiting_sessions(self) -> int:
        return len({q.item.session_id for q in self.pending})


class Scheduler:
    def __init__(
        self,
        max_batch_size: int,
        max_wait_ms: float,
        on_done: ItemDone,
        on_batch: Callable[[str, int], None] | None = None,
        name: str = "scheduler",
        context: ForwardContext | None = None,
    ):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.on_done = on_done
        self.on_batch = on_batch or (lambda forward, size: None)
        self.context = context or ForwardContext()  # every forward's precision and device
        self._queues: dict[int, ForwardQueue] = {}  # id(forward) -> its queue
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, daemon=True, name=name)
        self._thread.start()

    # --- what the worker tells it -----------------------------------------------------------------
    def add_runner(self, runner: ModelRunner) -> None:
        with self._cond:
            queue = self._queues.setdefault(id(runner.forward), ForwardQueue(runner.forward))
            queue.runners += 1

    def remove_runner(self, runner: ModelRunner) -> None:
        """The runner serves no one any more (its frames have all been answered)."""
        with self._cond:
            queue = self._queues.get(id(runner.forward))
            if queue is not None:
                queue.runners -= 1
                if queue.runners <= 0 and not queue.pending:
                    del self._queues[id(runner.forward)]

    def session_opened(self, runner: ModelRunner, delta: int = 1) -> None:
        with self._cond:
            queue = self._queues.get(id(runner.forward))
            if queue is not None:
                queue.open_sessions += delta

    def submit(self, runner: ModelRunner, item: WorkItem) -> None:
        with self._cond:
            queue = self._queues[id(runner.forward)]
            if not queue.pending:
                # An idle queue starts level with the least-served busy one: no banked credit.
                busy = [q.device_seconds for q in self._queues.values() if q.pending]
                if busy:
                    queue.device_seconds = max(queue.device_seconds, min(busy))
            queue.pending.append(Queued(runner, item, time.monotonic()))
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=10)

    # --- the loop -----------------------------------------------------------------------------
    def _loop(self) -> None:
        while (taken := self._take_batch()) is not None:
            queue, batch = taken
            self.on_batch(queue.forward.name, len(batch))
            started = time.perf_counter()
            try:
                self._run(queue.forward, batch)
            except Exception:  # a bug in a callback: log it, keep scheduling the others
                log.exception("the scheduler failed on a batch of %s", queue.forward.name)
            finally:
                with self._cond:
                    queue.device_seconds += time.perf_counter() - started

    def _take_batch(self) -> tuple[ForwardQueue, list[Queued]] | None:
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                ready, next_deadline = [], None
                for queue in self._queues.values():
                    if not queue.pending:
                        continue
                    deadline = queue.pending[0].arrived + self.max_wait
                    if self._dispatchable(queue) or deadline <= now:
                        ready.append(queue)
                    elif next_deadline is None or deadline < next_deadline:
                        next_deadline = deadline
                if ready:
                    queue = min(ready, key=lambda q: q.device_seconds)
                    return queue, self._pop_batch(queue)
                self._cond.wait(None if next_deadline is None else next_deadline - now)
            return None

    def _dispatchable(self, queue: ForwardQueue) -> bool:
        """Full, or no open session could add a frame (waiting would only add latency)."""
        if queue.ready_count() >= self.max_batch_size:
            return True
        return queue.waiting_sessions() >= queue.open_sessions

    def _pop_batch(self, queue: ForwardQueue) -> list[Queued]:
        batch, sessions, keep = [], set(), deque()
        while queue.pending:
            queued = queue.pending.popleft()
            sid = queued.item.session_id
            if len(batch) >= self.max_batch_size or (queued.one_per_batch and sid in sessions):
                keep.append(queued)  # stays in order for a later batch
                continue
            batch.append(queued)
            sessions.add(sid)
        queue.pending = keep
        return batch

    def _run(self, forward: BatchedForward, batch: list[Queued]) -> None:
        outputs = self._forward(forward, batch)
        for queued, output in zip(batch, outputs, strict=True):
            # The frame's request id (it came with the frame) on what is logged for it.
            with requestid.using(getattr(queued.item.message, "request_id", "")):
                self._step(queued, output)

    def _step(self, queued: Queued, output) -> None:
        result = output
        if not isinstance(output, Exception):
            try:
                # A step computes too (STCN's readout and decoder): in the forward's precision.
                with self.context.autocast():
                    result = queued.runner.step(queued.item, output)
            except Exception as error:  # the frame's own error; its session is unchanged
                if not isinstance(error, ValueError):
                    log.exception("model %s failed on a frame's step", queued.runner.info.name)
                result = error
        self.on_done(queued.runner, queued.item, result)

    def _forward(self, forward: BatchedForward, batch: list[Queued]) -> list[Any]:
        """The batched pass; when it fails, each item alone (one bad frame costs only itself)."""
        try:
            return self._call(forward, batch)
        except Exception as error:
            if len(batch) == 1:
                log.exception("%s failed on a frame", forward.name)
                return [error]
        log.warning(
            "%s failed on a batch of %d: retrying each frame alone", forward.name, len(batch)
        )
        outputs = []
        for queued in batch:
            try:
                outputs.extend(self._call(forward, [queued]))
            except Exception as error:
                log.exception("%s failed on a frame", forward.name)
                outputs.append(error)
        return outputs

    def _call(self, forward: BatchedForward, batch: list[Queued]) -> list[Any]:
        views = [q.item.viewing(q.runner.forward_view(q.item.state)) for q in batch]
        outputs = run_forward(forward, views, self.context)
        if len(outputs) != len(batch):
            raise RuntimeError(f"{forward.name} answered {len(outputs)} of {len(batch)} items")
        return outputs
