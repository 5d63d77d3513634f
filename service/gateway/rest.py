"""The REST gateway (FastAPI): POST /v1/segment, GET /v1/models, health, readiness, metrics;
the jobs routes (/v1/jobs: service.gateway.jobs_api) take the same form (`SegmentForm`).

The upload may be a still image (JPEG, PNG, WebP, BMP): it is answered as a one-frame video
(service.gateway.image_input), and rendered as a PNG or a one-frame mp4.

Every error is RFC 9457 problem+json: 400 bad parameters (a prompt that cannot be read), 404
unknown model, 406 an `Accept` the model cannot answer (service.gateway.media: a zip of a
model that is neither VOS nor panoptic, an unknown media type), 413 too large, 415 neither a
video nor a still image of a supported format, 422 undecodable video or image, an image too
small, or input that does not fit the model (a prompt of another size, an empty prompt mask, a
prompt frame the video does not have), 429 busy (with Retry-After), 503 no worker or session
state lost.
"""

import asyncio
import contextlib
import json
import logging
import re
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, File, Form, Header, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi_offline import FastAPIOffline
from starlette.background import BackgroundTask

from service.gateway.context import ServiceContext
from service.gateway.guard import MULTIPART_OVERHEAD, Guard
from service.gateway.media import JSON, MP4, NDJSON, PNG, ZIP, NotAcceptable, acceptable
from service.gateway.pipeline import Busy, SessionError, run_session
from service.gateway.prompts import VideoPrompt, attach_prompt, read_video_prompt
from service.gateway.video_input import InputError, VideoLimits, decode_frames, probe_video
from service.queue.base import NoWorker
from service.queue.messages import ErrorCode
from service.schemas import Event, FrameResult, SegmentResponse, build_response
from service.settings import api_keys
from service.worker.options import given_options
from service.worker.runner import ModelInfo
from service.writers.coco_panoptic import coco_panoptic_zip
from service.writers.davis import davis_zip

log = logging.getLogger(__name__)

PROBLEM = "application/problem+json"

# The status each worker error code gets over REST.
HTTP_STATUS = {
    ErrorCode.INVALID_ARGUMENT: 422,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.STATE_LOST: 503,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.RESOURCE_EXHAUSTED: 429,
    ErrorCode.INTERNAL: 500,
}

_ERROR_RESPONSES = {
    status: {"description": text, "content": {PROBLEM: {}}}
    for status, text in [
        (400, "Bad parameters or an empty upload"),
        (404, "Unknown model"),
        (
            406,
            "An Accept the model cannot answer: a zip (DAVIS PNGs of VOS models, COCO "
            "panoptic PNGs and JSON of panoptic models) of another model, an unknown type",
        ),
        (413, "Upload, video length or resolution (of a video or an image) over the limit"),
        (415, "Neither a video nor a JPEG, PNG, WebP or BMP image (a GIF, an animated image)"),
        (
            422,
            "Undecodable video or image, an image under 16 pixels a side, or frames or a prompt "
            "that do not fit the model",
        ),
        (429, "Busy: retry after the Retry-After seconds"),
        (503, "No worker serves the model, or the session's worker died"),
    ]
}


def problem(status: int, title: str, detail: str, headers: dict | None = None) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


@dataclass
class SegmentForm:
    """The multipart form of a video request: POST /v1/segment and POST /v1/jobs take the same."""

    video: UploadFile
    model: str | None = None
    score_threshold: float | None = None
    frame_stride: int = 1
    max_frames: int | None = None
    prompt: UploadFile | None = None
    prompt_rle: str | None = None
    prompt_frame: int | None = None
    action_stride: float | None = None
    action_categories: str | None = None
    action_min_score: float | None = None
    action_bank_window: float | None = None
    short_edge: int | None = None
    _prompt_data: bytes | None = field(default=None, repr=False)

    @property
    def options(self) -> dict:
        """The options the worker gets (the model's defaults for what is not given; the worker
        checks them: a model that does not take one answers 400)."""
        return given_options(
            score_threshold=self.score_threshold,
            action_stride=self.action_stride,
            action_categories=self.action_categories,
            action_min_score=self.action_min_score,
            action_bank_window=self.action_bank_window,
            short_edge=self.short_edge,
        )

    async def prompt_png(self, max_bytes: int) -> bytes | None:
        """The prompt PNG's bytes (read once; 413 over the upload limit), None when not sent."""
        if self.prompt is not None and self._prompt_data is None:
            data = await self.prompt.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise InputError(413, "Prompt too large", "the prompt PNG exceeds the upload limit")
            self._prompt_data = data
        return self._prompt_data


