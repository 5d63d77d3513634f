"""The jobs routes: POST /v1/jobs, GET and DELETE /v1/jobs/{id} (the store and runner:
service.gateway.jobs).

A job takes the form of POST /v1/segment and is refused the same way before it is accepted
(404 unknown model, 400 bad parameters, 413, 415, 422, 429, 503): the video is saved and probed
before the 202.
"""

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from service import requestid
from service.gateway.context import ServiceContext
from service.gateway.jobs import JobRequest, JobService
from service.gateway.rest import (
    _ERROR_RESPONSES,
    PROBLEM,
    SegmentForm,
    problem,
    read_prompt,
    save_upload,
    segment_form,
    served_model,
    video_limits,
)
from service.gateway.video_input import probe_video
from service.schemas import SegmentResponse


class JobAccepted(BaseModel):
    id: str
    status: Literal["queued"] = "queued"
    url: str


class JobView(BaseModel):
    id: str
    model: str
    status: Literal["queued", "running", "done", "failed"]
    frames_done: int
    frames_total: int
    created_at: float
    updated_at: float
    expires_at: float | None
    result: SegmentResponse | None
    error: dict | None


_UNKNOWN_JOB = {404: {"description": "Unknown or expired job", "content": {PROBLEM: {}}}}


def not_found(job_id: str) -> JSONResponse:
    return problem(404, "Unknown job", f"no job '{job_id}' (unknown, deleted or expired)")


def jobs_router(ctx: ServiceContext, jobs: JobService) -> APIRouter:
    router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

    @router.post(
        "",
        status_code=202,
        summary="Segment a long video in the background: answers at once with the job's URL",
        response_model=JobAccepted,
        responses={
            202: {"description": "Accepted: poll GET /v1/jobs/{id} (the `Location` header)"},
            **{s: r for s, r in _ERROR_RESPONSES.items() if s != 406},
        },
    )
    async def submit(form: Annotated[SegmentForm, Depends(segment_form)]):
        info = await served_model(ctx, form.model)
        prompt = await read_prompt(ctx, info, form)
        ctx.admission.acquire().release()  # Busy -> 429 while the gateway is full
        upload = await save_upload(form.video, ctx.settings.max_upload_bytes)
        try:
            probe = await asyncio.to_thread(
                probe_video, upload, video_limits(ctx), form.frame_stride, form.max_frames
            )
            if prompt is not None:
                prompt.check_fits(probe.height, probe.width, form.frame_stride, form.max_frames)
            request = JobRequest(
                model=info.name,
                options=form.options,
                frame_stride=form.frame_stride,
                max_frames=form.max_frames,
                prompt_png=await form.prompt_png(ctx.settings.max_upload_bytes),
                prompt_rle=form.prompt_rle,
                prompt_frame=form.prompt_frame,
                request_id=requestid.current(),
            )
        except BaseException:
            upload.unlink(missing_ok=True)
            raise
        job = await jobs.submit(info.name, request, upload)  # the upload is the store's now
        url = f"/v1/jobs/{job.id}"
        body = JobAccepted(id=job.id, url=url).model_dump()
        return JSONResponse(body, status_code=202, headers={"Location": url})

    @router.get(
        "/{job_id}",
        summary="A job's status, progress and, once done, the result /v1/segment answers",
        response_model=JobView,
        responses=_UNKNOWN_JOB,
    )
    async def get_job(job_id: str):
        job = await jobs.store.get(job_id)
        if job is None:
            return not_found(job_id)
        return JSONResponse(job.view())

    @router.delete(
        "/{job_id}",
        summary="Cancel a queued or running job (200, now failed: Cancelled), "
        "or delete a finished one (204)",
        response_model=JobView,
        responses={204: {"description": "The finished job is deleted"}, **_UNKNOWN_JOB},
    )
    async def delete_job(job_id: str):
        if await jobs.cancel(job_id):
            job = await jobs.store.get(job_id)
            return JSONResponse(job.view()) if job is not None else Response(status_code=204)
        if await jobs.store.delete(job_id):
            return Response(status_code=204)
        return not_found(job_id)

    return router
