"""The errors of the client: one class per kind of refusal, the same for REST and gRPC.

REST answers errors as RFC 9457 problem+json (`title`, `detail`, `status`); gRPC as a status code
and details. Both become a VidserveError subclass with the HTTP status (gRPC codes are given the
status REST answers for the same refusal, and keep their name in `grpc_code`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

REQUEST_ID = "x-request-id"


class VidserveError(Exception):
    """A request the service refused or could not answer.

    status: the HTTP status (REST), or the one REST gives the same refusal (gRPC); None when no
    answer came (the connection failed). title, detail: what went wrong. request_id: the
    service's id of the request (its log lines carry it). grpc_code: the gRPC status code name
    ("NOT_FOUND", ...) of a gRPC call, else None.
    """

    def __init__(
        self,
        status: int | None,
        title: str,
        detail: str = "",
        request_id: str | None = None,
        grpc_code: str | None = None,
    ):
        self.status, self.title, self.detail = status, title, detail
        self.request_id, self.grpc_code = request_id, grpc_code
        super().__init__(self._message())

    def _message(self) -> str:
        where = self.grpc_code or self.status or "no answer"
        text = f"{self.title}: {self.detail}" if self.detail else self.title
        return f"{text} ({where}{f', request {self.request_id}' if self.request_id else ''})"


class NotFound(VidserveError):
    """404 / NOT_FOUND: an unknown model (or job)."""


class BadInput(VidserveError):
    """400, 406, 413, 415, 422 / INVALID_ARGUMENT: the request cannot be served as sent."""


class Unauthenticated(VidserveError):
    """401 / UNAUTHENTICATED: no valid API key."""


class Busy(VidserveError):
    """429 / RESOURCE_EXHAUSTED: the service is at capacity; come back after `retry_after`
    seconds (None when the service did not say)."""

    def __init__(self, *args, retry_after: float | None = None, **kwargs):
        self.retry_after = retry_after
        super().__init__(*args, **kwargs)


class Unavailable(VidserveError):
    """503 / UNAVAILABLE: no worker serves the model, the session's worker died, the service is
    stopping, or it could not be reached."""


_BY_STATUS: dict[int, type[VidserveError]] = {
    400: BadInput,
    401: Unauthenticated,
    404: NotFound,
    406: BadInput,
    413: BadInput,
    415: BadInput,
    422: BadInput,
    429: Busy,
    503: Unavailable,
}

# gRPC status code name -> the HTTP status REST answers for the same refusal.
GRPC_STATUS = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
    "UNIMPLEMENTED": 501,
}


def error_for(
    status: int | None,
    title: str,
    detail: str = "",
    request_id: str | None = None,
    retry_after: float | None = None,
    grpc_code: str | None = None,
) -> VidserveError:
    """The VidserveError subclass of a status."""
    cls = _BY_STATUS.get(status, VidserveError) if status is not None else VidserveError
    kwargs = {"retry_after": retry_after} if cls is Busy else {}
    return cls(status, title, detail, request_id, grpc_code, **kwargs)


def from_problem(problem: Mapping, request_id: str | None = None) -> VidserveError:
    """The error of a problem+json body (also a failed job's `error`)."""
    status = problem.get("status")
    return error_for(
        int(status) if status is not None else None,
        str(problem.get("title") or "Error"),
        str(problem.get("detail") or ""),
        request_id,
        retry_after=_seconds(problem.get("retry_after")),
    )


def from_http(
    status: int, headers: Mapping[str, str], body: bytes, reason: str = ""
) -> VidserveError:
    """The error of an HTTP answer of status >= 400: its problem+json when it has one (RFC 9457),
    else the reason phrase and the body's text."""
    request_id = headers.get(REQUEST_ID)
    retry_after = _seconds(headers.get("retry-after"))
    problem = _json_object(body)
    if problem is not None and ("title" in problem or "detail" in problem):
        title = str(problem.get("title") or reason or "Error")
        detail = str(problem.get("detail") or "")
    else:
        title, detail = reason or f"HTTP {status}", body.decode("utf-8", "replace")[:500].strip()
    return error_for(status, title, detail, request_id, retry_after)


def from_grpc(error) -> VidserveError:
    """The error of a failed gRPC call (grpc.RpcError, grpc.aio.AioRpcError, or a finished
    synchronous call)."""
    return grpc_error(error.code(), error.details(), error.trailing_metadata())


def grpc_error(code, details: str | None, trailing_metadata) -> VidserveError:
    """The error of a gRPC status: its code (grpc.StatusCode), details and trailing metadata."""
    name = code.name if code is not None else "UNKNOWN"
    trailing = {key.lower(): value for key, value in (trailing_metadata or ())}
    return error_for(
        GRPC_STATUS.get(name, 500),
        name,
        details or "",
        trailing.get(REQUEST_ID),
        retry_after=_seconds(trailing.get("retry-after")),
        grpc_code=name,
    )


def connection_failed(error: Exception, where: str) -> Unavailable:
    """No answer at all: the service could not be reached (retried as Unavailable)."""
    return Unavailable(None, "Cannot connect", f"{where}: {error}")


def _seconds(value) -> float | None:
    """Retry-After as seconds (the service sends delta-seconds; an HTTP date is not used)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except (TypeError, ValueError):
        return None


def _json_object(body: bytes) -> dict | None:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None
