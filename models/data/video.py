"""Video files: browser-playable H.264 mp4 out (PyAV), frames in (PyAV decodes any container)."""

from pathlib import Path

import av
import numpy as np


def write_mp4(path: Path | str, frames: np.ndarray, fps: int, crf: int = 18) -> None:
    """(T, H, W, 3) uint8 RGB -> H.264 yuv420p mp4 that browsers play. H and W must be even."""
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264 needs even frame sizes, got {w}x{h}")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        # Fixed options, one thread: the same frames give the same bytes.
        stream.options = {"crf": str(crf), "preset": "veryfast", "threads": "1"}
        stream.codec_context.thread_count = 1
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def read_video(path: Path | str, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """All frames as (T, H, W, 3) uint8 RGB, and the frame rate."""
    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 0) or 25.0
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            if max_frames is not None and len(frames) >= max_frames:
                break
    if not frames:
        raise ValueError(f"{path}: no frames decoded")
    return np.stack(frames), fps
