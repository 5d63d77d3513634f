"""An annotated, browser-playable H.264 mp4 of a video's results: masks, track ids, labels."""

import tempfile
from pathlib import Path

import av
import numpy as np

from models.data.draw import Label, draw_labels, id_colour
from models.data.rle import decode_rle
from models.data.video import write_mp4
from service.schemas import FrameResult


def frame_labels(result: FrameResult) -> list[Label]:
    labels = []
    for k, obj in enumerate(result.objects):
        key = obj.track_id if obj.track_id is not None else k + 1
        text = f"{key} {obj.category} {obj.score:.2f}"
        if obj.actions:
            text += " " + obj.actions[0].label
        mask = decode_rle(obj.mask.model_dump()).astype(bool)
        labels.append(Label(mask, obj.box, id_colour(key), text))
    return labels


def render_frames(video: Path, results: list[FrameResult]) -> np.ndarray:
    """The frames that have results, with the results drawn on them (even sizes for H.264)."""
    wanted = {r.frame_index: r for r in results}
    drawn = []
    with av.open(str(video)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                drawn.append(
                    draw_labels(frame.to_ndarray(format="rgb24"), frame_labels(wanted[index]))
                )
            if len(drawn) == len(wanted):
                break
    frames = np.stack(drawn)
    _, h, w, _ = frames.shape
    return frames[:, : h - h % 2, : w - w % 2]


def render_video(video: Path, results: list[FrameResult], fps: float) -> bytes:
    frames = render_frames(video, results)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "annotated.mp4"
        write_mp4(out, frames, max(1, round(fps)))
        return out.read_bytes()
