"""The gRPC gateway (grpc.aio): StreamFrames (bidirectional), SegmentVideo, ListModels, plus the
standard health service and server reflection.

Flow control: the stream's next frame is read only when the session's window has room, so a client
that sends faster than the worker keeps up is slowed by gRPC's own flow control, never dropped.

Prompts (VOS models): any frame of StreamFrames may carry ObjectPrompts; they are checked as REST
checks its prompts (service.gateway.prompts), and a bad one ends the stream with INVALID_ARGUMENT.
SegmentVideo has no field for a prompt, so a prompted model is refused there.
"""

import asyncio
import errno
import inspect
import logging
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service import requestid
from service.gateway.context import ServiceContext
from service.gateway.grpc_convert import event_to_proto, response_to_proto, summary_to_proto
from service.gateway.grpc_gen import vidserve_pb2 as pb
from service.gateway.grpc_gen import vidserve_pb2_grpc as pb_grpc
from service.gateway.guard import key_matches, presented_key
from service.gateway.pipeline import Busy, InputFrame, SessionError, run_session
from service.gateway.prompts import bad_prompt, check_size, masks_from_messages, to_rle
from service.gateway.video_input import InputError, VideoLimits, decode_frames, probe_video
from service.images import ImageError, decode_image, image_size
from service.queue.base import NoWorker
from service.queue.messages import ErrorCode
from service.schemas import FrameResult, build_response, summarize_tracks
from service.settings import Settings, api_keys
from service.worker.runner import ModelInfo

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["VideoSegmentation"].full_name
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
# Frames up to this many pixels (by their header) decode in the event loop, in well under a
# millisecond or two; larger ones in a thread, so that no frame holds up the other clients.
INLINE_DECODE_PIXELS = 640 * 480
# The clock of stream frames that carry no time (SessionConfig.fps overrides it).
DEFAULT_STREAM_FPS = 25.0
MAX_STREAM_FPS = 1000.0

GRPC_CODE = {
    ErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.STATE_LOST: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
}


