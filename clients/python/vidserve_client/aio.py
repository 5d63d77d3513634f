"""The asyncio client: Client's methods as coroutines (streams as async iterators), over
httpx.AsyncClient and grpc.aio. Requests, answers, errors and retries are Client's (_base)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import TypeVar

import grpc
import httpx

from . import _base
from ._base import Categories, Options, PromptMask, StreamState, TimedFrame, Video, VideoSource
from ._proto import vidserve_pb2 as pb
from ._proto import vidserve_pb2_grpc as pb_grpc
from .client import _job_result
from .errors import VidserveError, from_grpc, grpc_error
from .results import Job, ModelInfo, SegmentResult, StreamEvent, event_from_proto
from .retry import NO_RETRY, Retry

T = TypeVar("T")


class AsyncClient:
    """Client for asyncio: the same arguments and methods, awaited (`stream` is an async
    iterator). Use it as an async context manager, or await close()."""

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
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=_base.auth_headers(api_key), timeout=timeout
        )
        self._metadata = _base.grpc_metadata(api_key)
        self._credentials = grpc_credentials
        self._channel: grpc.aio.Channel | None = None
        self._classes = _base.ClassCache()

    async def models(self) -> list[ModelInfo]:
        """The models served now (GET /v1/models)."""
        body = await self._request("GET", "/v1/models")
        models = [ModelInfo.from_dict(m) for m in body["models"]]
        self._classes.update(models)
        return models

    async def segment(
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
        """Client.segment, awaited."""
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
        body = await self._upload("/v1/segment", video, options)
        return SegmentResult.from_dict(body, await self._classes_of(body["model"]))

    async def submit(
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
        """Client.submit, awaited."""
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
        return Job.from_dict(await self._upload("/v1/jobs", video, options))

    async def job(self, job: Job | str) -> Job:
        """Client.job, awaited."""
        body = await self._request("GET", _base.job_path(job))
        return Job.from_dict(body, await self._classes_of(body.get("model")))

    async def wait(
        self, job: Job | str, timeout: float | None = None, poll_s: float = 0.5
    ) -> SegmentResult:
        """Client.wait, awaited."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            current = await self.job(job)
            if current.finished:
                return _job_result(current)
            if deadline is not None and time.monotonic() + poll_s > deadline:
                raise TimeoutError(f"job {current.id} is still {current.status} after {timeout} s")
            await asyncio.sleep(poll_s)

    async def cancel(self, job: Job | str) -> Job | None:
        """Client.cancel, awaited."""
        body = await self._request("DELETE", _base.job_path(job))
        return Job.from_dict(body) if body else None

    async def stream(
        self,
        frames: Iterable[TimedFrame] | AsyncIterable[TimedFrame],
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
    ) -> AsyncIterator[StreamEvent]:
        """Client.stream as an async iterator; `frames` may also be an async iterable (a plain
        iterable is read in the event loop: it should not block)."""
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
        call, gate = await self._retrying(lambda: self._open_stream(config, frames, state, timeout))
        try:
            async for message in call:
                classes = await self._classes_of(message.model, grpc_channel=True)
                yield event_from_proto(message, classes)
        except grpc.RpcError as error:
            if state.error is not None:
                raise state.error from None
            raise from_grpc(error) from None
        except asyncio.CancelledError:
            if state.error is not None:  # grpc.aio cancels a call whose requests raised
                raise state.error from None
            raise
        finally:
            gate.set()
            call.cancel()
        state.check_prompts_sent()

    async def _open_stream(self, config, frames, state: StreamState, timeout):
        gate = asyncio.Event()

        async def requests():
            yield config
            await gate.wait()  # nothing is taken from `frames` before the stream is admitted
            if not state.admitted:
                return
            try:
                index = 0
                async for frame in _aiter(frames):
                    if _base.is_array_frame(frame):  # PNG encoding: off the event loop
                        yield await asyncio.to_thread(state.request, frame, index)
                    else:
                        yield state.request(frame, index)
                    index += 1
            except Exception as error:  # the caller's frames: raised to the reader instead
                state.error = error
                raise

        stub = pb_grpc.VideoSegmentationStub(self._grpc())
        call = stub.StreamFrames(requests(), metadata=self._metadata, timeout=timeout)
        state.admitted = _base.admitted(await call.initial_metadata())
        gate.set()
        if not state.admitted:  # refused: its status
            raise grpc_error(
                await call.code(), await call.details(), await call.trailing_metadata()
            )
        return call, gate

    async def _upload(self, path: str, video: Video, options: Options):
        source, form = VideoSource(video), options.form()

        async def post():
            file = source.open()
            try:
                files = {"video": (source.name, file)}
                return await self._send("POST", path, files=files, data=form)
            finally:
                source.done(file)

        return await self._retrying(post)

    async def _request(self, method: str, path: str):
        return await self._retrying(lambda: self._send(method, path))

    async def _send(self, method: str, path: str, **kwargs):
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise _base.transport_error(error, self.url + path) from error
        return _base.read_json(response)

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        attempt, waited = 1, 0.0
        while True:
            try:
                return await call()
            except VidserveError as error:
                wait = self.retry.wait_before_next(error, attempt, waited)
                if wait is None:
                    raise
            await asyncio.sleep(wait)
            attempt, waited = attempt + 1, waited + wait

    def _grpc(self) -> grpc.aio.Channel:
        if self._channel is None:
            self._channel = _base.open_channel(self.grpc_target, self._credentials, aio=True)
        return self._channel

    async def _classes_of(self, model: str | None, grpc_channel: bool = False):
        if self._classes.needs(model):
            try:
                if grpc_channel:
                    stub = pb_grpc.VideoSegmentationStub(self._grpc())
                    reply = await stub.ListModels(
                        pb.ListModelsRequest(), metadata=self._metadata, timeout=self.timeout
                    )
                    self._classes.update(ModelInfo.from_proto(m) for m in reply.models)
                else:
                    await self.models()
            except (VidserveError, grpc.RpcError):
                pass  # unknown: conversions will ask for classes= instead
        return self._classes.get(model)

    async def close(self) -> None:
        await self._http.aclose()
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


async def _aiter(frames):
    if hasattr(frames, "__aiter__"):
        async for frame in frames:
            yield frame
    else:
        for frame in frames:
            yield frame
