"""An annotated, browser-playable H.264 mp4 of a video's results: masks, track ids, labels; for a
still image, the one annotated frame as a PNG or a one-frame mp4. Panoptic segments: stuff is
filled translucent in its category's colour, things are outlined in their own colour."""

import tempfile
import zlib
from pathlib import Path

import av
import cv2
import numpy as np

from models.data.draw import Label, draw_labels, id_colour
from models.data.rle import decode_rle
from models.data.video import write_mp4
from service.schemas import FrameResult, Segment

STUFF_OPACITY = 0.45
OUTLINE_PX = 2


def frame_labels(result: FrameResult, actions: dict[int, str] | None = None) -> list[Label]:
    """Each object's mask, box and `<id> <category> <score>`; under it, its track's action text
    (`actions`: track id -> text, else the object's own best label)."""
    labels = []
    for k, obj in enumerate(result.objects):
        key = obj.track_id if obj.track_id is not None else k + 1
        text = f"{key} {obj.category} {obj.score:.2f}"
        below = (actions or {}).get(obj.track_id, "") or action_text(obj)
        mask = decode_rle(obj.mask.model_dump()).astype(bool)
        labels.append(Label(mask, obj.box, id_colour(key), text, below))
    return labels


def action_text(obj) -> str:
    """The object's best action label and score ('' without one)."""
    if not obj.actions:
        return ""
    best = max(obj.actions, key=lambda label: label.score)
    return f"{best.label} {best.score:.2f}"


class ActionCarry:
    """Actions are scored at key frames (once a second); a video shows each track's latest
    labels on the frames after its key frame too, until the next one."""

    def __init__(self):
        self.latest: dict[int, str] = {}

    def update(self, result: FrameResult) -> dict[int, str]:
        for obj in result.objects:
            if obj.track_id is not None and obj.actions:
                self.latest[obj.track_id] = action_text(obj)
        return self.latest


def draw_result(
    image: np.ndarray, result: FrameResult, actions: dict[int, str] | None = None
) -> np.ndarray:
    """One frame's results drawn on a copy of it: its panoptic segments, then its objects."""
    drawn = draw_segments(image, result.segments) if result.segments else image
    return draw_labels(drawn, frame_labels(result, actions))


def draw_segments(image: np.ndarray, segments: list[Segment]) -> np.ndarray:
    """Stuff filled translucent in its category's colour (the same in every frame); things
    outlined in the colour of their track id (else segment id), labelled at their top left."""
    masks = [(segment, decode_rle(segment.mask.model_dump()).astype(bool)) for segment in segments]
    overlay = image.copy()
    for segment, mask in masks:
        if not segment.isthing:
            overlay[mask] = category_colour(segment.category)
    out = cv2.addWeighted(overlay, STUFF_OPACITY, image, 1 - STUFF_OPACITY, 0)
    for segment, mask in masks:
        if segment.isthing and mask.any():
            _outline(out, segment, mask)
    return out


def category_colour(category: str) -> tuple[int, int, int]:
    return id_colour(zlib.crc32(category.encode()))


def _outline(out: np.ndarray, segment: Segment, mask: np.ndarray) -> None:
    key = segment.track_id if segment.track_id is not None else segment.id
    colour = id_colour(key)
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    cv2.drawContours(out, contours, -1, colour, OUTLINE_PX)
    ys, xs = np.nonzero(mask)
    org = (int(xs.min()), max(int(ys.min()) - 4, 10))
    text = f"{key} {segment.category} {segment.score:.2f}"
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)


def render_frames(video: Path, results: list[FrameResult]) -> np.ndarray:
    """The frames that have results, with the results drawn on them (even sizes for H.264)."""
    wanted = {r.frame_index: r for r in results}
    drawn = []
    carry = ActionCarry()
    with av.open(str(video)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                actions = carry.update(wanted[index])
                drawn.append(draw_result(frame.to_ndarray(format="rgb24"), wanted[index], actions))
            if len(drawn) == len(wanted):
                break
    return _even(np.stack(drawn))


def _even(frames: np.ndarray) -> np.ndarray:
    """Cropped to even sizes, as H.264 (yuv420p) needs."""
    _, h, w, _ = frames.shape
    return frames[:, : h - h % 2, : w - w % 2]


def render_video(video: Path, results: list[FrameResult], fps: float) -> bytes:
    return _mp4(render_frames(video, results), fps)


def _mp4(frames: np.ndarray, fps: float) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "annotated.mp4"
        write_mp4(out, frames, max(1, round(fps)))
        return out.read_bytes()


def render_still(image: np.ndarray, results: list[FrameResult], as_png: bool) -> bytes:
    """A still image with its results drawn: a PNG of its full size, or a one-frame mp4 (at
    1 fps; cropped to even sizes)."""
    drawn = draw_result(image, results[0]) if results else image
    if not as_png:
        return _mp4(_even(drawn[None]), 1)
    ok, data = cv2.imencode(".png", cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("the rendered image could not be encoded")
    return data.tobytes()


def render_file(path: Path, results: list[FrameResult], fps: float, as_png: bool) -> bytes:
    """`vidserve segment --render`: a video's annotated mp4, or an image's drawn as render_still
    does (the image decoded as the service decodes uploads)."""
    from service.images import decode_image, image_format

    with path.open("rb") as file:
        head = file.read(32)
    if image_format(head) is None:
        return render_video(path, results, fps)
    unlimited = 1 << 20  # the segmentation already decoded this image: no limit applies here
    image = decode_image(path.read_bytes(), unlimited, unlimited, what="the image")
    return render_still(image, results, as_png)
