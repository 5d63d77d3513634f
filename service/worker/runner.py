"""What a model family gives the worker: one small interface for every kind of work.

The worker batches frames of many sessions of one model into one `run_batch` call. A runner
declares what its sessions need:

- stateless per frame (instance, panoptic): `stateful = False`; frames may go to any worker and
  one session's frames may share a batch;
- stateful per frame (tracking, VOS memory): `stateful = True`; a session's state lives in one
  worker, and a batch holds at most one frame per session, so frame t+1 sees frame t's state;
- prompted (VOS): frames may carry a prompt (`takes_prompt = True`);
- clip-level (actions): `run_batch` may answer a frame later, when its window is complete, so it
  returns a list of outputs per item, each naming its frame, and `flush` answers the rest when the
  session ends.

`run_batch` returns, for each item in order, the outputs that item completes (usually its own),
or the exception that item raised. It must touch no session's state before its batched forward
pass has succeeded: if the pass fails, the worker retries the items one by one.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np


class OptionError(ValueError):
    """A session option or prompt the model cannot take: the client's fault (400 / 422)."""


@dataclass(frozen=True)
class ModelInfo:
    name: str  # what clients ask for, e.g. "masktrack"
    task: str  # "vis", "vos", "instance", "panoptic", "action"
    version: str
    classes: tuple[str, ...]
    stateful: bool
    takes_prompt: bool = False
    # A stateful model whose forward pass reads no session state (the tracker steps after it)
    # may batch several frames of one session; one that reads it (VOS memory) may not.
    one_frame_per_batch: bool = True


@dataclass
class WorkItem:
    """One frame of one session, as the batcher hands it to the runner."""

    session_id: str
    index: int
    time: float
    image: np.ndarray  # (H, W, 3) uint8 RGB
    state: object  # what open_session returned
    prompt: dict | None = None
    message: object = None  # the queue message it came in, acknowledged once answered


@dataclass
class FrameOutput:
    """The result of one frame: objects in the shared schema's shape (service.schemas)."""

    index: int
    time: float
    objects: list[dict] = field(default_factory=list)


ItemResult = list[FrameOutput] | Exception


class ModelRunner(ABC):
    info: ModelInfo

    @property
    def stateful(self) -> bool:
        return self.info.stateful

    @abstractmethod
    def open_session(self, options: dict) -> object:
        """Validate the session's options (raise OptionError) and return its state."""

    @abstractmethod
    def run_batch(self, items: list[WorkItem]) -> list["ItemResult"]:
        """One forward pass over all items; per item, the outputs it completes or its error."""

    def flush(self, state: object) -> list[FrameOutput]:
        """Outputs still held back when a session ends (clip-level models)."""
        return []

    def close_session(self, state: object) -> None:  # noqa: B027 - optional hook
        """Free what the session holds (most state is freed with the object itself)."""
