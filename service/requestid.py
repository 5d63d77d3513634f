"""Request ids: one per REST request or gRPC call, taken from the client (`X-Request-ID`, gRPC
metadata `x-request-id`) when it is a sane one, made otherwise (uuid4 hex); echoed to the client
and put on every log line written while the request is served (a contextvar, read by a
logging.Filter that adds `request_id` to each record; "-" outside any request).

Threads started with asyncio.to_thread carry the id (they copy the context). Workers get it with
each OpenSession and Frame (`request_id`) and log under it (`using`) while they handle that
session's messages and frames, in the embedded worker and in Redis workers alike."""

import contextlib
import contextvars
import logging
import re
import uuid

HEADER = "x-request-id"  # HTTP header (case-insensitive) and gRPC metadata key
MAX_LENGTH = 128
# Printable ASCII without spaces or quotes: safe in a header, a metadata value and a log line.
_SANE = re.compile(rf"[A-Za-z0-9._:/+=@-]{{1,{MAX_LENGTH}}}")

_current: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def sane(value: str | bytes | None) -> str | None:
    """The client's id if it is bounded and printable, else None."""
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if value and _SANE.fullmatch(value):
        return value
    return None


def new_id() -> str:
    return uuid.uuid4().hex


def bind(value: str | bytes | None) -> str:
    """Make the request's id current in this context (the client's sane one, or a new one)."""
    request_id = sane(value) or new_id()
    _current.set(request_id)
    return request_id


def current() -> str:
    return _current.get()


@contextlib.contextmanager
def using(request_id: str | None):
    """Within the block, log lines carry `request_id` (a worker serving a request's session)."""
    token = _current.set(sane(request_id) or "-")
    try:
        yield
    finally:
        _current.reset(token)


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record (for a format's %(request_id)s)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _current.get()
        return True


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


def install_log_filter() -> None:
    """Put the filter on every handler of the root logger (records of every logger that
    propagates there get their request id)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
            handler.addFilter(RequestIdFilter())
