"""`vidserve segment`: a video file through a model in this process, no server, no queue.

It decodes the video as the gateway does and calls the same runner the worker batches, so its
results are what the service answers for the same file.
"""

from pathlib import Path

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
) -> SegmentResponse:
    probe = probe_video(Path(path), NO_LIMITS)
    state = runner.open_session(dict(options))
    step = 1 if runner.info.one_frame_per_batch and runner.stateful else batch_size
    frames: list[FrameResult] = []
    pending: list[WorkItem] = []

    def run(items: list[WorkItem]) -> None:
        for outputs in runner.run_batch(items):
            if isinstance(outputs, Exception):
                raise outputs
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

    try:
        limit = max_frames or NO_LIMITS.max_frames
        for frame in iter_frames(Path(path), probe, NO_LIMITS, stride, limit, False):
            pending.append(WorkItem("local", frame.index, frame.time, frame.image, state))
            if len(pending) == step:
                run(pending)
                pending = []
        if pending:
            run(pending)
        for out in runner.flush(state):
            frames.append(
                FrameResult(
                    frame_index=out.index,
                    time=out.time,
                    objects=out.objects,
                    model=runner.info.name,
                    model_version=runner.info.version,
                )
            )
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
