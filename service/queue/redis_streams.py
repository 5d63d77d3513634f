"""Redis Streams: gateways and any number of workers on any number of hosts.

Keys (all under `vidserve:`):
    work:<model>            stream of stateless frames; consumer group `workers` (any worker)
    inbox:<worker>          stream of one worker's sessions: open, frames, close (affinity)
    replies:<gateway>       stream of replies to one gateway
    alive:<worker>          heartbeat key with a short TTL
    workers                 hash worker id -> what it serves (models, sessions)

A stateful session is pinned to the worker with the fewest sessions when it opens; if that worker's
heartbeat lapses, the gateway ends the session with "session state lost". Stateless frames are
read through the consumer group; a live worker claims the pending frames of a dead one, so none is
lost (a frame may then be answered twice: the gateway keeps the first answer).
"""

import asyncio
import json
import logging
import threading
import time
import uuid

import numpy as np
import redis
import redis.asyncio as aioredis

from service.queue.base import GatewayTransport, NoWorker, SessionHandle, WorkerTransport
from service.queue.messages import (
    CloseSession,
    ErrorCode,
    Frame,
    OpenSession,
    Reply,
    WorkMessage,
)
from service.worker.runner import ModelInfo

PREFIX = "vidserve:"
GROUP = "workers"
HEARTBEAT_S = 0.5
ALIVE_TTL_MS = 2000  # a worker silent this long is dead
REPLY_STREAM_MAXLEN = 100_000

log = logging.getLogger(__name__)


def work_stream(model: str) -> str:
    return f"{PREFIX}work:{model}"


def inbox_stream(worker_id: str) -> str:
    return f"{PREFIX}inbox:{worker_id}"


def reply_stream(gateway_id: str) -> str:
    return f"{PREFIX}replies:{gateway_id}"


def alive_key(worker_id: str) -> str:
    return f"{PREFIX}alive:{worker_id}"


WORKERS_HASH = f"{PREFIX}workers"


# --- encoding -------------------------------------------------------------------------------------
def encode_message(message: WorkMessage) -> dict[bytes | str, bytes | str]:
    if isinstance(message, Frame):
        image = np.ascontiguousarray(message.image, dtype=np.uint8)
        meta = {
            "type": "frame",
            "session_id": message.session_id,
            "index": message.index,
            "time": message.time,
            "prompt": message.prompt,
            "model": message.model,
            "options": message.options,
            "reply_to": message.reply_to,
            "shape": list(image.shape),
        }
        return {"meta": json.dumps(meta), "image": image.tobytes()}
    if isinstance(message, OpenSession):
        meta = {
            "type": "open",
            "session_id": message.session_id,
            "model": message.model,
            "options": message.options,
            "reply_to": message.reply_to,
        }
    else:
        meta = {"type": "close", "session_id": message.session_id, "reply_to": message.reply_to}
    return {"meta": json.dumps(meta)}


def decode_message(fields: dict, receipt) -> WorkMessage:
    meta = json.loads(fields[b"meta"])
    kind = meta["type"]
    if kind == "frame":
        image = np.frombuffer(fields[b"image"], np.uint8).reshape(meta["shape"])
        prompt = {int(k): v for k, v in meta["prompt"].items()} if meta["prompt"] else None
        return Frame(
            meta["session_id"],
            meta["index"],
            meta["time"],
            image,
            prompt,
            model=meta["model"],
            options=meta["options"],
            reply_to=meta["reply_to"],
            receipt=receipt,
        )
    if kind == "open":
        return OpenSession(meta["session_id"], meta["model"], meta["options"], meta["reply_to"])
    return CloseSession(meta["session_id"], meta["reply_to"])


def encode_reply(reply: Reply) -> str:
    data = {k: v for k, v in vars(reply).items()}
    data["error_code"] = reply.error_code.value if reply.error_code else None
    return json.dumps(data)


def decode_reply(text: bytes) -> Reply:
    data = json.loads(text)
    data["error_code"] = ErrorCode(data["error_code"]) if data["error_code"] else None
    return Reply(**data)