class VideoSegmentationServicer(pb_grpc.VideoSegmentationServicer):
    def __init__(self, ctx: ServiceContext):
        self.ctx = ctx

    async def StreamFrames(self, request_iterator, context):  # noqa: N802 - gRPC's name
        config = await _first_config(request_iterator, context, "SessionConfig")
        model, options = await self._session_config(config, context)
        name = model.name
        async with _Reserved(self.ctx, context):
            # Admitted: a client that waits for this before sending frames always sees the
            # true status of a refused stream (not a failed write).
            await context.send_initial_metadata(
                (("vidserve-session", "accepted"), (requestid.HEADER, requestid.current()))
            )
            fps = config.fps if config.HasField("fps") else DEFAULT_STREAM_FPS
            frames = _stream_frames(request_iterator, self.ctx, model, fps)
            events = []
            try:
                async for event in run_session(
                    self.ctx.transport,
                    name,
                    options,
                    frames,
                    self.ctx.admission.window,
                    on_frame_latency=self.ctx.observe_frame,
                ):
                    if config.summary:
                        events.append(event)
                    yield event_to_proto(event)
                if config.summary:
                    frames_seen = [e for e in events if isinstance(e, FrameResult)]
                    yield summary_to_proto(summarize_tracks(frames_seen))
            except (SessionError, InputError, NoWorker) as e:
                await _abort(context, e, self.ctx)

    async def SegmentVideo(self, request_iterator, context):  # noqa: N802
        config = await _first_config(request_iterator, context, "VideoConfig")
        model, options = await self._session_config(config.session, context)
        name = model.name
        if model.takes_prompt:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"model '{name}' needs a prompt, which SegmentVideo cannot carry: send the "
                "frames with StreamFrames, prompts on the frames they mark",
            )
        if config.frame_stride < 0 or config.max_frames < 0:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "frame_stride and max_frames must be >= 0"
            )
        settings = self.ctx.settings
        limits = VideoLimits(settings.max_video_frames, settings.max_width, settings.max_height)
        async with _Reserved(self.ctx, context):
            path = None
            try:
                path = await _receive_file(request_iterator, settings.max_upload_bytes)
                stride, most = max(1, config.frame_stride), config.max_frames or None
                probe = await asyncio.to_thread(probe_video, path, limits, stride, most)
                frames = decode_frames(path, probe, limits, stride, most)
                events = [
                    e
                    async for e in run_session(
                        self.ctx.transport,
                        name,
                        options,
                        frames,
                        self.ctx.admission.window,
                        on_frame_latency=self.ctx.observe_frame,
                    )
                ]
                if not events:
                    raise InputError(422, "Empty video", "the video has no frames to process")
                # The whole answer's messages are CPU work: off the event loop.
                return await asyncio.to_thread(whole_answer, events, probe)
            except (SessionError, InputError, NoWorker) as e:
                await _abort(context, e, self.ctx)
            finally:
                if path is not None:
                    path.unlink(missing_ok=True)

    async def ListModels(self, request, context):  # noqa: N802
        return pb.ListModelsResponse(
            models=[
                pb.ModelInfo(
                    name=m.name,
                    task=m.task,
                    version=m.version,
                    classes=list(m.classes),
                    takes_prompt=m.takes_prompt,
                    stages=[pb.Stage(name=n, version=v) for n, v in m.stage_list()],
                    actions=list(m.actions),
                )
                for m in await self.ctx.transport.models()
            ]
        )

    async def _session_config(self, config, context) -> tuple[ModelInfo, dict]:
        """The served model the config names (NOT_FOUND otherwise) and its options."""
        name = config.model or self.ctx.settings.default_model
        served = {m.name: m for m in await self.ctx.transport.models()}
        if name not in served:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"model '{name}' is not served; served: {', '.join(sorted(served)) or 'none yet'}",
            )
        options = {}
        if config.HasField("score_threshold"):
            if not 0.0 <= config.score_threshold <= 1.0:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, "score_threshold must be in [0, 1]"
                )
            options["score_threshold"] = config.score_threshold
        if config.HasField("fps") and not 0.0 < config.fps <= MAX_STREAM_FPS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"fps must be in (0, {MAX_STREAM_FPS:g}]"
            )
        # The worker checks the model's options (a model without an action stage refuses the
        # action ones, a model that is not VOS short_edge).
        for option in ("action_stride", "action_min_score", "action_bank_window", "short_edge"):
            if config.HasField(option):
                options[option] = getattr(config, option)
        if config.action_categories:
            options["action_categories"] = config.action_categories
        return served[name], options


async def _first_config(requests, context, config_type: str):
    """The config that must open a client stream (the INVALID_ARGUMENT abort if it does not)."""
    first = await anext(aiter(requests), None)
    if first is None or first.WhichOneof("kind") != "config":
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the first message of a stream must be a {config_type}",
        )
    return first.config


class _Reserved:
    """Admission for one call: RESOURCE_EXHAUSTED when the gateway is full."""

    def __init__(self, ctx: ServiceContext, context):
        self.ctx, self.context, self.reservation = ctx, context, None

    async def __aenter__(self):
        try:
            self.reservation = self.ctx.admission.acquire()
        except Busy as e:
            self.ctx.metrics.errors.labels("resource_exhausted").inc()
            self.context.set_trailing_metadata(
                (("retry-after", str(e.retry_after_s)), (requestid.HEADER, requestid.current()))
            )
            await self.context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"busy: retry after {e.retry_after_s} s"
            )
        return self

    async def __aexit__(self, *exc):
        if self.reservation is not None:
            self.reservation.release()


