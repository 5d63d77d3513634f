"""Redis Streams: gateways and any number of workers on any number of hosts.

Keys (all under `vidserve:`):
    work:<model>            stream of stateless frames; consumer group `workers` (any worker)
    inbox:<worker>          stream of one worker's sessions: open, frames, close (affinity)
    replies:<gateway>       stream of replies to one gateway
    alive:<worker>          heartbeat key with a short TTL
    workers                 hash worker id -> what it serves (models, sessions, protocol, draining)
    alive-gateway:<gateway> a gateway's heartbeat key with a short TTL
    gateways                hash gateway id -> its last heartbeat (kept GATEWAY_FORGET_S after)

Janitor. Every worker and gateway runs `sweep` every JANITOR_S: it deletes the inbox and the
workers-hash entry of every worker whose heartbeat lapsed, and the reply stream of every gateway
whose heartbeat lapsed (a kill -9 leaves them behind). A worker also ends, silently, the sessions
whose gateway died (nobody reads their replies). Only a gateway that registered in `gateways`
is ever judged dead: a gateway of an older version, which does not heartbeat, keeps its stream.

Drain. A worker told to stop (SIGTERM) says `draining: true` in its heartbeat: gateways open no
new session on it, it stops reading the stateless streams, and it serves its open sessions until
they end or its grace period runs out (service.worker.worker.Worker.drain).

A stateful session is pinned to the worker with the fewest sessions when it opens; if that worker's
heartbeat lapses, the gateway ends the session with "session state lost". Stateless frames are
read through the consumer group; a live worker claims the pending frames of a dead one, so none is
lost (a frame may then be answered twice: the gateway keeps the first `taken` answer).

Protocol. Every message and reply carries `protocol` (messages.PROTOCOL_VERSION; a message
without it is of version 1). Each side ignores the fields it does not know. A worker advertises
its version (and the oldest it accepts) in its heartbeat; a gateway opens sessions only on
workers that accept its version, and a worker answers a message of a version outside
[MIN_PROTOCOL_VERSION, PROTOCOL_VERSION] with a PROTOCOL error that ends the session.

Frames cross Redis encoded. A frame the client sent encoded (gRPC: JPEG/PNG) goes as those bytes;
a frame the gateway decoded (REST: video) goes as lossless WebP at its fastest setting
(images.encode_frame). The worker decodes on `fetch` (images.decode_image: header size checked
against max_width x max_height first), so the worker always sees an RGB array; a frame that does
not decode, or is over the limits, is answered here with that frame's error and acknowledged.

Why lossless WebP. Measured on 1280x720 frames of the synthetic world decoded from H.264 (what
REST sends; its grass texture is hard on every codec), one core, 2 shared cores:
    raw RGB           2765 kB
    PNG (level 1)     1100 kB       encode 35-45 ms     decode 12-16 ms    lossless
    WebP lossless m0  830-890 kB    encode 26-45 ms     decode 12-17 ms    lossless
    WebP lossless m1  795 kB        encode 105-140 ms   decode 11-12 ms    lossless
    JPEG q95 4:2:0    480 kB        encode 3 ms         decode 4.5 ms      mean error 6 levels
    JPEG q95 4:4:4    765 kB        encode 6 ms         decode 8.5 ms      mean error 2 levels
JPEG is much faster, but its masks are not the in-process masks: through the shipped
masktrack-instance checkpoint, JPEG q90-q95 frames (4:2:0 or 4:4:4) of three 10-frame 320x240
videos gave a mean mask IoU of 0.88-0.92 against the original frames (objects near the score
threshold appear and vanish), far from the 0.98 required. PNG is lossless but over 1 MB a 720p
frame; WebP lossless at method 0 is lossless and under 1 MB for about PNG's cost. The price
against raw RGB is CPU: benchmarks/redis_wire.py gives 150 frames/s raw against 16-21 frames/s
encoded through one local Redis (gateway encode 32-43 ms, worker read and decode 15-18 ms a
frame, load 3 on 2 cores); raw frames are 2.8 MB each on the network and in Redis (660 Mbit/s
for one 30 fps stream).
"""