# --- worker side ----------------------------------------------------------------------------------
class RedisWorkerTransport(WorkerTransport):
    """Blocking (redis-py); `fetch` runs in the worker's thread, heartbeats in their own."""

    def __init__(self, url: str, worker=None):
        self.url = url
        self.worker_id = uuid.uuid4().hex[:12]
        self.client = redis.Redis.from_url(url)
        self.worker = worker  # for the heartbeat: what it serves, how many sessions
        self.inbox = inbox_stream(self.worker_id)
        self._groups_made: set[str] = set()
        self._claimed: list[WorkMessage] = []
        self._last_claim = 0.0
        self._stop = threading.Event()

    def attach(self, worker) -> None:
        self.worker = worker

    def start(self) -> None:
        self._ensure_group(self.inbox)
        self.heartbeat()
        threading.Thread(target=self._beat, daemon=True, name="heartbeat").start()

    def stop(self) -> None:
        """Leave cleanly: gateways see this worker gone at once."""
        self._stop.set()
        pipe = self.client.pipeline()
        pipe.delete(alive_key(self.worker_id), self.inbox)
        pipe.hdel(WORKERS_HASH, self.worker_id)
        pipe.execute()

    def heartbeat(self) -> None:
        models = self.worker.models() if self.worker is not None else []
        info = {
            "models": [vars(m) | {"classes": list(m.classes)} for m in models],
            "sessions": self.worker.session_count() if self.worker is not None else 0,
            "time": time.time(),
        }
        pipe = self.client.pipeline()
        pipe.set(alive_key(self.worker_id), "1", px=ALIVE_TTL_MS)
        pipe.hset(WORKERS_HASH, self.worker_id, json.dumps(info))
        pipe.execute()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.heartbeat()
            except redis.RedisError as e:
                log.warning("heartbeat failed: %s", e)

    def _stateless_streams(self) -> list[str]:
        models = self.worker.models() if self.worker is not None else []
        streams = [work_stream(m.name) for m in models if not m.stateful]
        for stream in streams:
            self._ensure_group(stream)
        return streams

    def _ensure_group(self, stream: str) -> None:
        if stream in self._groups_made:
            return
        try:
            self.client.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        self._groups_made.add(stream)

    def fetch(self, timeout: float) -> list[WorkMessage]:
        streams = [self.inbox, *self._stateless_streams()]
        if time.monotonic() - self._last_claim > HEARTBEAT_S:
            self._last_claim = time.monotonic()
            self._claim_from_dead_workers(streams[1:])
        if self._claimed:
            claimed, self._claimed = self._claimed, []
            return claimed
        reply = self.client.xreadgroup(
            GROUP,
            self.worker_id,
            {s: ">" for s in streams},
            count=16,
            block=max(1, int(timeout * 1000)),
        )
        messages, inbox_ids = [], []
        for stream, entries in reply or []:
            name = stream.decode()
            for entry_id, fields in entries:
                if name == self.inbox:
                    # Nobody takes over a dead worker's sessions: no need to keep them pending.
                    inbox_ids.append(entry_id)
                    messages.append(decode_message(fields, None))
                else:
                    messages.append(decode_message(fields, (name, entry_id)))
        if inbox_ids:
            self.client.xack(self.inbox, GROUP, *inbox_ids)
            self.client.xdel(self.inbox, *inbox_ids)
        return messages

    def _claim_from_dead_workers(self, streams: list[str]) -> None:
        """Take over the unacknowledged stateless frames of workers whose heartbeat lapsed."""
        for stream in streams:
            for consumer in self.client.xinfo_consumers(stream, GROUP):
                name = consumer["name"].decode()
                if name == self.worker_id or self.client.exists(alive_key(name)):
                    continue
                if consumer["pending"]:
                    pending = self.client.xpending_range(stream, GROUP, "-", "+", 1000, name)
                    ids = [p["message_id"] for p in pending]
                    for entry_id, fields in self.client.xclaim(
                        stream, GROUP, self.worker_id, 0, ids
                    ):
                        self._claimed.append(decode_message(fields, (stream, entry_id)))
                    log.warning("claimed %d frames of dead worker %s", len(ids), name)
                self.client.xgroup_delconsumer(stream, GROUP, name)

    def reply(self, reply: Reply, reply_to: str) -> None:
        self.client.xadd(
            reply_stream(reply_to),
            {"reply": encode_reply(reply)},
            maxlen=REPLY_STREAM_MAXLEN,
            approximate=True,
        )

    def done(self, frame: Frame) -> None:
        if frame is not None and frame.receipt is not None:
            stream, entry_id = frame.receipt
            self.client.xack(stream, GROUP, entry_id)
            self.client.xdel(stream, entry_id)  # frames are large: keep the streams short


# --- gateway side ---------------------------------------------------------------------------------
class _Tracked:
    """The gateway's bookkeeping of one session."""

    def __init__(self, handle: SessionHandle, stateful: bool):
        self.handle = handle
        self.stateful = stateful
        self.outstanding: set[int] = set()  # frames sent, not yet answered
        self.closing = False
        self.ended = False


