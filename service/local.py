"""`vidserve segment`: a video file through a model in this process, no server, no queue.

It decodes the video as the gateway does and calls the same runner the worker batches, so its
results are what the service answers for the same file (and the same prompt, for VOS models).
"""

from pathlib import Path

from service.gateway.pipeline import reply_event
from service.gateway.prompts import VideoPrompt
from service.gateway.video_input import VideoLimits, iter_frames, probe_video
from service.schemas import Event, SegmentResponse, build_response
from service.worker.runner import (
    FrameOutput,
    ModelInfo,
    ModelRunner,
    Output,
    WorkItem,
    run_frames,
)
from service.worker.worker import output_reply

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
    frames: list[Event] = []  # every event, as the service would stream them
    pending: list[WorkItem] = []

    def keep(outputs: list[Output]) -> None:
        for out in outputs:
            frames.append(output_event(out, runner.info))
            if on_frame and isinstance(out, FrameOutput):
                on_frame()

    def run(items: list[WorkItem]) -> None:
        for outputs in run_frames(runner, items):
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
    return build_response(
        frames,
        width=probe.width,
        height=probe.height,
        fps=probe.fps,
        model=runner.info.name,
        model_version=runner.info.version,
    )


def ytvis_results_of(
    response: SegmentResponse, classes: tuple[str, ...], video_id: int = 1
) -> list[dict]:
    """The response as YouTube-VIS results entries (one per track); category ids are the
    1-based positions in the model's class list, as in YouTube-VIS (ids 1..C). Kept for its
    callers: service.writers.ytvis.ytvis_results is the writer."""
    from service.writers.ytvis import ytvis_results

    return ytvis_results(response, classes, video_id)


def output_event(out: Output, info: ModelInfo) -> Event:
    """A runner's output as the event the service answers for it: the worker's reply, read by
    the gateway's code (one way from an output to an event)."""
    return reply_event(output_reply("local", out, info, taken=False))