import asyncio
import dataclasses
import json
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import redis
import redis.asyncio as aioredis

from service import requestid
from service.images import ImageError, decode_image, encode_frame
from service.queue.base import GatewayTransport, NoWorker, SessionHandle, WorkerTransport
from service.queue.messages import (
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    CloseSession,
    ErrorCode,
    Frame,
    OpenSession,
    Reply,
    ReplyKind,
    WorkMessage,
)
from service.schemas import DetectedObject, Segment, TrackActions
from service.worker.runner import ModelInfo

PREFIX = "vidserve:"
GROUP = "workers"
HEARTBEAT_S = 0.5
ALIVE_TTL_MS = 2000  # a worker silent this long is dead
REPLY_STREAM_MAXLEN = 100_000
FETCH_COUNT = 16  # entries read per stream and call
JANITOR_S = 2.0  # how often each worker and gateway sweeps what dead peers left
# A dead gateway stays registered this long, so that a late reply that re-creates its stream is
# deleted again; past it no worker holds a session of it (they end within JANITOR_S).
GATEWAY_FORGET_S = 600.0

log = logging.getLogger(__name__)


def work_stream(model: str) -> str:
    return f"{PREFIX}work:{model}"


def inbox_stream(worker_id: str) -> str:
    return f"{PREFIX}inbox:{worker_id}"


def reply_stream(gateway_id: str) -> str:
    return f"{PREFIX}replies:{gateway_id}"


def alive_key(worker_id: str) -> str:
    return f"{PREFIX}alive:{worker_id}"


def gateway_alive_key(gateway_id: str) -> str:
    return f"{PREFIX}alive-gateway:{gateway_id}"


WORKERS_HASH = f"{PREFIX}workers"
GATEWAYS_HASH = f"{PREFIX}gateways"


# --- the janitor ----------------------------------------------------------------------------------
def dead_gateways(client: redis.Redis, gateway_ids) -> set[str]:
    """Of these gateways, those that registered (they heartbeat) and whose heartbeat lapsed."""
    ids = sorted(set(gateway_ids))
    if not ids:
        return set()
    pipe = client.pipeline(transaction=False)
    pipe.hmget(GATEWAYS_HASH, ids)
    pipe.mget([gateway_alive_key(g) for g in ids])
    registered, alive = pipe.execute()
    return {
        g for g, r, a in zip(ids, registered, alive, strict=True) if r is not None and a is None
    }


def _beat_time(value: bytes) -> float:
    try:
        return float(json.loads(value).get("time", 0.0))
    except (ValueError, AttributeError):
        return 0.0


def sweep(client: redis.Redis) -> dict[str, int]:
    """Delete what dead peers left: the inboxes and workers-hash entries of workers whose
    heartbeat lapsed, the reply streams of registered gateways whose heartbeat lapsed (and their
    registration GATEWAY_FORGET_S later). Idempotent; a SCAN of the inbox keys, two hashes and a
    few MGETs. Returns how many keys or entries of each kind it removed."""
    removed = {"workers": 0, "inboxes": 0, "replies": 0, "gateways": 0}
    worker_ids = [k.decode() for k in client.hkeys(WORKERS_HASH)]
    prefix = inbox_stream("")
    inbox_ids = [
        k.decode()[len(prefix) :] for k in client.scan_iter(match=f"{prefix}*", count=1000)
    ]
    ids = sorted(set(worker_ids) | set(inbox_ids))
    if ids:
        alive = client.mget([alive_key(i) for i in ids])
        dead = {i for i, a in zip(ids, alive, strict=True) if a is None}
        if dead_entries := [i for i in worker_ids if i in dead]:
            removed["workers"] = client.hdel(WORKERS_HASH, *dead_entries)
        if dead_inboxes := [inbox_stream(i) for i in inbox_ids if i in dead]:
            removed["inboxes"] = client.delete(*dead_inboxes)
    gateways = client.hgetall(GATEWAYS_HASH)
    if gateways:
        ids = [k.decode() for k in gateways]
        alive = client.mget([gateway_alive_key(g) for g in ids])
        dead = [g for g, a in zip(ids, alive, strict=True) if a is None]
        if dead:
            removed["replies"] = client.delete(*[reply_stream(g) for g in dead])
            now = time.time()
            if forget := [
                g for g in dead if now - _beat_time(gateways[g.encode()]) > GATEWAY_FORGET_S
            ]:
                removed["gateways"] = client.hdel(GATEWAYS_HASH, *forget)
    if any(removed.values()):
        log.info("janitor removed %s", removed)
    return removed