class RedisGatewayTransport(GatewayTransport):
    def __init__(self, url: str):
        self.url = url
        self.gateway_id = uuid.uuid4().hex[:12]
        self.client: aioredis.Redis | None = None
        self._sessions: dict[str, _Tracked] = {}
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        self.client = aioredis.Redis.from_url(self.url)
        await self.client.ping()
        self._tasks = [
            asyncio.create_task(self._read_replies()),
            asyncio.create_task(self._watch_workers()),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.client is not None:
            await self.client.delete(reply_stream(self.gateway_id))
            await self.client.aclose()

    async def _live_workers(self) -> dict[str, dict]:
        entries = await self.client.hgetall(WORKERS_HASH)
        if not entries:
            return {}
        ids = [k.decode() for k in entries]
        alive = await self.client.mget([alive_key(i) for i in ids])
        return {i: json.loads(entries[i.encode()]) for i, a in zip(ids, alive, strict=True) if a}

    async def models(self) -> list[ModelInfo]:
        found: dict[str, ModelInfo] = {}
        for info in (await self._live_workers()).values():
            for m in info["models"]:
                model = ModelInfo(**{**m, "classes": tuple(m["classes"])})
                if model.name not in found or model.version > found[model.name].version:
                    found[model.name] = model
        return list(found.values())

    async def open(self, model: str, options: dict) -> SessionHandle:
        workers = await self._live_workers()
        serving = {
            wid: info
            for wid, info in workers.items()
            if any(m["name"] == model for m in info["models"])
        }
        if not serving:
            raise NoWorker(f"no worker serves model '{model}'")
        stateful = next(
            m["stateful"] for m in next(iter(serving.values()))["models"] if m["name"] == model
        )
        handle = SessionHandle(uuid.uuid4().hex, model)
        tracked = _Tracked(handle, stateful)
        self._sessions[handle.session_id] = tracked
        if stateful:
            # Session affinity: the least busy worker holds the session's state. Heartbeats
            # lag, so this gateway's own open sessions count too (or all would go to one).
            mine = self._open_per_worker()
            handle.worker_id = min(
                serving, key=lambda w: (serving[w]["sessions"] + mine.get(w, 0), w)
            )
            await self._xadd(
                inbox_stream(handle.worker_id),
                OpenSession(handle.session_id, model, options, self.gateway_id),
            )
        return handle

    def _open_per_worker(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for tracked in self._sessions.values():
            if tracked.stateful and not tracked.ended and tracked.handle.worker_id:
                counts[tracked.handle.worker_id] = counts.get(tracked.handle.worker_id, 0) + 1
        return counts

    async def send(self, session: SessionHandle, frame: Frame) -> None:
        tracked = self._sessions.get(session.session_id)
        if tracked is None or tracked.ended:
            return
        frame.reply_to = self.gateway_id
        tracked.outstanding.add(frame.index)
        stream = inbox_stream(session.worker_id) if tracked.stateful else work_stream(session.model)
        await self._xadd(stream, frame)

    async def close(self, session: SessionHandle) -> None:
        tracked = self._sessions.get(session.session_id)
        if tracked is None or tracked.closing:
            return
        tracked.closing = True
        if tracked.stateful:
            await self._xadd(
                inbox_stream(session.worker_id), CloseSession(session.session_id, self.gateway_id)
            )
        else:
            self._maybe_end_stateless(tracked)

    async def _xadd(self, stream: str, message: WorkMessage) -> None:
        await self.client.xadd(stream, encode_message(message))

    def _deliver(self, tracked: _Tracked, reply: Reply) -> None:
        if tracked.ended:
            return
        if reply.index is not None and reply.error_code is None:
            if reply.index not in tracked.outstanding:
                return  # a second answer to a reclaimed frame
            tracked.outstanding.discard(reply.index)
        if reply.closed:
            tracked.ended = True
            self._sessions.pop(tracked.handle.session_id, None)
        tracked.handle.replies.put_nowait(reply)
        if not tracked.stateful:
            self._maybe_end_stateless(tracked)

    def _maybe_end_stateless(self, tracked: _Tracked) -> None:
        """No worker holds a stateless session: the gateway ends it when all is answered."""
        if tracked.closing and not tracked.outstanding and not tracked.ended:
            self._deliver(tracked, Reply(tracked.handle.session_id, closed=True))

    async def _read_replies(self) -> None:
        # The stream is this gateway's own and new: read it from the start, so that no reply
        # slips between two reads.
        stream, last = reply_stream(self.gateway_id), "0-0"
        while True:
            try:
                result = await self.client.xread({stream: last}, block=1000, count=256)
            except aioredis.RedisError as e:
                log.warning("reading replies: %s", e)
                await asyncio.sleep(0.5)
                continue
            for _, entries in result or []:
                for entry_id, fields in entries:
                    last = entry_id
                    reply = decode_reply(fields[b"reply"])
                    tracked = self._sessions.get(reply.session_id)
                    if tracked is not None:
                        self._deliver(tracked, reply)

    async def _watch_workers(self) -> None:
        """End the sessions of workers whose heartbeat lapsed, with an explicit error."""
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            held = {t.handle.worker_id for t in self._sessions.values() if t.stateful}
            if not held:
                continue
            try:
                alive = await self.client.mget([alive_key(w) for w in held])
            except aioredis.RedisError:
                continue
            dead = {w for w, a in zip(held, alive, strict=True) if not a}
            for tracked in [t for t in self._sessions.values() if t.handle.worker_id in dead]:
                log.warning(
                    "worker %s died: session %s lost",
                    tracked.handle.worker_id,
                    tracked.handle.session_id,
                )
                self._deliver(
                    tracked,
                    Reply(
                        tracked.handle.session_id,
                        error_code=ErrorCode.STATE_LOST,
                        closed=True,
                        error=f"session state lost: worker {tracked.handle.worker_id} stopped "
                        "answering",
                    ),
                )
