"""Uploaded videos: tell "not a video" (415) from "a video we cannot decode" (422), check the
limits (413), and decode frames in a thread so the event loop keeps serving other clients.

A still image (JPEG, PNG, WebP, BMP: told by its leading bytes) is a one-frame video here: its
probe checks and decodes it (service.gateway.image_input) and carries the pixels, and every
caller (REST, jobs, gRPC, `vidserve segment`) runs it through the same session code."""

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from service.gateway.pipeline import InputFrame


class InputError(Exception):
    """Bad input: the status and words the client gets (problem+json / a gRPC status)."""

    def __init__(self, status: int, title: str, detail: str):
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail


# Leading bytes of the video containers we accept (ISO BMFF/MP4/MOV, Matroska/WebM, AVI, FLV,
# MPEG-TS, MPEG-PS, Ogg).
def looks_like_video_container(head: bytes) -> bool:
    return (
        head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")
        or head.startswith(b"\x1a\x45\xdf\xa3")
        or (head.startswith(b"RIFF") and head[8:12] == b"AVI ")
        or head.startswith(b"FLV")
        or (len(head) > 188 and head[0] == 0x47 and head[188] == 0x47)
        or head.startswith(b"\x00\x00\x01\xba")
        or head.startswith(b"OggS")
    )


@dataclass
class VideoLimits:
    max_frames: int
    max_width: int
    max_height: int


@dataclass
class VideoProbe:
    width: int
    height: int
    fps: float
    # The frames to process (after frame_stride and max_frames) as the container's header counts
    # them; 0 when the header says nothing (decoding finds out).
    frames: int = 0
    # A still image's pixels, decoded by the probe (its one frame); None for a video.
    image: np.ndarray | None = field(default=None, repr=False)