def accepts(version: int) -> bool:
    """Whether this side understands a peer message of `version`."""
    return MIN_PROTOCOL_VERSION <= version <= PROTOCOL_VERSION


def protocol_mismatch(theirs: int, what: str = "this peer") -> str:
    return (
        f"protocol mismatch: the message is of protocol {theirs}; {what} speaks "
        f"{PROTOCOL_VERSION} (accepts {MIN_PROTOCOL_VERSION}..{PROTOCOL_VERSION})"
    )


# --- encoding -------------------------------------------------------------------------------------
def encode_message(message: WorkMessage) -> dict[str, bytes | str]:
    """The fields of a stream entry. A frame's image goes encoded: the client's bytes when it
    sent some, else `encode_frame` of the array (slow on big frames: call it off the loop)."""
    if isinstance(message, Frame):
        if message.encoded is not None:
            image = bytes(message.encoded)
        elif message.image is not None:
            image = encode_frame(message.image)
        else:
            raise ValueError(f"frame {message.index} has neither an image nor its encoding")
        meta = {
            "type": "frame",
            "protocol": message.protocol,
            "session_id": message.session_id,
            "index": message.index,
            "time": message.time,
            "prompt": message.prompt,
            "model": message.model,
            "options": message.options,
            "reply_to": message.reply_to,
            "request_id": message.request_id,
        }
        return {"meta": json.dumps(meta), "image": image}
    if isinstance(message, OpenSession):
        meta = {
            "type": "open",
            "protocol": message.protocol,
            "session_id": message.session_id,
            "model": message.model,
            "options": message.options,
            "reply_to": message.reply_to,
            "request_id": message.request_id,
        }
    else:
        meta = {
            "type": "close",
            "protocol": PROTOCOL_VERSION,
            "session_id": message.session_id,
            "reply_to": message.reply_to,
        }
    return {"meta": json.dumps(meta)}


class Refused(Exception):
    """A message the transport answers itself (wrong protocol, bad image): never the worker's."""

    def __init__(self, reply: Reply, reply_to: str):
        super().__init__(reply.error)
        self.reply = reply
        self.reply_to = reply_to


def decode_message(fields: dict, receipt=None) -> WorkMessage | None:
    """A stream entry as a message; a frame keeps its image encoded (`encoded`, `image` None)
    until `decode_frame`. Raises Refused for a message of a protocol this side does not accept,
    ValueError / KeyError for one that is malformed; None for a kind this side does not know."""
    meta = json.loads(fields[b"meta"])
    kind = meta.get("type")
    version = int(meta.get("protocol", 1))
    if kind in ("open", "frame") and not accepts(version):
        raise Refused(
            Reply(
                meta["session_id"],
                kind=ReplyKind.END,
                model=meta.get("model", ""),
                error_code=ErrorCode.PROTOCOL,
                error=protocol_mismatch(version, "this worker"),
            ),
            meta.get("reply_to", ""),
        )
    if kind == "frame":
        prompt = meta.get("prompt")
        return Frame(
            meta["session_id"],
            int(meta["index"]),
            float(meta["time"]),
            None,
            {int(k): v for k, v in prompt.items()} if prompt else None,
            model=meta.get("model", ""),
            options=meta.get("options") or {},
            reply_to=meta.get("reply_to", ""),
            receipt=receipt,
            encoded=fields[b"image"],
            protocol=version,
            request_id=str(meta.get("request_id", "")),
        )
    if kind == "open":
        return OpenSession(
            meta["session_id"],
            meta["model"],
            meta.get("options") or {},
            meta.get("reply_to", ""),
            protocol=version,
            request_id=str(meta.get("request_id", "")),
        )
    if kind == "close":
        return CloseSession(meta["session_id"], meta.get("reply_to", ""))
    return None


