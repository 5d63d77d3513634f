"""A contact sheet of generated videos: frames with masks, track ids, categories and actions
drawn on them, so a person can check that the world is what its annotations claim."""

from pathlib import Path

import cv2
import numpy as np

from models.data.draw import Label, draw_labels, id_colour
from models.data.rle import mask_box_xyxy
from models.data.synthetic.render import RenderedVideo
from models.data.synthetic.world import ACTIONS, THING_CATEGORIES

DISTRACTOR_GREY = (128, 128, 128)


def annotate_frame(video: RenderedVideo, t: int, scale: int = 2) -> np.ndarray:
    labels = []
    for obj in video.scene.objects:
        mask = video.object_map[t] == obj.object_id
        box = mask_box_xyxy(mask)
        if box is None:
            continue
        if obj.is_distractor:
            labels.append(Label(mask, box, DISTRACTOR_GREY, f"{obj.object_id} distractor"))
        else:
            category = THING_CATEGORIES[obj.category_id]
            text = f"{obj.object_id} {category} {ACTIONS[int(obj.action[t])]}"
            labels.append(Label(mask, box, id_colour(obj.object_id), text))
    return draw_labels(video.frames[t], labels, scale, caption=f"{video.name} t={t}")


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
