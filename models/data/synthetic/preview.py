"""A contact sheet of generated videos: frames with masks, track ids, categories and actions
drawn on them, so a person can check that the world is what its annotations claim."""

from pathlib import Path

import cv2
import numpy as np

from models.data.rle import mask_box_xyxy
from models.data.synthetic.render import RenderedVideo
from models.data.synthetic.world import ACTIONS, THING_CATEGORIES


def id_colour(object_id: int) -> tuple[int, int, int]:
    """A stable, distinct colour per id (golden-ratio hue steps)."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((object_id * 0.618034) % 1.0, 0.9, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def annotate_frame(video: RenderedVideo, t: int, scale: int = 2) -> np.ndarray:
    frame = video.frames[t].copy()
    overlay = frame.copy()
    labels = []
    for obj in video.scene.objects:
        mask = video.object_map[t] == obj.object_id
        box = mask_box_xyxy(mask)
        if box is None:
            continue
        colour = (128, 128, 128) if obj.is_distractor else id_colour(obj.object_id)
        overlay[mask] = colour
        if obj.is_distractor:
            text = f"{obj.object_id} distractor"
        else:
            text = (
                f"{obj.object_id} {THING_CATEGORIES[obj.category_id]} {ACTIONS[int(obj.action[t])]}"
            )
        labels.append((box, colour, text))
    frame = cv2.addWeighted(overlay, 0.45, frame, 0.55, 0)
    frame = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    for (x1, y1, x2, y2), colour, text in labels:
        p1, p2 = (int(x1 * scale), int(y1 * scale)), (int(x2 * scale) - 1, int(y2 * scale) - 1)
        cv2.rectangle(frame, p1, p2, colour, 1)
        org = (p1[0], max(p1[1] - 4, 10))
        cv2.putText(frame, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(frame, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)
    cv2.putText(
        frame,
        f"{video.name} t={t}",
        (4, frame.shape[0] - 6),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.45,
        (255, 255, 255),
        1,
        cv2.LINE_AA,
    )
    return frame


def contact_sheet(videos: list[RenderedVideo], frames_per_video: int = 4) -> np.ndarray:
    """One row per video, `frames_per_video` evenly spaced frames per row (RGB)."""
    rows = []
    for video in videos:
        n = video.frames.shape[0]
        picks = np.linspace(0, n - 1, min(frames_per_video, n)).round().astype(int)
        tiles = [annotate_frame(video, int(t)) for t in picks]
        while len(tiles) < frames_per_video:
            tiles.append(np.zeros_like(tiles[0]))
        rows.append(np.concatenate(tiles, axis=1))
    return np.concatenate(rows, axis=0)


def write_contact_sheet(path: Path | str, videos: list[RenderedVideo], frames_per_video: int = 4):
    sheet = contact_sheet(videos, frames_per_video)
    if not cv2.imwrite(str(path), sheet[..., ::-1]):
        raise OSError(f"could not write {path}")
