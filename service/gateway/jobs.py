"""Long videos as jobs: a store of jobs (`JobStore`, in memory or in Redis) and the runner that
every gateway runs.

A job is a /v1/segment request that answers at once (202) and is computed in the background: the
gateway checks the request and probes the video before accepting it, stores the video with the
job, and a runner takes queued jobs (at most `max_jobs_running` at once per gateway) through the
same code as /v1/segment: `probe_video`, `decode_frames` (decoding in a thread), `run_session`
within the gateway's admission (a job waits for room instead of answering 429), and
`build_response`. The result (the JSON /v1/segment answers) or the error (problem+json) is kept
`job_ttl_s` after the job ends.

Embedded (no Redis): jobs live in the gateway's memory and end with the process.

With Redis, a job survives the gateway that took it. Keys (`redis_streams.PREFIX` is `vidserve:`):
    job:<id>          hash: the job's record (status, progress, times, request, result, error)
    job:<id>:video    the uploaded video, until the job ends
    job:queue         stream of job ids; consumer group `job-runners`, one consumer per gateway
While queued or running both keys expire after ACTIVE_TTL_S (a job no gateway ever runs does not
stay forever); once the job ends the video is deleted and the record expires after `job_ttl_s`.
A gateway reads a job from the stream when it has a free slot; the entry stays pending (under
that gateway's name) while the job runs, and the runner touches it every few seconds. Another
gateway re-takes the entry (XCLAIM) when its owner's heartbeat has lapsed (the gateways heartbeat
for the janitor, redis_streams) and the entry has been idle `job_lease_s`: the job starts over
there, from the stored video. On drain (SIGTERM) a gateway does not wait for its running jobs: it
puts them back in the queue at once, and another gateway (or this one's successor) takes them.
"""

import asyncio
import base64
import contextlib
import json
import logging
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path

from service import requestid
from service.gateway.context import ServiceContext
from service.gateway.pipeline import Busy, run_session
from service.gateway.prompts import attach_prompt, read_video_prompt
from service.gateway.rest import error_parts, video_limits
from service.gateway.video_input import (
    InputError,
    decode_frames,
    probe_video,
)
from service.queue.base import NoWorker
from service.schemas import FrameResult, build_response

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
ACTIVE = (QUEUED, RUNNING)
PROGRESS_EVERY_S = 0.5  # progress is written at most this often (and at the end)


@dataclass
class JobRequest:
    """What the runner needs to run the request again, on any gateway: the form, checked."""

    model: str
    options: dict
    frame_stride: int = 1
    max_frames: int | None = None
    prompt_png: bytes | None = None
    prompt_rle: str | None = None
    prompt_frame: int | None = None
    request_id: str | None = None

    def to_json(self) -> str:
        data = asdict(self)
        if self.prompt_png is not None:
            data["prompt_png"] = base64.b64encode(self.prompt_png).decode()
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str | bytes) -> "JobRequest":
        data = json.loads(text)
        if data.get("prompt_png") is not None:
            data["prompt_png"] = base64.b64decode(data["prompt_png"])
        return cls(**data)


@dataclass
class Job:
    id: str
    model: str
    status: str = QUEUED
    frames_done: int = 0
    frames_total: int = 0
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    expires_at: float | None = None
    result: dict | None = None
    error: dict | None = None

    def view(self) -> dict:
        """The job as GET /v1/jobs/{id} answers it."""
        return asdict(self)


@dataclass
class Claimed:
    """A job a runner took: its request, and the video in a file of the runner's own (deleted when
    the job ends); `lease` names the job's queue entry (Redis)."""

    job: Job
    request: JobRequest
    video: Path
    lease: str | None = None


def problem_dict(status: int, title: str, detail: str) -> dict:
    return {"type": "about:blank", "title": title, "status": status, "detail": detail}


CANCELLED = problem_dict(499, "Cancelled", "the job was cancelled (DELETE /v1/jobs/{id})")


def new_job_id() -> str:
    return uuid.uuid4().hex


