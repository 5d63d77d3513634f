"""The synchronous client: REST (httpx) for whole videos, models and jobs; gRPC for streams."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TypeVar

import grpc
import httpx

from . import _base
from ._base import Categories, Options, PromptMask, StreamState, TimedFrame, Video, VideoSource
from ._proto import vidserve_pb2 as pb
from ._proto import vidserve_pb2_grpc as pb_grpc
from .errors import VidserveError, from_grpc
from .results import Job, ModelInfo, SegmentResult, StreamEvent, event_from_proto
from .retry import NO_RETRY, Retry

T = TypeVar("T")


class Client:
    """vidserve over REST (`url`) and gRPC (`grpc_target`).

    api_key: sent as `Authorization: Bearer` (REST) and `authorization` metadata (gRPC).
    timeout: seconds for each REST request and gRPC call that is not a stream (None: no limit);
    a JSON answer comes once the whole video is done, so it is generous by default.
    retry: a Retry to try Busy and Unavailable refusals again (off by default).
    grpc_credentials: a secure channel's credentials (`grpc.ssl_channel_credentials()`); plain
    text when None.

    Use it as a context manager, or call close().
    """

    def __init__(
        self,
        url: str = _base.DEFAULT_URL,
        grpc_target: str = _base.DEFAULT_GRPC_TARGET,
        api_key: str | None = None,
        timeout: float | None = _base.DEFAULT_TIMEOUT_S,
        retry: Retry | None = None,
        grpc_credentials: grpc.ChannelCredentials | None = None,
    ):
        self.url, self.grpc_target = url.rstrip("/"), grpc_target
        self.timeout, self.retry = timeout, retry or NO_RETRY
        self._http = httpx.Client(
            base_url=self.url, headers=_base.auth_headers(api_key), timeout=timeout
        )
        self._metadata = _base.grpc_metadata(api_key)
        self._credentials = grpc_credentials
        self._channel: grpc.Channel | None = None
        self._classes = _base.ClassCache()

    # --- models ----------------------------------------------------------------------------------
    def models(self) -> list[ModelInfo]:
        """The models served now (GET /v1/models)."""
        body = self._request("GET", "/v1/models")
        models = [ModelInfo.from_dict(m) for m in body["models"]]
        self._classes.update(models)
        return models

    # --- whole videos ----------------------------------------------------------------------------
    def segment(
        self,
        video: Video,
        model: str | None = None,
        *,
        score_threshold: float | None = None,
        frame_stride: int | None = None,
        max_frames: int | None = None,
        prompt: Mapping[int, PromptMask] | None = None,
        prompt_frame: int | None = None,
        action_stride: float | None = None,
        action_categories: Categories | None = None,
        action_min_score: float | None = None,
        action_bank_window: float | None = None,
        short_edge: int | None = None,
    ) -> SegmentResult:
        """Segment a whole video (POST /v1/segment) and return its result.

        video: a path, bytes, or a binary file object. model: a served model (default: the
        service's). prompt: for a prompted model (`stcn`), {object id: (H, W) bool mask} of
        frame `prompt_frame` (default 0). For an action model (`slowfast-acrn`): action_stride,
        seconds between key frames (default 1); action_categories, the categories of the tracked
        objects that get actions ("person,dog" or ["person", "dog"]; default all);
        action_min_score, labels scoring below it are left out; action_bank_window, for a model
        with a feature bank (`slowfast-acrn-lfb`), the past seconds of each track it reads (0:
        off). For a VOS model (`stcn`): short_edge, the short side in pixels at which frames are
        segmented (64 up to the checkpoint's, its default): smaller is faster, masks coarser. An
        option left None is not sent.
        """
        options = Options(
            model,
            score_threshold,
            frame_stride,
            max_frames,
            prompt,
            prompt_frame,
            action_stride=action_stride,
            action_categories=action_categories,
            action_min_score=action_min_score,
            action_bank_window=action_bank_window,
            short_edge=short_edge,
        )
        body = self._upload("/v1/segment", video, options)
        return SegmentResult.from_dict(body, self._classes_of(body["model"]))

    # --- jobs ------------------------------------------------------------------------------------
    def submit(
        self,
        video: Video,
        model: str | None = None,
        *,
        score_threshold: float | None = None,
        frame_stride: int | None = None,
        max_frames: int | None = None,
        prompt: Mapping[int, PromptMask] | None = None,
        prompt_frame: int | None = None,
        action_stride: float | None = None,
        action_categories: Categories | None = None,
        action_min_score: float | None = None,
        action_bank_window: float | None = None,
        short_edge: int | None = None,
    ) -> Job:
        """Queue a video to be segmented in the background (POST /v1/jobs); the options are
        segment()'s. Returns the queued Job: follow it with job(), wait() or cancel()."""
        options = Options(
            model,
            score_threshold,
            frame_stride,
            max_frames,
            prompt,
            prompt_frame,
            action_stride=action_stride,
            action_categories=action_categories,
            action_min_score=action_min_score,
            action_bank_window=action_bank_window,
            short_edge=short_edge,
        )
        return Job.from_dict(self._upload("/v1/jobs", video, options))

    def job(self, job: Job | str) -> Job:
        """A job's status now (GET /v1/jobs/{id}); with its result once done."""
        body = self._request("GET", _base.job_path(job))
        return Job.from_dict(body, self._classes_of(body.get("model")))

    def wait(
        self, job: Job | str, timeout: float | None = None, poll_s: float = 0.5
    ) -> SegmentResult:
        """The result of a job, once it is done (asked every `poll_s` seconds). A failed job
        raises its error (the VidserveError subclass of its status); TimeoutError after
        `timeout` seconds (None: wait as long as it takes)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            current = self.job(job)
            if current.finished:
                return _job_result(current)
            if deadline is not None and time.monotonic() + poll_s > deadline:
                raise TimeoutError(f"job {current.id} is still {current.status} after {timeout} s")
            time.sleep(poll_s)

    def cancel(self, job: Job | str) -> Job | None:
        """Cancel a queued or running job (it is then failed, "Cancelled", and returned), or
        delete a finished one and its result (None) (DELETE /v1/jobs/{id}). NotFound for a job
        that is unknown, deleted or expired."""
        body = self._request("DELETE", _base.job_path(job))
        return Job.from_dict(body) if body else None

    # --- streams ---------------------------------------------------------------------------------
    def stream(
        self,
        frames: Iterable[TimedFrame],
        model: str | None = None,
        *,
        prompts: Mapping[int, Mapping[int, PromptMask]] | None = None,
        score_threshold: float | None = None,
        summary: bool = False,
        timeout: float | None = None,
        fps: float | None = None,
        action_stride: float | None = None,
        action_categories: Categories | None = None,
        action_min_score: float | None = None,
        action_bank_window: float | None = None,
        short_edge: int | None = None,
    ) -> Iterator[StreamEvent]:
        """Stream frames over gRPC (StreamFrames) and yield the events as they come: a
        FrameResult per frame, in frame order; ActionsResult for models with an action head;
        with `summary`, a last StreamSummary.

        frames: encoded images (JPEG/PNG bytes) or (H, W, 3) uint8 RGB arrays, numbered 0, 1,
        ... in order; an item may also be a (frame, time) pair, its time in seconds on the
        stream's clock (a camera's timestamps). fps: the clock of frames without a time (index /
        fps; the service's default 25). prompts: {frame index: {object id: mask}} for a prompted
        model: objects can be added on any frame. action_stride, action_categories,
        action_min_score, action_bank_window: segment()'s, for an action model; short_edge:
        segment()'s, for a VOS model. timeout: a deadline for the whole stream (None: none).
        Frames are taken from `frames` only as the service admits the stream and its flow
        control allows.
        """
        state = StreamState(_base.stream_prompts(prompts))
        config = _base.session_config(
            model,
            score_threshold,
            summary,
            fps=fps,
            action_stride=action_stride,
            action_categories=action_categories,
            action_min_score=action_min_score,
            action_bank_window=action_bank_window,
            short_edge=short_edge,
        )
        call, gate = self._retrying(lambda: self._open_stream(config, frames, state, timeout))
        try:
            for message in call:
                classes = self._classes_of(message.model, grpc_channel=True)
                yield event_from_proto(message, classes)
        except grpc.RpcError as error:
            if state.error is not None:
                raise state.error from None
            raise from_grpc(error) from None
        finally:
            gate.set()  # a reader that stops early leaves no request thread waiting
            call.cancel()
        state.check_prompts_sent()

    def _open_stream(self, config, frames, state: StreamState, timeout):
        """One try at opening a stream: (call, gate) once admitted, else the refusal raised."""
        gate = threading.Event()

        def requests():
            yield config
            gate.wait()  # nothing is taken from `frames` before the service admits the stream
            if not state.admitted:
                return
            try:
                for index, frame in enumerate(frames):
                    yield state.request(frame, index)
            except Exception as error:  # the caller's frames: raised to the reader instead
                state.error = error
                raise

        stub = pb_grpc.VideoSegmentationStub(self._grpc())
        call = stub.StreamFrames(requests(), metadata=self._metadata, timeout=timeout)
        state.admitted = _base.admitted(call.initial_metadata())
        gate.set()
        if not state.admitted:
            raise from_grpc(call)
        return call, gate

    # --- plumbing --------------------------------------------------------------------------------
    def _upload(self, path: str, video: Video, options: Options):
        source, form = VideoSource(video), options.form()

        def post():
            file = source.open()
            try:
                return self._send("POST", path, files={"video": (source.name, file)}, data=form)
            finally:
                source.done(file)

        return self._retrying(post)

    def _request(self, method: str, path: str):
        return self._retrying(lambda: self._send(method, path))

    def _send(self, method: str, path: str, **kwargs):
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise _base.transport_error(error, self.url + path) from error
        return _base.read_json(response)

    def _retrying(self, call: Callable[[], T]) -> T:
        attempt, waited = 1, 0.0
        while True:
            try:
                return call()
            except VidserveError as error:
                wait = self.retry.wait_before_next(error, attempt, waited)
                if wait is None:
                    raise
            time.sleep(wait)
            attempt, waited = attempt + 1, waited + wait

    def _grpc(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = _base.open_channel(self.grpc_target, self._credentials, aio=False)
        return self._channel

    def _classes_of(self, model: str | None, grpc_channel: bool = False):
        """The model's class list, asked once (REST, or gRPC for streams); None if unknown."""
        if self._classes.needs(model):
            try:
                if grpc_channel:
                    stub = pb_grpc.VideoSegmentationStub(self._grpc())
                    reply = stub.ListModels(
                        pb.ListModelsRequest(), metadata=self._metadata, timeout=self.timeout
                    )
                    self._classes.update(ModelInfo.from_proto(m) for m in reply.models)
                else:
                    self.models()
            except (VidserveError, grpc.RpcError):
                pass  # unknown: conversions will ask for classes= instead
        return self._classes.get(model)

    def close(self) -> None:
        self._http.close()
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _job_result(job: Job) -> SegmentResult:
    """A finished job's result, or its error raised."""
    if job.status == "failed":
        raise job.error or VidserveError(None, "Job failed", f"job {job.id} failed")
    if job.result is None:
        raise VidserveError(None, "No result", f"job {job.id} is done but has no result")
    return job.result
