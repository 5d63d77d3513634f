"""`vidserve segment`: a video file through a model in this process, no server, no queue.

It decodes the video as the gateway does and calls the same runner the worker batches, so its
results are what the service answers for the same file (and the same prompt, for VOS models).
"""

from pathlib import Path

from service.gateway.prompts import VideoPrompt
from service.gateway.video_input import VideoLimits, iter_frames, probe_video
from service.schemas import FrameResult, SegmentResponse, summarize_tracks
from service.worker.runner import ModelRunner, WorkItem

NO_LIMITS = VideoLimits(max_frames=10**9, max_width=10**6, max_height=10**6)


def segment_file(
    path: Path,
    runner: ModelRunner,
    options: dict,
    stride: int = 1,
    max_frames: int | None = None,
    batch_size: int = 4,
    on_frame=None,
    prompt: VideoPrompt | None = None,
) -> SegmentResponse:
    probe = probe_video(Path(path), NO_LIMITS)
    if prompt is not None:
        prompt.check_fits(probe.height, probe.width, stride, max_frames)
    state = runner.open_session(dict(options))
    step = 1 if runner.info.one_frame_per_batch and runner.stateful else batch_size
    frames: list[FrameResult] = []
    pending: list[WorkItem] = []

    def keep(outputs) -> None:
        for out in outputs:
            frames.append(
                FrameResult(
                    frame_index=out.index,
                    time=out.time,
                    objects=out.objects,
                    model=runner.info.name,
                    model_version=runner.info.version,
                )
            )
            if on_frame:
                on_frame()

    def run(items: list[WorkItem]) -> None:
        for outputs in runner.run_batch(items):
            if isinstance(outputs, Exception):
                raise outputs
            keep(outputs)

    try:
        limit = max_frames or NO_LIMITS.max_frames
        seen, prompted = 0, False
        for frame in iter_frames(Path(path), probe, NO_LIMITS, stride, limit, False):
            item_prompt = prompt.for_frame(frame.index) if prompt is not None else None
            prompted = prompted or item_prompt is not None
            pending.append(
                WorkItem("local", frame.index, frame.time, frame.image, state, item_prompt)
            )
            seen += 1
            if len(pending) == step:
                run(pending)
                pending = []
        if pending:
            run(pending)
        if prompt is not None and not prompted:
            raise prompt.not_in_video(seen)
        keep(runner.flush(state))
    finally:
        runner.close_session(state)
    return SegmentResponse(
        model=runner.info.name,
        model_version=runner.info.version,
        width=probe.width,
        height=probe.height,
        fps=probe.fps,
        frames=frames,
        tracks=summarize_tracks(frames),
    )


def ytvis_results_of(
    response: SegmentResponse, classes: tuple[str, ...], video_id: int = 1
) -> list[dict]:
    """The response as YouTube-VIS results entries (one per track); category ids are the
    1-based positions in the model's class list, as in YouTube-VIS (ids 1..C)."""
    from models.vis.video_inference import ytvis_results

    per_frame = [[o.model_dump(mode="json") for o in f.objects] for f in response.frames]
    category_ids = {name: k + 1 for k, name in enumerate(classes)}
    return ytvis_results(per_frame, video_id, category_ids)