async def _stream_frames(
    requests, ctx: ServiceContext, model: ModelInfo, fps: float = DEFAULT_STREAM_FPS
) -> AsyncIterator[InputFrame]:
    """Decode the stream's frames; the first frame fixes the size the others must have.

    An image's size is read from its header and checked against the limits before it is decoded,
    and decoding runs in a thread: a small file claiming a huge image costs nothing, and no frame
    holds up the event loop (the other clients)."""
    size = None
    count = 0
    last_index = -1
    prompted: set[int] = set()  # objects prompted so far: they may be marked absent later
    settings = ctx.settings
    async for request in requests:
        if request.WhichOneof("kind") != "frame":
            raise InputError(
                400,
                "Bad message",
                f"message {count + 1} after the config is not "
                "a frame (only the first message may be a config)",
            )
        frame = request.frame
        index = frame.frame_index if frame.HasField("frame_index") else count
        if index <= last_index:
            raise InputError(
                400,
                "Frame index not increasing",
                f"frame_index {index} follows {last_index}: indices must increase",
            )
        last_index = index
        decode_args = (frame.image, index, settings.max_width, settings.max_height)
        claimed = image_size(frame.image)
        if claimed is not None and claimed[0] * claimed[1] <= INLINE_DECODE_PIXELS:
            image = decode_frame_image(*decode_args)  # a small image: cheaper than a thread hop
        else:
            image = await asyncio.to_thread(decode_frame_image, *decode_args)
        h, w = image.shape[:2]
        if size is None:
            size = (h, w)
        elif (h, w) != size:
            raise InputError(
                422,
                "Frame size changes",
                f"frame {index} is {w}x{h}, the first was {size[1]}x{size[0]}",
            )
        time = frame.time if frame.HasField("time") else index / fps
        prompt = None
        if frame.prompts:
            prompt = _frame_prompt(frame.prompts, index, (h, w), model, prompted)
            prompted |= set(prompt)
        yield InputFrame(index, time, image, prompt, encoded=frame.image)
        count += 1


def _frame_prompt(
    prompts, index: int, size: tuple[int, int], model: ModelInfo, known: set[int]
) -> dict[int, dict]:
    """A frame's ObjectPrompts as {object id: RLE}, checked as REST checks its prompts."""
    if not model.takes_prompt:
        raise bad_prompt(f"model '{model.name}' takes no prompt (frame {index})")
    try:
        masks = masks_from_messages(prompts, size, known)
        check_size(masks, *size)
    except InputError as error:
        raise InputError(error.status, error.title, f"frame {index}: {error.detail}") from None
    return to_rle(masks)


def decode_frame_image(data: bytes, index: int, max_width: int, max_height: int) -> np.ndarray:
    """A frame's image as RGB, its header's size checked against the limits before decoding."""
    try:
        return decode_image(data, max_width, max_height, what=f"frame {index}")
    except ImageError as error:
        title = "Frame too large" if error.status == 413 else "Not an image"
        raise InputError(error.status, title, str(error)) from None


async def _receive_file(requests, max_bytes: int) -> Path:
    with tempfile.NamedTemporaryFile(prefix="vidserve-grpc-", delete=False) as out:
        path = Path(out.name)
        size = 0
        async for request in requests:
            if request.WhichOneof("kind") != "data":
                path.unlink(missing_ok=True)
                raise InputError(400, "Bad message", "only the first message may be a config")
            size += len(request.data)
            if size > max_bytes:
                path.unlink(missing_ok=True)
                raise InputError(413, "Upload too large", f"the video exceeds {max_bytes} bytes")
            out.write(request.data)
    return path


async def _abort(context, error: Exception, ctx: ServiceContext):
    if isinstance(error, SessionError):
        code, text = GRPC_CODE.get(error.code, grpc.StatusCode.INTERNAL), error.message
    elif isinstance(error, NoWorker):
        code, text = grpc.StatusCode.UNAVAILABLE, str(error)
    else:
        code, text = grpc.StatusCode.INVALID_ARGUMENT, f"{error.title}: {error.detail}"
    ctx.metrics.errors.labels(code.name.lower()).inc()
    await context.abort(code, text)