class JobStore(ABC):
    """Where jobs, their videos and results live, and the queue runners take them from."""

    async def start(self) -> None:  # noqa: B027 (optional)
        pass

    async def stop(self) -> None:  # noqa: B027 (optional)
        pass

    @abstractmethod
    async def create(self, job: Job, request: JobRequest, video: Path) -> None:
        """Store a queued job; the video file is the store's from now on."""

    @abstractmethod
    async def get(self, job_id: str) -> Job | None:
        """The job, or None when unknown or expired."""

    @abstractmethod
    async def claim(self, timeout_s: float) -> Claimed | None:
        """The next job to run (now RUNNING), waiting at most about `timeout_s`."""

    @abstractmethod
    async def update_progress(self, job_id: str, frames_done: int, frames_total: int) -> bool:
        """Record progress; False when the job is no longer running (cancelled, gone)."""

    @abstractmethod
    async def finish(self, job_id: str, result: dict, frames: int) -> bool:
        """The job is DONE with this result (unless it ended already: False)."""

    @abstractmethod
    async def fail(self, job_id: str, error: dict) -> bool:
        """The job FAILED with this problem (unless it ended already: False)."""

    @abstractmethod
    async def delete(self, job_id: str) -> bool:
        """Forget an ended job; False when unknown."""

    async def keep(self, claimed: Claimed) -> None:  # noqa: B027 (optional)
        """The runner still works on the job (renews its lease)."""

    @abstractmethod
    async def release(self, claimed: Claimed) -> None:
        """The runner gives a running job up (drain): queued again, from the start."""

    @abstractmethod
    async def let_go(self, claimed: Claimed) -> None:
        """The runner is done with the job, whatever its end (its queue entry goes)."""


# --- in memory -----------------------------------------------------------------------------------
class MemoryJobStore(JobStore):
    """The embedded default: jobs in this process (called from the event loop only)."""

    def __init__(self, ttl_s: float):
        self.ttl_s = ttl_s
        self.jobs: dict[str, Job] = {}
        self.requests: dict[str, JobRequest] = {}
        self.videos: dict[str, Path] = {}  # queued jobs' uploads
        self.queue: asyncio.Queue[str] = asyncio.Queue()

    async def create(self, job: Job, request: JobRequest, video: Path) -> None:
        self._forget_expired()
        self.jobs[job.id], self.requests[job.id], self.videos[job.id] = job, request, video
        self.queue.put_nowait(job.id)

    async def get(self, job_id: str) -> Job | None:
        self._forget_expired()
        return self.jobs.get(job_id)

    async def claim(self, timeout_s: float) -> Claimed | None:
        try:
            job_id = await asyncio.wait_for(self.queue.get(), timeout_s)
        except TimeoutError:
            return None
        job = self.jobs.get(job_id)
        if job is None or job.status != QUEUED:  # cancelled while queued
            return None
        job.status, job.updated_at = RUNNING, time.time()
        return Claimed(job, self.requests[job_id], self.videos.pop(job_id))

    async def update_progress(self, job_id: str, frames_done: int, frames_total: int) -> bool:
        job = self.jobs.get(job_id)
        if job is None or job.status != RUNNING:
            return False
        job.frames_done, job.frames_total, job.updated_at = frames_done, frames_total, time.time()
        return True

    async def finish(self, job_id: str, result: dict, frames: int) -> bool:
        return self._end(job_id, DONE, result=result, frames_done=frames, frames_total=frames)

    async def fail(self, job_id: str, error: dict) -> bool:
        return self._end(job_id, FAILED, error=error)

    async def delete(self, job_id: str) -> bool:
        self.requests.pop(job_id, None)
        return self.jobs.pop(job_id, None) is not None

    async def release(self, claimed: Claimed) -> None:
        pass  # the process ends: so do the jobs in its memory

    async def let_go(self, claimed: Claimed) -> None:
        pass

    def _end(self, job_id: str, status: str, **changes) -> bool:
        job = self.jobs.get(job_id)
        if job is None or job.status not in ACTIVE:
            return False
        now = time.time()
        for name, value in changes.items():
            setattr(job, name, value)
        job.status, job.updated_at, job.expires_at = status, now, now + self.ttl_s
        if (video := self.videos.pop(job_id, None)) is not None:  # never ran
            video.unlink(missing_ok=True)
        return True

    def _forget_expired(self) -> None:
        now = time.time()
        for job_id in [i for i, j in self.jobs.items() if j.expires_at and j.expires_at <= now]:
            self.jobs.pop(job_id)
            self.requests.pop(job_id, None)