def decode_frame(frame: Frame, max_width: int, max_height: int) -> Frame:
    """Decode the frame's image in place (`encoded` is dropped); Refused when it is not an image
    or is over the limits: that frame's error, taken."""
    try:
        frame.image = decode_image(frame.encoded, max_width, max_height, f"frame {frame.index}")
    except ImageError as error:
        raise Refused(
            Reply(
                frame.session_id,
                index=frame.index,
                kind=ReplyKind.FRAME,
                taken=True,
                time=frame.time,
                model=frame.model,
                error_code=ErrorCode.INVALID_ARGUMENT,
                error=str(error),
            ),
            frame.reply_to,
        ) from None
    frame.encoded = None
    return frame


def _dump(items) -> list | None:
    return None if items is None else [item.model_dump(mode="json") for item in items]


def encode_reply(reply: Reply) -> str:
    return json.dumps(
        {
            "protocol": PROTOCOL_VERSION,
            "session_id": reply.session_id,
            "index": reply.index,
            "kind": reply.kind.value,
            "taken": reply.taken,
            "time": reply.time,
            "objects": _dump(reply.objects),
            "segments": _dump(reply.segments),
            "tracks": _dump(reply.tracks),
            "model": reply.model,
            "model_version": reply.model_version,
            "stages": [list(stage) for stage in reply.stages],
            "error_code": reply.error_code.value if reply.error_code else None,
            "error": reply.error,
        }
    )


def _load(model, items) -> list | None:
    return None if items is None else [model.model_validate(item) for item in items]


def decode_reply(text: bytes | str) -> Reply | None:
    """A reply as sent; fields this side does not know are ignored. A reply of an unknown kind
    (a newer worker's) is kept only as what this side needs of it: its frame's `taken`."""
    data = json.loads(text)
    index = data.get("index")
    if "kind" not in data:  # protocol 1: one reply per frame, `closed` on the last
        kind = ReplyKind.END if data.get("closed") else ReplyKind.FRAME
        taken = kind == ReplyKind.FRAME and index is not None
    else:
        taken = bool(data.get("taken"))
        try:
            kind = ReplyKind(data["kind"])
        except ValueError:
            if not (taken and index is not None):
                return None
            return Reply(data["session_id"], index=index, kind=ReplyKind.TAKEN, taken=True)
    code = data.get("error_code")
    if code is not None:
        try:
            code = ErrorCode(code)
        except ValueError:
            code = ErrorCode.INTERNAL
    return Reply(
        data["session_id"],
        index=index,
        kind=kind,
        taken=taken,
        time=float(data.get("time") or 0.0),
        objects=_load(DetectedObject, data.get("objects")),
        segments=_load(Segment, data.get("segments")),
        tracks=_load(TrackActions, data.get("tracks")),
        model=data.get("model", ""),
        model_version=data.get("model_version", ""),
        stages=[(str(name), str(version)) for name, version in data.get("stages") or []],
        error_code=code,
        error=data.get("error", ""),
    )


_MODEL_INFO_FIELDS = {f.name for f in dataclasses.fields(ModelInfo)}


def model_info(data: dict) -> ModelInfo:
    """A ModelInfo from a heartbeat (fields this side does not know are ignored)."""
    known = {k: v for k, v in data.items() if k in _MODEL_INFO_FIELDS}
    known["classes"] = tuple(known.get("classes", ()))
    known["actions"] = tuple(known.get("actions", ()))
    if "stages" in known:
        known["stages"] = tuple(tuple(stage) for stage in known["stages"])
    return ModelInfo(**known)


def worker_protocols(info: dict) -> tuple[int, int]:
    """(oldest accepted, own) protocol of a worker's heartbeat; 1 when it says nothing."""
    version = int(info.get("protocol", 1))
    return int(info.get("min_protocol", version)), version


def worker_accepts_us(info: dict) -> bool:
    oldest, newest = worker_protocols(info)
    return oldest <= PROTOCOL_VERSION <= newest