async def segment_form(
    video: Annotated[
        UploadFile,
        File(
            description="The video (mp4, mov, mkv, webm, ...) or a still image (JPEG, PNG, WebP, "
            "BMP: answered as one frame)"
        ),
    ],
    model: Annotated[
        str | None, Form(description="Model name; see GET /v1/models", examples=["masktrack"])
    ] = None,
    score_threshold: Annotated[
        float | None,
        Form(
            ge=0.0,
            le=1.0,
            description=("Report objects scoring at least this (model default when absent)"),
        ),
    ] = None,
    frame_stride: Annotated[int, Form(ge=1, le=1000, description="Process every n-th frame")] = 1,
    max_frames: Annotated[
        int | None,
        Form(ge=1, description=("Process at most this many frames (the rest are ignored)")),
    ] = None,
    prompt: Annotated[
        UploadFile | None,
        File(
            description="VOS models: an indexed (palette) or grayscale PNG of the prompted "
            "frame, pixel value = object id (1..255), 0 = background"
        ),
    ] = None,
    prompt_rle: Annotated[
        str | None,
        Form(
            description='VOS models, instead of `prompt`: JSON {"<object id>": {"size": '
            '[h, w], "counts": "<COCO RLE>"}, ...}'
        ),
    ] = None,
    prompt_frame: Annotated[
        int | None,
        Form(ge=0, description="VOS models: the frame the prompt marks (default 0)"),
    ] = None,
    action_stride: Annotated[
        float | None,
        Form(
            description="Action models: seconds between key frames, on the video's clock "
            "(default 1: whole seconds, as AVA; 0.01 to 3600)"
        ),
    ] = None,
    action_categories: Annotated[
        str | None,
        Form(
            description="Action models: comma-separated categories of the tracked objects "
            "that get actions (default: all)"
        ),
    ] = None,
    action_min_score: Annotated[
        float | None,
        Form(description="Action models: leave out labels scoring below this (default 0: all)"),
    ] = None,
    action_bank_window: Annotated[
        float | None,
        Form(
            description="Action models with a feature bank: the past seconds of each track's "
            "features it reads (default and most: the window it was trained with; 0: off)"
        ),
    ] = None,
    short_edge: Annotated[
        int | None,
        Form(
            description="VOS models: the short side, in pixels, at which frames are segmented "
            "(default: the checkpoint's; 64 up to it): smaller is faster, masks coarser"
        ),
    ] = None,
) -> SegmentForm:
    """The form as a dependency (FastAPI validates each field: 400 Bad parameters)."""
    return SegmentForm(
        video,
        model,
        score_threshold,
        frame_stride,
        max_frames,
        prompt,
        prompt_rle,
        prompt_frame,
        action_stride,
        action_categories,
        action_min_score,
        action_bank_window,
        short_edge,
    )


class Refused(Exception):
    """A request answered early with this problem+json (no worker, unknown model)."""

    def __init__(self, response: JSONResponse):
        super().__init__(response.status_code)
        self.response = response


async def served_model(ctx: ServiceContext, requested: str | None) -> ModelInfo:
    """The model a request names (the default one when it names none); Refused with 503 while
    no worker serves, 404 for a model not served."""
    name = requested or ctx.settings.default_model
    served = {m.name: m for m in await ctx.transport.models()}
    if not served:
        raise Refused(
            problem(
                503,
                "No worker",
                "no worker is serving yet; retry shortly",
                {"Retry-After": str(ctx.settings.retry_after_s)},
            )
        )
    if name not in served:
        known = ", ".join(sorted(served))
        raise Refused(
            problem(404, "Unknown model", f"model '{name}' is not served; served: {known}")
        )
    return served[name]


def video_limits(ctx: ServiceContext) -> VideoLimits:
    return VideoLimits(
        ctx.settings.max_video_frames, ctx.settings.max_width, ctx.settings.max_height
    )