# --- Redis ---------------------------------------------------------------------------------------
ACTIVE_TTL_S = 24 * 3600  # a queued or running job's keys: gone if no gateway runs it for a day
JOB_GROUP = "job-runners"

# Ends a job that is still queued or running (a cancelled job is not finished by its runner, and
# a finished one is not cancelled): KEYS job, video; ARGV status, fields (JSON), ttl.
_END = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'queued' and status ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], unpack(cjson.decode(ARGV[2])))
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('DEL', KEYS[2])
return 1
"""
# Sets fields of a job in one of the given states: KEYS job; ARGV states (JSON), fields (JSON).
_UPDATE_IF = """
local status = redis.call('HGET', KEYS[1], 'status')
for _, wanted in ipairs(cjson.decode(ARGV[1])) do
  if status == wanted then
    redis.call('HSET', KEYS[1], unpack(cjson.decode(ARGV[2])))
    return 1
  end
end
return 0
"""


def _flat(fields: dict) -> str:
    return json.dumps([str(x) for pair in fields.items() for x in pair])


def _optional_json(value) -> str:
    return "" if value is None else json.dumps(value)


class RedisJobStore(JobStore):
    """Jobs in Redis, shared by every gateway of the deployment (see the module's words)."""

    def __init__(self, url: str, ttl_s: float, lease_s: float, consumer: str):
        from service.queue.redis_streams import PREFIX

        self.url, self.ttl_s, self.lease_s, self.consumer = url, ttl_s, lease_s, consumer
        self.prefix = f"{PREFIX}job:"
        self.stream = f"{self.prefix}queue"
        self.client = None

    def job_key(self, job_id: str) -> str:
        return f"{self.prefix}{job_id}"

    def video_key(self, job_id: str) -> str:
        return f"{self.prefix}{job_id}:video"

    async def start(self) -> None:
        import redis.asyncio as aioredis

        self.client = aioredis.Redis.from_url(self.url)
        self._end = self.client.register_script(_END)
        self._update_if = self.client.register_script(_UPDATE_IF)
        with contextlib.suppress(Exception):  # BUSYGROUP: another gateway made it
            await self.client.xgroup_create(self.stream, JOB_GROUP, id="0", mkstream=True)

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    async def create(self, job: Job, request: JobRequest, video: Path) -> None:
        try:
            data = await asyncio.to_thread(video.read_bytes)
        finally:
            video.unlink(missing_ok=True)
        record = {
            k: _optional_json(v) if k in ("result", "error") else v for k, v in asdict(job).items()
        }
        record["expires_at"] = ""
        record["request"] = request.to_json()
        pipe = self.client.pipeline()
        pipe.hset(self.job_key(job.id), mapping=record)
        pipe.expire(self.job_key(job.id), ACTIVE_TTL_S)
        pipe.set(self.video_key(job.id), data, ex=ACTIVE_TTL_S)
        pipe.xadd(self.stream, {"id": job.id})
        await pipe.execute()

    async def get(self, job_id: str) -> Job | None:
        record = await self.client.hgetall(self.job_key(job_id))
        if not record:
            return None
        return _job_of(record)

    async def claim(self, timeout_s: float) -> Claimed | None:
        entry = await self._retake() or await self._next(timeout_s)
        if entry is None:
            return None
        lease, job_id = entry
        started = {"status": RUNNING, "frames_done": 0, "updated_at": time.time()}
        running = await self._update_if(
            keys=[self.job_key(job_id)], args=[json.dumps(ACTIVE), _flat(started)]
        )
        data = await self.client.get(self.video_key(job_id)) if running else None
        if data is None:  # cancelled, deleted or expired while queued
            await self._ack(lease)
            return None
        record = await self.client.hgetall(self.job_key(job_id))
        video = await asyncio.to_thread(_write_temp, data)
        return Claimed(_job_of(record), JobRequest.from_json(record[b"request"]), video, lease)

    async def _next(self, timeout_s: float) -> tuple[str, str] | None:
        """A queued job's entry, now pending under this gateway's name."""
        answer = await self.client.xreadgroup(
            JOB_GROUP, self.consumer, {self.stream: ">"}, count=1, block=int(timeout_s * 1000)
        )
        for _, entries in answer or []:
            for entry_id, fields in entries:
                return entry_id.decode(), fields[b"id"].decode()
        return None

    async def _retake(self) -> tuple[str, str] | None:
        """An entry of a gateway whose heartbeat lapsed, idle `lease_s`: now this gateway's."""
        from service.queue.redis_streams import gateway_alive_key

        idle_ms = int(self.lease_s * 1000)
        pending = await self.client.xpending_range(
            self.stream, JOB_GROUP, min="-", max="+", count=10, idle=idle_ms
        )
        for entry in pending:
            owner = entry["consumer"].decode()
            if owner == self.consumer or await self.client.exists(gateway_alive_key(owner)):
                continue
            taken = await self.client.xclaim(
                self.stream, JOB_GROUP, self.consumer, idle_ms, [entry["message_id"]]
            )
            for entry_id, fields in taken:
                if fields:  # an entry deleted meanwhile comes back without fields
                    log.info("job %s re-taken from gateway %s", fields[b"id"].decode(), owner)
                    return entry_id.decode(), fields[b"id"].decode()
        return None

    async def update_progress(self, job_id: str, frames_done: int, frames_total: int) -> bool:
        fields = {
            "frames_done": frames_done,
            "frames_total": frames_total,
            "updated_at": time.time(),
        }
        return bool(
            await self._update_if(
                keys=[self.job_key(job_id)], args=[json.dumps([RUNNING]), _flat(fields)]
            )
        )

    async def finish(self, job_id: str, result: dict, frames: int) -> bool:
        fields = {"result": json.dumps(result), "frames_done": frames, "frames_total": frames}
        return await self._end_job(job_id, DONE, fields)

    async def fail(self, job_id: str, error: dict) -> bool:
        return await self._end_job(job_id, FAILED, {"error": json.dumps(error)})

    async def _end_job(self, job_id: str, status: str, fields: dict) -> bool:
        now = time.time()
        fields = {**fields, "updated_at": now, "expires_at": now + self.ttl_s}
        ended = await self._end(
            keys=[self.job_key(job_id), self.video_key(job_id)],
            args=[status, _flat(fields), max(1, round(self.ttl_s))],
        )
        return bool(ended)

    async def delete(self, job_id: str) -> bool:
        return bool(await self.client.delete(self.job_key(job_id), self.video_key(job_id)))

    async def keep(self, claimed: Claimed) -> None:
        # Claiming one's own entry again resets its idle time: the job's lease.
        await self.client.xclaim(
            self.stream, JOB_GROUP, self.consumer, 0, [claimed.lease], justid=True
        )

    async def release(self, claimed: Claimed) -> None:
        queued = {"status": QUEUED, "frames_done": 0, "updated_at": time.time()}
        await self._update_if(
            keys=[self.job_key(claimed.job.id)], args=[json.dumps([RUNNING]), _flat(queued)]
        )
        pipe = self.client.pipeline()
        pipe.xack(self.stream, JOB_GROUP, claimed.lease)
        pipe.xdel(self.stream, claimed.lease)
        pipe.xadd(self.stream, {"id": claimed.job.id})
        await pipe.execute()

    async def let_go(self, claimed: Claimed) -> None:
        await self._ack(claimed.lease)

    async def _ack(self, lease: str) -> None:
        pipe = self.client.pipeline()
        pipe.xack(self.stream, JOB_GROUP, lease)
        pipe.xdel(self.stream, lease)
        await pipe.execute()


def _job_of(record: dict[bytes, bytes]) -> Job:
    text = {k.decode(): v.decode() for k, v in record.items() if k != b"request"}

    def optional(name: str, parse):
        return parse(text[name]) if text.get(name) else None

    return Job(
        id=text["id"],
        model=text["model"],
        status=text["status"],
        frames_done=int(text.get("frames_done") or 0),
        frames_total=int(text.get("frames_total") or 0),
        created_at=float(text["created_at"]),
        updated_at=float(text["updated_at"]),
        expires_at=optional("expires_at", float),
        result=optional("result", json.loads),
        error=optional("error", json.loads),
    )


def _write_temp(data: bytes) -> Path:
    with tempfile.NamedTemporaryFile(prefix="vidserve-job-", delete=False) as out:
        out.write(data)
    return Path(out.name)


# --- the runner ----------------------------------------------------------------------------------
class JobCancelled(Exception):
    """The job stopped being RUNNING under its runner (DELETE, or another gateway's end)."""


class JobService:
    """The store and this gateway's runner: what the routes call."""

    def __init__(self, ctx: ServiceContext, store: JobStore):
        self.ctx = ctx
        self.store = store
        self.slots = asyncio.Semaphore(ctx.settings.max_jobs_running)
        self.running: dict[str, asyncio.Task] = {}
        self._taker: asyncio.Task | None = None
        self._stopping = False

    @classmethod
    def for_context(cls, ctx: ServiceContext) -> "JobService":
        settings = ctx.settings
        if settings.redis_url:
            consumer = getattr(ctx.transport, "gateway_id", None) or uuid.uuid4().hex[:12]
            store = RedisJobStore(
                settings.redis_url, settings.job_ttl_s, settings.job_lease_s, consumer
            )
        else:
            store = MemoryJobStore(settings.job_ttl_s)
        return cls(ctx, store)

    async def start(self) -> None:
        await self.store.start()
        self._taker = asyncio.create_task(self._take_jobs())

    async def stop(self) -> None:
        """Take no more jobs; the running ones go back to the queue (not waited for). Safe to
        call twice."""
        if self._stopping:
            return
        self._stopping = True
        tasks = [t for t in (self._taker, *self.running.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.store.stop()

    async def submit(self, model: str, request: JobRequest, video: Path) -> Job:
        job = Job(new_job_id(), model)
        await self.store.create(job, request, video)
        log.info("job %s queued: model %s", job.id, model)
        return job

    async def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job (here or on another gateway); False if it had ended."""
        if not await self.store.fail(job_id, CANCELLED):
            return False
        if (task := self.running.get(job_id)) is not None:
            task.cancel()  # another gateway's runner sees it at its next progress
        log.info("job %s cancelled", job_id)
        return True

    async def _take_jobs(self) -> None:
        while True:
            await self.slots.acquire()
            try:
                claimed = await self.store.claim(timeout_s=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Redis away for a moment: try again
                log.warning("taking a job failed: %s", e)
                claimed = None
                await asyncio.sleep(1.0)
            if claimed is None:
                self.slots.release()
                continue
            task = asyncio.create_task(self._run(claimed))
            self.running[claimed.job.id] = task

    async def _run(self, claimed: Claimed) -> None:
        with requestid.using(claimed.request.request_id):  # the job's lines: the submit's id
            try:
                await self._run_to_end(claimed)
            finally:
                claimed.video.unlink(missing_ok=True)
                self.running.pop(claimed.job.id, None)
                self.slots.release()

    async def _run_to_end(self, claimed: Claimed) -> None:
        job_id = claimed.job.id
        keeper = asyncio.create_task(self._keep(claimed))
        try:
            log.info("job %s running", job_id)
            result, frames = await run_job(self.ctx, claimed, self.store)
            if await self.store.finish(job_id, result, frames):
                log.info("job %s done: %d frames", job_id, frames)
        except asyncio.CancelledError:
            if self._stopping:
                await self.store.release(claimed)
                log.info("job %s back in the queue: this gateway stops", job_id)
                return
            # Else cancelled by DELETE (the store says so already): let its entry go.
        except JobCancelled:
            pass
        except Exception as e:
            error = _problem_of(e)
            if error["status"] == 500:
                log.exception("job %s failed", job_id)
            else:
                log.info("job %s failed: %s", job_id, error["detail"])
            await self.store.fail(job_id, error)
        finally:
            keeper.cancel()
        with contextlib.suppress(Exception):  # not acknowledged: the entry is re-taken later
            await self.store.let_go(claimed)

    async def _keep(self, claimed: Claimed) -> None:
        every = max(0.2, self.ctx.settings.job_lease_s / 3)
        while True:
            await asyncio.sleep(every)
            try:
                await self.store.keep(claimed)
            except Exception as e:
                log.warning("job %s: renewing its lease failed: %s", claimed.job.id, e)


def _problem_of(error: Exception) -> dict:
    """The problem+json a failed job shows, as /v1/segment would answer the same failure."""
    if isinstance(error, NoWorker):
        return problem_dict(503, "No worker", str(error))
    return problem_dict(*error_parts(error))


async def run_job(ctx: ServiceContext, claimed: Claimed, store: JobStore) -> tuple[dict, int]:
    """Run the job's session as /v1/segment does; (the SegmentResponse JSON, frames done)."""
    request, video = claimed.request, claimed.video
    limits = video_limits(ctx)
    stride, max_frames = request.frame_stride, request.max_frames
    probe = await asyncio.to_thread(probe_video, video, limits, stride, max_frames)
    total = probe.frames  # from the header, read once by probe_video
    prompt = await asyncio.to_thread(_prompt_of, ctx, request)
    if prompt is not None:
        prompt.check_fits(probe.height, probe.width, stride, max_frames)
    await store.update_progress(claimed.job.id, 0, total)
    reservation = await _admitted(ctx)
    try:
        frames = attach_prompt(decode_frames(video, probe, limits, stride, max_frames), prompt)
        events = await _collect(ctx, claimed, store, frames, total)
    finally:
        reservation.release()
    if not events:
        raise InputError(422, "Empty video", "the video has no frames to process")
    answer = build_response(events, width=probe.width, height=probe.height, fps=probe.fps)
    frames_done = sum(isinstance(e, FrameResult) for e in events)
    return answer.model_dump(mode="json"), frames_done


async def _collect(ctx, claimed: Claimed, store: JobStore, frames, total: int) -> list:
    results = run_session(
        ctx.transport,
        claimed.request.model,
        claimed.request.options,
        frames,
        ctx.admission.window,
        on_frame_latency=ctx.observe_frame,
    )
    events, done, written = [], 0, 0.0
    try:
        async for event in results:
            events.append(event)
            if isinstance(event, FrameResult):
                done += 1
                if time.monotonic() - written >= PROGRESS_EVERY_S:
                    written = time.monotonic()
                    if not await store.update_progress(claimed.job.id, done, max(total, done)):
                        raise JobCancelled()
    finally:
        await results.aclose()  # closes the session: frames not yet sent are never sent
    return events


async def _admitted(ctx: ServiceContext):
    """A reservation in the gateway's admission: a job waits for room (it never answers 429)."""
    while True:
        try:
            return ctx.admission.acquire()
        except Busy as busy:
            await asyncio.sleep(busy.retry_after_s)


def _prompt_of(ctx: ServiceContext, request: JobRequest):
    given = request.prompt_png is not None or request.prompt_rle is not None
    limits = (ctx.settings.max_height, ctx.settings.max_width)
    return read_video_prompt(
        request.model,
        given,
        request.prompt_png,
        request.prompt_rle,
        request.prompt_frame if given else None,
        limits,
    )
