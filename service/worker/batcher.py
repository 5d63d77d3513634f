"""Dynamic batching for one loaded model version.

Frames of all sessions of the model wait in one queue. A batch leaves when it holds
`max_batch_size` frames, when its oldest frame has waited `max_wait_ms`, or at once when every
open session already has a frame in it (no one else could add one: a lone stream pays no wait).
Frames keep their arrival order; for a model whose forward pass reads session state
(`one_frame_per_batch`) a batch takes at most one frame per session, so that frame t+1 sees the
state frame t left.
"""

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from service.worker.runner import ItemResult, ModelRunner, WorkItem

log = logging.getLogger(__name__)


@dataclass
class Pending:
    item: WorkItem
    arrived: float  # monotonic seconds


BatchDone = Callable[[list[WorkItem], list[ItemResult]], None]


class Batcher:
    def __init__(
        self,
        runner: ModelRunner,
        max_batch_size: int,
        max_wait_ms: float,
        on_done: BatchDone,
        on_batch: Callable[[int], None] | None = None,
    ):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.runner = runner
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.on_done = on_done
        self.on_batch = on_batch or (lambda size: None)
        self._pending: deque[Pending] = deque()
        # Sessions of this model version, kept by the worker (a plain int: read without locks).
        self.open_sessions = 0
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(
            target=self._loop, daemon=True, name=f"batcher-{runner.info.name}-{runner.info.version}"
        )
        self._thread.start()

    def submit(self, item: WorkItem) -> None:
        with self._cond:
            self._pending.append(Pending(item, time.monotonic()))
            self._cond.notify()

    def queue_depth(self) -> int:
        with self._cond:
            return len(self._pending)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=10)

    @property
    def _one_per_session(self) -> bool:
        return self.runner.stateful and self.runner.info.one_frame_per_batch

    def _could_grow(self) -> bool:
        """Worth waiting for more frames: the batch is not full and some open session has no
        frame queued yet (when every session already has one, waiting only adds latency)."""
        if self._ready_count() >= self.max_batch_size:
            return False
        waiting_sessions = len({p.item.session_id for p in self._pending})
        return waiting_sessions < self.open_sessions

    def _ready_count(self) -> int:
        """How many queued frames one batch could take now."""
        if not self._one_per_session:
            return len(self._pending)
        return len({p.item.session_id for p in self._pending})

    def _take_batch(self) -> list[WorkItem] | None:
        with self._cond:
            while not self._pending and not self._stopped:
                self._cond.wait()
            if self._stopped:
                return None
            deadline = self._pending[0].arrived + self.max_wait
            while self._could_grow() and not self._stopped:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch, sessions, keep = [], set(), deque()
            while self._pending:
                pending = self._pending.popleft()
                sid = pending.item.session_id
                full = len(batch) >= self.max_batch_size
                if full or (self._one_per_session and sid in sessions):
                    keep.append(pending)  # stays in order for a later batch
                    continue
                batch.append(pending.item)
                sessions.add(sid)
            self._pending = keep
            return batch

    def _loop(self) -> None:
        while (batch := self._take_batch()) is not None:
            self.on_batch(len(batch))
            self._run(batch)

    def _run(self, batch: list[WorkItem]) -> None:
        try:
            results = self.runner.run_batch(batch)
        except Exception as error:
            if len(batch) == 1:
                log.exception("model %s failed on a frame", self.runner.info.name)
                self.on_done(batch, [error])
                return
            # One bad frame must not cost the others their results: run them one by one.
            for item in batch:
                self._run([item])
            return
        self.on_done(batch, results)