# --- worker side ----------------------------------------------------------------------------------
class RedisWorkerTransport(WorkerTransport):
    """Blocking (redis-py); `fetch` runs in the worker's thread, heartbeats in their own."""

    def __init__(
        self,
        url: str,
        worker=None,
        max_width: int | None = None,
        max_height: int | None = None,
    ):
        if max_width is None or max_height is None:
            from service.settings import get_settings

            settings = get_settings()
            max_width = settings.max_width if max_width is None else max_width
            max_height = settings.max_height if max_height is None else max_height
        self.url = url
        self.max_width, self.max_height = max_width, max_height
        self.worker_id = uuid.uuid4().hex[:12]
        self.client = redis.Redis.from_url(url)
        self.worker = worker  # for the heartbeat: what it serves, how many sessions
        self.inbox = inbox_stream(self.worker_id)
        self._groups_made: set[str] = set()
        self._claimed: list[tuple[dict, tuple[str, bytes]]] = []
        self._last_claim = 0.0
        self._stop = threading.Event()
        self._decoders: ThreadPoolExecutor | None = None
        self.draining = False

    def attach(self, worker) -> None:
        self.worker = worker

    def start(self) -> None:
        # Alive first: the janitor deletes the inbox of a worker that is not.
        self.heartbeat()
        self._ensure_group(self.inbox)
        threading.Thread(target=self._beat, daemon=True, name="heartbeat").start()

    def set_draining(self) -> None:
        """Take no new work: the heartbeat says so at once (gateways open no session here) and
        the stateless streams are left to the other workers."""
        self.draining = True
        try:
            self.heartbeat()
        except redis.RedisError as e:
            log.warning("heartbeat failed: %s", e)

    def stop(self) -> None:
        """Leave cleanly: gateways see this worker gone at once."""
        self._stop.set()
        pipe = self.client.pipeline()
        pipe.delete(alive_key(self.worker_id), self.inbox)
        pipe.hdel(WORKERS_HASH, self.worker_id)
        pipe.execute()
        if self._decoders is not None:
            self._decoders.shutdown(wait=False)

    def heartbeat(self) -> None:
        models = self.worker.models() if self.worker is not None else []
        info = {
            "protocol": PROTOCOL_VERSION,
            "min_protocol": MIN_PROTOCOL_VERSION,
            "models": [dataclasses.asdict(m) for m in models],
            "sessions": self.worker.session_count() if self.worker is not None else 0,
            "draining": self.draining,
            "time": time.time(),
        }
        pipe = self.client.pipeline()
        pipe.set(alive_key(self.worker_id), "1", px=ALIVE_TTL_MS)
        pipe.hset(WORKERS_HASH, self.worker_id, json.dumps(info))
        pipe.execute()

    def _beat(self) -> None:
        last_sweep = 0.0
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.heartbeat()
                if time.monotonic() - last_sweep >= JANITOR_S:
                    last_sweep = time.monotonic()
                    self.janitor()
            except redis.RedisError as e:
                log.warning("heartbeat failed: %s", e)

    def janitor(self) -> None:
        """Sweep what dead peers left, and end the sessions here whose gateway died."""
        sweep(self.client)
        if self.worker is None or not hasattr(self.worker, "gateways"):
            return
        dead = dead_gateways(self.client, self.worker.gateways())
        if dead:
            self.worker.end_sessions_of(dead)
            self.heartbeat()  # the session count, at once

    def _stateless_streams(self, busy: frozenset[str]) -> list[str]:
        if self.draining:
            return []
        models = self.worker.models() if self.worker is not None else []
        streams = [work_stream(m.name) for m in models if not m.stateful and m.name not in busy]
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

    def fetch(self, timeout: float, busy: frozenset[str] = frozenset()) -> list[WorkMessage]:
        """This worker's inbox, and the shared streams of the stateless models not in `busy`."""
        shared = self._stateless_streams(busy)
        if time.monotonic() - self._last_claim > HEARTBEAT_S:
            self._last_claim = time.monotonic()
            self._claim_from_dead_workers(shared)
        if self._claimed:
            claimed, self._claimed = self._claimed, []
            return self._receive(claimed)
        try:
            reply = self.client.xreadgroup(
                GROUP,
                self.worker_id,
                {s: ">" for s in [self.inbox, *shared]},
                count=FETCH_COUNT,
                block=max(1, int(timeout * 1000)),
            )
        except redis.ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            # The janitor deleted this worker's inbox while its heartbeat had lapsed (gateways
            # took it for dead meanwhile): make the groups again and go on.
            log.warning("a stream of this worker vanished (%s): made again", e)
            self._groups_made.clear()
            self._ensure_group(self.inbox)
            return []
        entries, inbox_ids = [], []
        for stream, items in reply or []:
            name = stream.decode()
            for entry_id, fields in items:
                if name == self.inbox:
                    # Nobody takes over a dead worker's sessions: no need to keep them pending.
                    inbox_ids.append(entry_id)
                    entries.append((fields, None))
                else:
                    entries.append((fields, (name, entry_id)))
        if inbox_ids:
            self.client.xack(self.inbox, GROUP, *inbox_ids)
            self.client.xdel(self.inbox, *inbox_ids)
        return self._receive(entries)

    def _receive(self, entries: list[tuple[dict, tuple[str, bytes] | None]]) -> list[WorkMessage]:
        """Entries as messages, frames decoded; what cannot be served is answered here."""
        messages: list[WorkMessage] = []
        for fields, receipt in entries:
            try:
                message = decode_message(fields, receipt)
            except Refused as refused:
                self._refuse(refused, receipt)
                continue
            except Exception as error:  # malformed: a peer's bug must not stop this worker
                self._malformed(fields, receipt, error)
                continue
            if message is None:
                log.warning("ignored a message of a kind this worker does not know")
                self._ack(receipt)
                continue
            messages.append(message)
        frames = [m for m in messages if isinstance(m, Frame)]
        refused: set[int] = set()
        for frame, outcome in zip(frames, self._decode_all(frames), strict=True):
            if isinstance(outcome, Refused):
                self._refuse(outcome, frame.receipt)
                refused.add(id(frame))
        return [m for m in messages if id(m) not in refused]

    def _decode_all(self, frames: list[Frame]) -> list[Frame | Refused]:
        def one(frame: Frame) -> Frame | Refused:
            try:
                return decode_frame(frame, self.max_width, self.max_height)
            except Refused as refused:
                return refused

        if len(frames) <= 1:
            return [one(f) for f in frames]
        if self._decoders is None:  # the decoders release the GIL: frames decode in parallel
            workers = max(1, min(4, os.cpu_count() or 1))
            self._decoders = ThreadPoolExecutor(workers, thread_name_prefix="decode")
        return list(self._decoders.map(one, frames))

    def _refuse(self, refused: Refused, receipt) -> None:
        log.info("answered %s: %s", refused.reply.session_id, refused.reply.error)
        if refused.reply_to:
            self.reply(refused.reply, refused.reply_to)
        self._ack(receipt)

    def _malformed(self, fields: dict, receipt, error: Exception) -> None:
        log.warning("a malformed message (%s: %s): dropped", type(error).__name__, error)
        try:
            meta = json.loads(fields[b"meta"])
            session_id, reply_to = meta["session_id"], meta["reply_to"]
        except Exception:
            meta, session_id, reply_to = {}, None, None
        if session_id and reply_to:
            index = meta.get("index") if meta.get("type") == "frame" else None
            self.reply(
                Reply(
                    session_id,
                    index=index if isinstance(index, int) else None,
                    kind=ReplyKind.FRAME if isinstance(index, int) else ReplyKind.END,
                    taken=isinstance(index, int),
                    error_code=ErrorCode.INVALID_ARGUMENT,
                    error=f"malformed message: {type(error).__name__}: {error}",
                ),
                reply_to,
            )
        self._ack(receipt)

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
                        if fields:  # an entry deleted meanwhile comes back empty
                            self._claimed.append((fields, (stream, entry_id)))
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
        if frame is not None:
            self._ack(frame.receipt)

    def _ack(self, receipt) -> None:
        if receipt is not None:
            stream, entry_id = receipt
            self.client.xack(stream, GROUP, entry_id)
            self.client.xdel(stream, entry_id)  # frames are large: keep the streams short


