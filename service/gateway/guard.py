"""What every REST request passes before FastAPI reads its body (a pure ASGI middleware, the
outermost one): its request id, the API key, the declared body size and the body's pace.

- `X-Request-ID`: the client's (a sane one) or a new one; current for the request's log lines and
  echoed in the response headers, errors included.
- API keys (`VIDSERVE_API_KEYS`): every /v1 path needs `Authorization: Bearer <key>` or
  `X-API-Key: <key>` (compared in constant time); 401 problem+json with `WWW-Authenticate`
  otherwise. /healthz, /readyz, /metrics stay open for probes and scrapers, and so do /docs,
  /redoc and /openapi.json (they describe the API, they run nothing) and the web page (`/`,
  `/static/...`: its own calls to /v1 carry the key typed into it).
- Body size: a `Content-Length` over `VIDSERVE_MAX_UPLOAD_BYTES` plus the multipart overhead is
  answered 413 at once, before a byte of the body is read; a body without a length (chunked) is
  counted as it arrives and refused the same way once over.
- Body pace: the next chunk must come within `VIDSERVE_BODY_TIMEOUT_S`, the whole body within
  `VIDSERVE_BODY_DEADLINE_S`; a slower client gets 408 and its connection is closed.
"""

import asyncio
import hmac
import json
import logging
import time

from service import requestid

log = logging.getLogger(__name__)

# Room for the multipart framing and the small form fields (and a prompt PNG) besides the video.
MULTIPART_OVERHEAD = 1024 * 1024
OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/docs", "/redoc", "/openapi.json", "/static/")
OPEN_EXACT = ("/",)  # the web page; the API it calls needs the key (typed into the page)


class _BodyRefused(Exception):
    def __init__(self, status: int, title: str, detail: str):
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail


def key_matches(presented: str | None, keys: list[str]) -> bool:
    """Whether a presented key is one of the keys; every key is compared, in constant time."""
    if not presented:
        return False
    given = presented.encode()
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, key.encode())
    return found


def presented_key(authorization: str | None, api_key: str | None) -> str | None:
    """The key a request shows: `Authorization: Bearer <key>`, else `X-API-Key: <key>`."""
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return api_key.strip() if api_key else None


class Guard:
    def __init__(
        self,
        app,
        api_keys: list[str],
        max_body_bytes: int,
        body_timeout_s: float,
        body_deadline_s: float,
        on_refused=None,
    ):
        self.app = app
        self.api_keys = api_keys
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.body_deadline_s = body_deadline_s
        self.on_refused = on_refused or (lambda status: None)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {}
        for name, value in scope.get("headers", ()):
            headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
        request_id = requestid.bind(headers.get(requestid.HEADER))
        id_header = (b"x-request-id", request_id.encode())

        path = scope.get("path", "")
        if self.api_keys and not (path in OPEN_EXACT or path.startswith(OPEN_PATHS)):
            key = presented_key(headers.get("authorization"), headers.get("x-api-key"))
            if not key_matches(key, self.api_keys):
                detail = (
                    "this service needs an API key: 'Authorization: Bearer <key>' or "
                    "'X-API-Key: <key>'"
                    if key is None
                    else "the API key is not valid"
                )
                await self._refuse(
                    send,
                    401,
                    "Unauthorized",
                    detail,
                    id_header,
                    [(b"www-authenticate", b'Bearer realm="vidserve"')],
                    close=False,
                )
                return

        length = headers.get("content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared > self.max_body_bytes:
                await self._refuse(
                    send,
                    413,
                    "Upload too large",
                    f"the request body ({declared} bytes) exceeds the limit of "
                    f"{self.max_body_bytes} bytes",
                    id_header,
                )
                return

        state = {"started": False, "refused": None, "body_done": False}
        received = 0
        deadline = time.monotonic() + self.body_deadline_s

        async def guarded_receive():
            nonlocal received
            if state["refused"] is not None:
                raise state["refused"]
            if state["body_done"]:  # later receives wait for a disconnect: no time limit
                return await receive()
            timeout = min(self.body_timeout_s, deadline - time.monotonic())
            try:
                if timeout <= 0:
                    raise TimeoutError
                message = await asyncio.wait_for(receive(), timeout)
            except TimeoutError:
                state["refused"] = _BodyRefused(
                    408,
                    "Request timeout",
                    "the request body arrived too slowly (the next chunk within "
                    f"{self.body_timeout_s:g} s, the whole body within "
                    f"{self.body_deadline_s:g} s)",
                )
                raise state["refused"] from None
            if message["type"] == "http.request":
                state["body_done"] = not message.get("more_body", False)
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    state["refused"] = _BodyRefused(
                        413,
                        "Upload too large",
                        f"the request body exceeds the limit of {self.max_body_bytes} bytes",
                    )
                    raise state["refused"]
            return message

        async def guarded_send(message):
            if message["type"] == "http.response.start":
                if state["refused"] is not None:  # the app answered a refused body: ours wins
                    return
                state["started"] = True
                message = {**message, "headers": [*message.get("headers", []), id_header]}
            elif state["refused"] is not None and not state["started"]:
                return
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if state["refused"] is None or state["started"]:
                raise
        refused = state["refused"]
        if refused is not None and not state["started"]:
            await self._refuse(send, refused.status, refused.title, refused.detail, id_header)

    async def _refuse(self, send, status, title, detail, id_header, extra=(), close=True):
        log.info("refused %d: %s", status, detail)
        self.on_refused(status)
        body = json.dumps(
            {"type": "about:blank", "title": title, "status": status, "detail": detail}
        ).encode()
        headers = [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(body)).encode()),
            id_header,
            *extra,
        ]
        if close:  # the body is not read: the connection cannot carry another request
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