def create_app(ctx: ServiceContext) -> FastAPI:
    # /docs (Swagger UI) and /redoc load their scripts, styles and icon from this server (the
    # fastapi-offline package ships them), so that they work where no CDN can be reached.
    app = FastAPIOffline(
        title="vidserve",
        version="0.1.0",
        description="Video perception models over REST: masks, track ids and labels per frame.",
        # No badge from the online validator (swagger.io): the page calls nothing outside.
        swagger_ui_parameters={"validatorUrl": None},
    )
    app.state.ctx = ctx
    _add_error_handlers(app, ctx)
    # Outermost: request id, API key, body size and pace, before FastAPI reads a byte of the body.
    app.add_middleware(
        Guard,
        api_keys=api_keys(ctx.settings),
        max_body_bytes=ctx.settings.max_upload_bytes + MULTIPART_OVERHEAD,
        body_timeout_s=ctx.settings.body_timeout_s,
        body_deadline_s=ctx.settings.body_deadline_s,
        on_refused=lambda status: ctx.metrics.errors.labels(str(status)).inc(),
    )

    from service.gateway.web.router import router as web_router  # the page, its files, samples

    app.include_router(web_router)

    @app.get("/healthz", tags=["operations"], summary="The process is up")
    async def healthz():
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["operations"],
        summary="A worker has a model loaded",
        responses={503: _ERROR_RESPONSES[503]},
    )
    async def readyz():
        models = await ctx.transport.models()
        if not models:
            return problem(503, "Not ready", "no worker has a model loaded yet")
        return {"status": "ready", "models": [m.name for m in models]}

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics")
    async def metrics():
        ctx.refresh_gauges()
        return Response(ctx.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", tags=["models"], summary="The models served now")
    async def models():
        return {
            "models": [
                {
                    "name": m.name,
                    "task": m.task,
                    "version": m.version,
                    "classes": list(m.classes),
                    "takes_prompt": m.takes_prompt,
                    "stages": [{"name": n, "version": v} for n, v in m.stage_list()],
                    "actions": list(m.actions),
                }
                for m in await ctx.transport.models()
            ]
        }

    @app.post(
        "/v1/segment",
        tags=["segmentation"],
        summary="Segment and track the objects of a video",
        response_model=SegmentResponse,
        responses={
            200: {
                "content": {NDJSON: {}, MP4: {}, PNG: {}, ZIP: {}},
                "description": 'JSON (default); NDJSON lines {"frame": ...} then '
                '{"summary": ...} with Accept: application/x-ndjson; '
                "an annotated H.264 mp4 with Accept: video/mp4 (a one-frame mp4 for an "
                "image); for an image, the annotated image as a PNG with Accept: image/png; "
                "with Accept: application/zip, VOS models: DAVIS palette PNGs of every "
                "frame (00000.png, ...) in a zip; panoptic models: COCO panoptic PNGs and "
                "their JSON (panoptic.json, panoptic/video/00000.png, ...) in a zip",
            },
            **_ERROR_RESPONSES,
        },
    )
    async def segment(
        request: Request,
        form: Annotated[SegmentForm, Depends(segment_form)],
        accept: Annotated[str | None, Header()] = None,
    ):
        info = await served_model(ctx, form.model)
        try:
            answer_types = acceptable(accept, info.task)
        except NotAcceptable as error:
            return problem(406, "Not acceptable", f"model '{info.name}': {error.detail}")
        video_prompt = await read_prompt(ctx, info, form)
        reservation = ctx.admission.acquire()  # Busy -> 429
        cleanup = Cleanup(reservation)
        try:
            cleanup.upload = await save_upload(form.video, ctx.settings.max_upload_bytes)
            response = await _answer(
                request,
                ctx,
                cleanup,
                info,
                form.options,
                form.frame_stride,
                form.max_frames,
                answer_types,
                video_prompt,
            )
            cleanup.handed_over = isinstance(response, StreamingResponse)
            return response
        finally:
            if not cleanup.handed_over:
                await cleanup()

    # Long videos as jobs: the same form; the runner starts with the gateways (service.app).
    from service.gateway.jobs import JobService
    from service.gateway.jobs_api import jobs_router

    app.state.jobs = JobService.for_context(ctx)
    app.include_router(jobs_router(ctx, app.state.jobs))
    return app


class Cleanup:
    """What a request holds until its answer is complete: its admission reservation, its upload
    file and its session. Safe to call twice; a streamed answer runs it when the stream ends,
    also when the client went away."""

    def __init__(self, reservation):
        self.reservation = reservation
        self.upload: Path | None = None
        self.results: AsyncIterator | None = None
        self.handed_over = False

    async def __call__(self) -> None:
        if self.results is not None:
            results, self.results = self.results, None
            await results.aclose()  # closes the session: unsent frames are never sent
        self.reservation.release()
        if self.upload is not None:
            self.upload.unlink(missing_ok=True)


async def _answer(
    request,
    ctx: ServiceContext,
    cleanup: Cleanup,
    info: ModelInfo,
    options: dict,
    stride: int,
    max_frames: int | None,
    accept: list[str],
    prompt: VideoPrompt | None = None,
):
    """The answer in the first of the `accept` media types (service.gateway.media) that fits:
    image/png only for an image upload, else the next."""
    limits = video_limits(ctx)
    started = time.monotonic()
    probe = await asyncio.to_thread(probe_video, cleanup.upload, limits, stride, max_frames)
    ctx.metrics.stage_seconds.labels("decode").observe(time.monotonic() - started)
    if prompt is not None:
        prompt.check_fits(probe.height, probe.width, stride, max_frames)
    frames = attach_prompt(decode_frames(cleanup.upload, probe, limits, stride, max_frames), prompt)
    results = run_session(
        ctx.transport,
        info.name,
        options,
        frames,
        ctx.admission.window,
        on_frame_latency=ctx.observe_frame,
    )
    cleanup.results = results
    first = await _first(results)  # errors at session start still get their own status
    if NDJSON in accept:
        return StreamingResponse(
            _ndjson(ctx, first, results, probe),
            media_type=NDJSON,
            background=BackgroundTask(cleanup),
        )
    events = [first] + await _collect_until_disconnect(request, results)
    started = time.monotonic()
    # PNGs, H.264 and the JSON of every frame are CPU work: off the event loop, so that the
    # other clients' frames and answers go on meanwhile.
    response = await asyncio.to_thread(encoded_answer, events, probe, info, accept, cleanup.upload)
    ctx.metrics.stage_seconds.labels("encode").observe(time.monotonic() - started)
    return response


def encoded_answer(
    events: list[Event], probe, info: ModelInfo, accept: list[str], upload: Path
) -> Response:
    """The whole answer of a session in the first acceptable type that is not a stream: a zip
    (DAVIS or COCO panoptic PNGs), an image's results drawn (a PNG, image/png winning over
    video/mp4, or a one-frame mp4), the video drawn (mp4), else JSON."""
    from service.gateway.render import render_still, render_video

    answer = _response(events, probe)
    if ZIP in accept:
        if info.task == "panoptic":
            body = coco_panoptic_zip(answer, info.classes)
        else:
            body = davis_zip(answer.frames, probe.height, probe.width)
        filename = "panoptic.zip" if info.task == "panoptic" else "davis.zip"
        headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
        return Response(body, media_type=ZIP, headers=headers)
    if probe.image is not None and (PNG in accept or MP4 in accept):
        as_png = PNG in accept
        body = render_still(probe.image, answer.frames, as_png)
        return Response(body, media_type=PNG if as_png else MP4)
    if MP4 in accept:
        return Response(render_video(upload, answer.frames, probe.fps), media_type=MP4)
    # pydantic's own encoder: the same JSON as json.dumps of model_dump, five times faster.
    return Response(answer.model_dump_json(), media_type=JSON)


async def read_prompt(
    ctx: ServiceContext, info: ModelInfo, form: SegmentForm
) -> VideoPrompt | None:
    """The request's prompt, read and checked against the model (400 / 413 / 422 otherwise)."""
    data = await form.prompt_png(ctx.settings.max_upload_bytes)
    limits = (ctx.settings.max_height, ctx.settings.max_width)
    return await asyncio.to_thread(
        read_video_prompt,
        info.name,
        info.takes_prompt,
        data,
        form.prompt_rle,
        form.prompt_frame,
        limits,
    )


async def _first(results: AsyncIterator[Event]) -> Event:
    try:
        return await anext(results)
    except StopAsyncIteration:
        raise InputError(422, "Empty video", "the video has no frames to process") from None


async def _collect_until_disconnect(request: Request, results: AsyncIterator[Event]) -> list:
    """All the results, unless the client goes away first: then the session closes at once (the
    generator's cleanup: frames not yet sent are never sent) and ClientGone is raised.

    A watcher waits on the connection itself: the client may hang up while no result arrives
    (a clip model's look-ahead, a slow frame), and asking between results would notice late."""

    async def collect() -> list:
        return [event async for event in results]

    async def hung_up() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    collector, watcher = asyncio.create_task(collect()), asyncio.create_task(hung_up())
    try:
        done, _ = await asyncio.wait({collector, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if collector in done:
            return collector.result()
        collector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await collector
        await results.aclose()
        log.info("client disconnected: remaining frames cancelled")
        raise ClientGone()
    finally:
        watcher.cancel()


class ClientGone(Exception):
    """The client hung up before its answer was ready: nobody to answer."""


def _ndjson_line(event: Event) -> str:
    key = "frame" if isinstance(event, FrameResult) else "actions"
    return json.dumps({key: event.model_dump(mode="json")}) + "\n"


async def _ndjson(ctx, first, results, probe):
    """One line per event as it comes ({"frame": ...} or {"actions": ...}), then the summary."""
    events = [first]
    try:
        yield _ndjson_line(first)
        async for event in results:
            events.append(event)
            yield _ndjson_line(event)
        summary = _response(events, probe).model_dump(mode="json", exclude={"frames"})
        yield json.dumps({"summary": summary}) + "\n"
    except (SessionError, InputError) as e:  # the status line is sent: report in the stream
        status, title, detail = error_parts(e)
        ctx.metrics.errors.labels(str(status)).inc()
        yield (
            json.dumps(
                {
                    "error": {
                        "type": "about:blank",
                        "title": title,
                        "status": status,
                        "detail": detail,
                    }
                }
            )
            + "\n"
        )


def _response(events: list[Event], probe) -> SegmentResponse:
    return build_response(events, width=probe.width, height=probe.height, fps=probe.fps)


_PLAIN_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}")


async def save_upload(video: UploadFile, max_bytes: int) -> Path:
    """Copy the upload to a file of our own (PyAV reads by path), enforcing the size limit.
    The client's file name gives the temporary file its suffix (a hint for the demuxer) only when
    it is a plain one (".mp4"): a name with a NUL byte, a slash or other odd characters is not
    ours to put in a path."""
    name = video.filename or ""
    suffix = name[name.rfind(".") :] if "." in name else ""
    if not _PLAIN_SUFFIX.fullmatch(suffix):
        suffix = ""
    with tempfile.NamedTemporaryFile(prefix="vidserve-", suffix=suffix, delete=False) as out:
        path = Path(out.name)
        try:
            video.file.seek(0)
            copied = 0
            while chunk := video.file.read(1 << 20):
                copied += len(chunk)
                if copied > max_bytes:
                    raise InputError(
                        413, "Upload too large", f"the upload exceeds {max_bytes} bytes"
                    )
                out.write(chunk)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
    return path


def error_parts(error: Exception) -> tuple[int, str, str]:
    if isinstance(error, InputError):
        return error.status, error.title, error.detail
    if isinstance(error, SessionError):
        if error.code == ErrorCode.INVALID_ARGUMENT and error.frame_index is None:
            # Refused when the session opened: its options are bad parameters, as a form
            # field out of range is (a frame or prompt that does not fit stays 422).
            return 400, "Bad parameters", error.message
        status = HTTP_STATUS.get(error.code, 500)
        title = {
            503: "Session failed",
            422: "Input does not fit the model",
            404: "Unknown model",
            429: "Busy",
        }.get(status, "Internal error")
        return status, title, error.message
    return 500, "Internal error", "internal error"


def _add_error_handlers(app: FastAPI, ctx: ServiceContext) -> None:
    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        response = await call_next(request)
        # The route's template (/v1/jobs/{job_id}): one series per route, not one per job.
        path = getattr(request.scope.get("route"), "path", request.url.path)
        ctx.metrics.requests.labels(path, str(response.status_code)).inc()
        return response

    @app.exception_handler(RequestValidationError)
    async def bad_parameters(request, exc: RequestValidationError):
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", [])[1:]) or "request"
            parts.append(f"{where}: {err.get('msg')}")
        return problem(400, "Bad parameters", "; ".join(parts))

    @app.exception_handler(InputError)
    @app.exception_handler(SessionError)
    async def input_error(request, exc):
        status, title, detail = error_parts(exc)
        ctx.metrics.errors.labels(str(status)).inc()
        headers = {"Retry-After": str(ctx.settings.retry_after_s)} if status == 429 else None
        return problem(status, title, detail, headers)

    @app.exception_handler(Busy)
    async def busy(request, exc: Busy):
        ctx.metrics.errors.labels("429").inc()
        return problem(
            429,
            "Busy",
            f"the service is at capacity; retry after {exc.retry_after_s} s",
            {"Retry-After": str(exc.retry_after_s)},
        )

    @app.exception_handler(Refused)
    async def refused(request, exc: Refused):
        return exc.response

    @app.exception_handler(ClientGone)
    async def client_gone(request, exc: ClientGone):
        # Nobody reads this; 499 (nginx's "client closed request") names it in the access log.
        return Response(status_code=499)

    @app.exception_handler(NoWorker)
    async def no_worker(request, exc: NoWorker):
        ctx.metrics.errors.labels("503").inc()
        return problem(503, "No worker", str(exc))