# Methods that send their own initial metadata (with the request id); the interceptor sends it
# for the others.
_OWN_INITIAL_METADATA = {f"/{SERVICE_NAME}/StreamFrames"}
# Open without an API key: the health service (probes) and reflection (it describes the API, as
# /docs does over REST).
_OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class GuardInterceptor(grpc.aio.ServerInterceptor):
    """Before a handler runs: the call's request id (metadata `x-request-id`, the client's sane
    one or a new one: current for its log lines, sent back in the initial and trailing metadata)
    and, with API keys set, the key (`authorization: Bearer <key>` or `x-api-key`, compared in
    constant time): UNAUTHENTICATED without a valid one."""

    def __init__(self, keys: list[str]):
        self.keys = keys

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        method = details.method or ""
        if handler is None or method.startswith(_OPEN_SERVICES):
            return handler
        metadata = {}
        for key, value in details.invocation_metadata or ():
            metadata.setdefault(key.lower(), value)
        client_id = metadata.get(requestid.HEADER)
        authorized = not self.keys or key_matches(
            presented_key(metadata.get("authorization"), metadata.get("x-api-key")), self.keys
        )
        kind = _handler_kind(handler)
        behaviour = getattr(handler, kind)
        own_metadata = method in _OWN_INITIAL_METADATA

        async def start(context) -> None:
            request_id = requestid.bind(client_id)
            context.set_trailing_metadata(((requestid.HEADER, request_id),))
            if not authorized:
                log.info("refused %s: no valid API key", method)
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "this service needs an API key: metadata 'authorization: Bearer <key>' or "
                    "'x-api-key: <key>'",
                )
            if not own_metadata:
                await context.send_initial_metadata(((requestid.HEADER, request_id),))

        if inspect.isasyncgenfunction(behaviour):

            async def wrapped(request, context):
                await start(context)
                async for response in behaviour(request, context):
                    yield response

        else:

            async def wrapped(request, context):
                await start(context)
                return await behaviour(request, context)

        return handler._replace(**{kind: wrapped})


def _handler_kind(handler) -> str:
    if handler.request_streaming:
        return "stream_stream" if handler.response_streaming else "stream_unary"
    return "unary_stream" if handler.response_streaming else "unary_unary"


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from the settings (None: plaintext); mTLS with a client CA."""
    if not settings.tls_cert_file and not settings.tls_key_file:
        return None
    if not (settings.tls_cert_file and settings.tls_key_file):
        raise ValueError("TLS needs both VIDSERVE_TLS_CERT_FILE and VIDSERVE_TLS_KEY_FILE")
    ca = settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


async def start_grpc_server(ctx: ServiceContext, port: int, host: str = "[::]") -> grpc.aio.Server:
    """Start the gRPC server (VideoSegmentation, health, reflection); returns it running.
    With VIDSERVE_TLS_CERT_FILE and VIDSERVE_TLS_KEY_FILE the port speaks TLS only.

    A port another process listens on is refused (OSError EADDRINUSE), as uvicorn refuses a
    busy REST port: gRPC's default SO_REUSEPORT would let a second server bind it silently and
    the kernel would split the calls between the two."""
    credentials = server_credentials(ctx.settings)
    server = grpc.aio.server(
        interceptors=[GuardInterceptor(api_keys(ctx.settings))],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    pb_grpc.add_VideoSegmentationServicer_to_server(VideoSegmentationServicer(ctx), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    try:
        if credentials is None:
            bound = server.add_insecure_port(f"{host}:{port}")
        else:
            bound = server.add_secure_port(f"{host}:{port}", credentials)
    except RuntimeError:  # grpcio's "Failed to bind to address"
        bound = 0
    if bound == 0:
        raise OSError(
            errno.EADDRINUSE,
            f"gRPC cannot listen on port {port} ({host}:{port}): another process is using it "
            "(choose another with --grpc-port or VIDSERVE_GRPC_PORT)",
        )
    await server.start()
    server.bound_port = bound
    server.health = health_servicer
    return server


async def set_health(server: grpc.aio.Server, serving: bool) -> None:
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ("", SERVICE_NAME):
        await server.health.set(name, status)


def whole_answer(events: list, probe) -> pb.SegmentResponse:
    """SegmentVideo's answer: the session's events as one SegmentResponse."""
    return response_to_proto(
        build_response(events, width=probe.width, height=probe.height, fps=probe.fps)
    )
