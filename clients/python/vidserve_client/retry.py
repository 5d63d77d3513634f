"""The opt-in retry policy: which errors are tried again, and after how long. Client and
AsyncClient ask it the same questions and only sleep differently."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .errors import Busy, Unavailable, VidserveError


@dataclass(frozen=True)
class Retry:
    """Retry a call refused as Busy (after the service's Retry-After) or Unavailable (after an
    exponential backoff: backoff_s, 2 x backoff_s, ... up to max_backoff_s).

    attempts: tries in all, the first included. max_wait_s: the most time spent waiting over all
    the retries of one call; a wait that would go past it is not made and the error is raised.
    on_retry(error, wait_s): called before each wait (for logging).

    Only refusals are retried: a stream is retried while no frame has been sent (the service
    admits a stream before the client sends its first frame), never once frames are out.
    """

    attempts: int = 3
    max_wait_s: float = 30.0
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    on_retry: Callable[[VidserveError, float], None] | None = None

    def __post_init__(self):
        if self.attempts < 1:
            raise ValueError("Retry.attempts counts the first try: at least 1")
        if self.max_wait_s < 0 or self.backoff_s < 0:
            raise ValueError("Retry waits are >= 0 seconds")

    def wait_before_next(self, error: Exception, attempt: int, waited_s: float) -> float | None:
        """Seconds to wait before try `attempt + 1` after `error` ended try `attempt` (1-based),
        `waited_s` having been waited already; None: raise the error."""
        if attempt >= self.attempts:
            return None
        if isinstance(error, Busy):
            wait = error.retry_after if error.retry_after is not None else self.backoff_s
        elif isinstance(error, Unavailable):
            wait = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        else:
            return None
        if waited_s + wait > self.max_wait_s:
            return None
        if self.on_retry is not None:
            self.on_retry(error, wait)
        return wait


NO_RETRY = Retry(attempts=1)