def probe_video(
    path: Path, limits: VideoLimits, stride: int = 1, max_frames: int | None = None
) -> VideoProbe:
    """Open the file and decode its first frame: the checks a client gets an answer to before
    any work starts. A video whose header says it has more frames than the limit (the frames
    processed: after `stride`; with `max_frames` the rest are ignored, never refused) is refused
    here, before a frame is computed."""
    head = _head(path)
    if not head:
        raise InputError(400, "Empty upload", "the uploaded video is empty (0 bytes)")
    if not looks_like_video_container(head):
        return _probe_still(path, head, limits)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(415, "Not a video", "the file has no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or 0) or 25.0
            counted = header_frames(container, stream, fps)
            if max_frames is None:
                _check_length(counted, limits, stride)
            first = next(container.decode(stream), None)
    except InputError:
        raise
    except av.error.EOFError:
        raise InputError(
            422, "Empty video", "the video has no frames (it ends before its first frame)"
        ) from None
    except (av.FFmpegError, ValueError, OSError, StopIteration) as e:
        raise InputError(
            422, "Undecodable video", f"the video cannot be decoded: {_reason(e, path)}"
        ) from None
    if first is None:
        raise InputError(422, "Empty video", "the video has no frames")
    if first.width > limits.max_width or first.height > limits.max_height:
        raise InputError(
            413,
            "Video too large",
            f"{first.width}x{first.height} exceeds the "
            f"limit of {limits.max_width}x{limits.max_height}",
        )
    return VideoProbe(
        first.width, first.height, fps, _frames_to_process(counted, stride, max_frames)
    )


def _probe_still(path: Path, head: bytes, limits: VideoLimits) -> VideoProbe:
    """An upload that is not a video container: an image (a one-frame probe), else 415."""
    # image_input imports this module's types: imported here, not at the top.
    from service.gateway import image_input

    if image_input.is_image(head):
        return image_input.probe_image(path, limits)
    if image_input.is_gif(head):
        raise image_input.refuse_gif()
    raise InputError(
        415,
        "Not a video",
        "the upload is not a video container (mp4, mov, mkv, webm, avi, flv, ts, mpeg, ogg) "
        f"nor an image ({image_input.IMAGE_FORMATS})",
    )


def header_frames(container, stream, fps: float) -> tuple[int, bool] | None:
    """The frame count the container's header gives: (count, exact). The stream's frame count
    when the container stores one (mp4, mov), else its duration x fps (an estimate); None when
    the header says neither."""
    if stream.frames and stream.frames > 0:
        return int(stream.frames), True
    seconds = None
    if stream.duration is not None and stream.time_base is not None:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        seconds = container.duration / av.time_base
    if seconds is None or seconds <= 0 or fps <= 0:
        return None
    return int(seconds * fps), False


def _frames_to_process(
    counted: tuple[int, bool] | None, stride: int, max_frames: int | None
) -> int:
    if counted is None:
        return 0
    processed = -(-counted[0] // max(1, stride))
    return min(processed, max_frames) if max_frames else processed


def _check_length(counted: tuple[int, bool] | None, limits: VideoLimits, stride: int) -> None:
    if counted is None:
        return  # found while decoding (iter_frames)
    exact = counted[1]
    processed = _frames_to_process(counted, stride, None)
    # An estimate from the duration refuses only what is clearly over (5 %); decoding finds
    # the rest.
    limit = limits.max_frames if exact else int(limits.max_frames * 1.05) + 1
    if processed > limit:
        raise InputError(
            413,
            "Video too long",
            f"the video has {'' if exact else 'about '}{processed} frames to process (after "
            f"frame_stride {stride}): more than {limits.max_frames} frames, the limit; send "
            "fewer or set max_frames",
        )


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(512)


async def decode_frames(
    path: Path,
    probe: VideoProbe,
    limits: VideoLimits,
    stride: int = 1,
    max_frames: int | None = None,
) -> AsyncIterator[InputFrame]:
    """Frames 0, stride, 2*stride, ... decoded in a thread, handed over through a small buffer
    (so a slow model holds back decoding instead of filling memory). Raises InputError 422 if the
    video breaks off, 413 if it is longer than the limit. A still image: its one frame, which
    the probe decoded."""
    if probe.image is not None:
        yield _still_frame(probe)
        return
    loop = asyncio.get_running_loop()
    buffer: asyncio.Queue = asyncio.Queue(maxsize=4)
    stop = threading.Event()
    wanted = min(max_frames or limits.max_frames, limits.max_frames)

    def put(item) -> None:
        asyncio.run_coroutine_threadsafe(buffer.put(item), loop).result()

    def work() -> None:
        try:
            for frame in iter_frames(path, probe, limits, stride, wanted, max_frames is None):
                if stop.is_set():
                    return
                put(frame)
            put(None)
        except BaseException as e:  # handed to the consumer
            if not stop.is_set():
                put(e)

    thread = threading.Thread(target=work, daemon=True, name="decode")
    thread.start()
    try:
        while (item := await buffer.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while not buffer.empty():  # unblock a producer waiting on a full buffer
            buffer.get_nowait()


def iter_frames(
    path: Path,
    probe: VideoProbe,
    limits: VideoLimits,
    stride: int,
    wanted: int,
    enforce_limit: bool,
):
    if probe.image is not None:
        yield _still_frame(probe)
        return
    count = 0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for index, frame in enumerate(container.decode(stream)):
                if index % stride:
                    continue
                if count == wanted:
                    if enforce_limit:
                        raise InputError(
                            413,
                            "Video too long",
                            f"the video has more than "
                            f"{limits.max_frames} frames (after frame_stride)",
                        )
                    return
                image = frame.to_ndarray(format="rgb24")
                if image.shape[:2] != (probe.height, probe.width):
                    raise InputError(
                        422,
                        "Frame size changes",
                        f"frame {index} is {image.shape[1]}x{image.shape[0]}, the "
                        f"first was {probe.width}x{probe.height}",
                    )
                yield InputFrame(
                    index, _frame_time(frame, index, probe.fps), np.ascontiguousarray(image)
                )
                count += 1
    except av.FFmpegError as e:
        raise InputError(
            422, "Undecodable video", f"decoding stopped after {count} frames: {_reason(e, path)}"
        ) from None


def _still_frame(probe: VideoProbe) -> InputFrame:
    # Frame 0 at time 0.0 whatever frame_stride and max_frames say: both keep frame 0.
    return InputFrame(0, 0.0, probe.image)


def _reason(error: Exception, path: Path) -> str:
    """What went wrong, in words a client may read: never the server's file names (PyAV's and
    the OS's errors end with the path they could not read: our temporary file)."""
    reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
    names = {str(path), path.name, str(getattr(error, "filename", "") or "")} - {""}
    for name in sorted(names, key=len, reverse=True):  # a whole path before its last part
        reason = reason.replace(f"'{name}'", "the upload").replace(name, "the upload")
    return reason


def _frame_time(frame, index: int, fps: float) -> float:
    return round(float(frame.time), 4) if frame.time is not None else round(index / fps, 4)