# --- gateway side ---------------------------------------------------------------------------------
class _Tracked:
    """The gateway's bookkeeping of one session."""

    def __init__(self, handle: SessionHandle, stateful: bool):
        self.handle = handle
        self.stateful = stateful
        # Frame index -> frames sent with that index whose `taken` reply has not come. A count,
        # not a set: a repeated index must not make a frame vanish.
        self.outstanding: dict[int, int] = {}
        self.closing = False
        self.ended = False

    def sent(self, index: int) -> None:
        self.outstanding[index] = self.outstanding.get(index, 0) + 1

    def taken(self, index: int) -> bool:
        """Count a `taken` reply; False when none was due (a reclaimed frame answered twice)."""
        count = self.outstanding.get(index, 0)
        if count == 0:
            return False
        if count == 1:
            del self.outstanding[index]
        else:
            self.outstanding[index] = count - 1
        return True


class RedisGatewayTransport(GatewayTransport):
    def __init__(self, url: str):
        self.url = url
        self.gateway_id = uuid.uuid4().hex[:12]
        self.client: aioredis.Redis | None = None
        self._sessions: dict[str, _Tracked] = {}
        self._tasks: list[asyncio.Task] = []
        self._beats: redis.Redis | None = None  # the heartbeat thread's own blocking client
        self._stop_beats = threading.Event()
        self._beat_thread: threading.Thread | None = None

    async def start(self) -> None:
        self.client = aioredis.Redis.from_url(self.url)
        await self.client.ping()
        # The heartbeat and janitor run in a thread: a stalled event loop does not make this
        # gateway look dead (which would delete its reply stream).
        self._beats = redis.Redis.from_url(self.url)
        await asyncio.to_thread(self._heartbeat)
        self._beat_thread = threading.Thread(
            target=self._beat, daemon=True, name="gateway-heartbeat"
        )
        self._beat_thread.start()
        self._tasks = [
            asyncio.create_task(self._read_replies()),
            asyncio.create_task(self._watch_workers()),
        ]

    async def stop(self) -> None:
        self._stop_beats.set()
        for task in self._tasks:
            task.cancel()
        if self._beat_thread is not None:  # no beat after the keys are gone
            await asyncio.to_thread(self._beat_thread.join, 5)
        if self.client is not None:
            await self.client.delete(
                reply_stream(self.gateway_id), gateway_alive_key(self.gateway_id)
            )
            await self.client.hdel(GATEWAYS_HASH, self.gateway_id)
            await self.client.aclose()

    def _heartbeat(self) -> None:
        info = {"protocol": PROTOCOL_VERSION, "time": time.time()}
        pipe = self._beats.pipeline()
        pipe.set(gateway_alive_key(self.gateway_id), "1", px=ALIVE_TTL_MS)
        pipe.hset(GATEWAYS_HASH, self.gateway_id, json.dumps(info))
        pipe.execute()

    def _beat(self) -> None:
        last_sweep = 0.0
        while not self._stop_beats.wait(HEARTBEAT_S):
            try:
                self._heartbeat()
                if time.monotonic() - last_sweep >= JANITOR_S:
                    last_sweep = time.monotonic()
                    sweep(self._beats)
            except redis.RedisError as e:
                log.warning("gateway heartbeat failed: %s", e)
        self._beats.close()

    async def _live_workers(self) -> dict[str, dict]:
        """The workers that are alive and not draining (those take no new session)."""
        entries = await self.client.hgetall(WORKERS_HASH)
        if not entries:
            return {}
        ids = [k.decode() for k in entries]
        alive = await self.client.mget([alive_key(i) for i in ids])
        live = {}
        for worker_id, is_alive in zip(ids, alive, strict=True):
            if not is_alive:
                continue
            try:
                info = json.loads(entries[worker_id.encode()])
            except ValueError:
                log.warning("worker %s: unreadable heartbeat", worker_id)
                continue
            if not info.get("draining"):
                live[worker_id] = info
        return live

    async def models(self) -> list[ModelInfo]:
        """The models of the live workers that accept this gateway's protocol."""
        found: dict[str, ModelInfo] = {}
        for info in (await self._live_workers()).values():
            if not worker_accepts_us(info):
                continue
            for m in info.get("models", []):
                try:
                    model = model_info(m)
                except (TypeError, ValueError):
                    continue
                if model.name not in found or model.version > found[model.name].version:
                    found[model.name] = model
        return list(found.values())

    async def open(self, model: str, options: dict) -> SessionHandle:
        workers = await self._live_workers()
        serving = {
            wid: info
            for wid, info in workers.items()
            if any(m.get("name") == model for m in info.get("models", []))
        }
        if not serving:
            raise NoWorker(f"no worker serves model '{model}'")
        compatible = {wid: info for wid, info in serving.items() if worker_accepts_us(info)}
        if not compatible:
            versions = sorted({worker_protocols(info)[1] for info in serving.values()})
            raise NoWorker(
                f"workers serving '{model}' speak protocol "
                f"{' or '.join(str(v) for v in versions)}; this gateway speaks {PROTOCOL_VERSION}"
            )
        stateful = next(
            m["stateful"]
            for m in next(iter(compatible.values()))["models"]
            if m.get("name") == model
        )
        handle = SessionHandle(uuid.uuid4().hex, model)
        tracked = _Tracked(handle, stateful)
        self._sessions[handle.session_id] = tracked
        if stateful:
            # Session affinity: the least busy worker holds the session's state. Heartbeats
            # lag, so this gateway's own open sessions count too (or all would go to one).
            mine = self._open_per_worker()
            handle.worker_id = min(
                compatible, key=lambda w: (compatible[w].get("sessions", 0) + mine.get(w, 0), w)
            )
            await self._xadd(
                inbox_stream(handle.worker_id),
                OpenSession(
                    handle.session_id,
                    model,
                    options,
                    self.gateway_id,
                    request_id=requestid.current(),
                ),
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
        frame.model = frame.model or session.model
        stream = inbox_stream(session.worker_id) if tracked.stateful else work_stream(session.model)
        if frame.encoded is None:
            # Encoding a decoded frame takes tens of ms at 720p: not on the event loop.
            fields = await asyncio.to_thread(encode_message, frame)
        else:
            fields = encode_message(frame)
        tracked.sent(frame.index)
        await self.client.xadd(stream, fields)

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
        """Every reply reaches the session but a second `taken` reply to one frame (a stateless
        frame that a live worker reclaimed from a dead one and answered again)."""
        if tracked.ended:
            return
        if reply.taken and reply.index is not None and not tracked.taken(reply.index):
            return
        if reply.closed:
            tracked.ended = True
            self._sessions.pop(tracked.handle.session_id, None)
        tracked.handle.replies.put_nowait(reply)
        if not tracked.stateful:
            self._maybe_end_stateless(tracked)

    def _maybe_end_stateless(self, tracked: _Tracked) -> None:
        """No worker holds a stateless session: the gateway ends it once it is closing and every
        frame sent has had its `taken` reply."""
        if tracked.closing and not tracked.outstanding and not tracked.ended:
            self._deliver(tracked, Reply(tracked.handle.session_id, kind=ReplyKind.END))

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
                    try:
                        reply = decode_reply(fields[b"reply"])
                    except Exception as error:  # a peer's bug must not stop the reader
                        log.warning("an unreadable reply dropped: %s: %s", type(error), error)
                        continue
                    tracked = self._sessions.get(reply.session_id) if reply else None
                    if tracked is not None:
                        self._deliver(tracked, reply)
            if result:
                try:  # what is read is done with: keep the stream short
                    await self.client.xtrim(stream, minid=last)
                except aioredis.RedisError as e:
                    log.warning("trimming replies: %s", e)

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
                        kind=ReplyKind.END,
                        error_code=ErrorCode.STATE_LOST,
                        error=f"session state lost: worker {tracked.handle.worker_id} stopped "
                        "answering",
                    ),
                )
