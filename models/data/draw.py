"""Drawing masks, boxes and labels on frames (shared by the contact sheet and annotated videos)."""

import colorsys
from dataclasses import dataclass

import cv2
import numpy as np


def id_colour(object_id: int) -> tuple[int, int, int]:
    """A stable, distinct colour per id (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((object_id * 0.618034) % 1.0, 0.9, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


@dataclass
class Label:
    mask: np.ndarray  # (H, W) bool
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 (exclusive) in frame pixels
    colour: tuple[int, int, int]
    text: str
    below: str = ""  # a second text under the box (an action label)


def draw_labels(
    frame: np.ndarray, labels: list[Label], scale: int = 1, caption: str = ""
) -> np.ndarray:
    """A copy of the RGB frame, masks tinted, boxes and texts drawn, enlarged `scale` times."""
    overlay = frame.copy()
    for label in labels:
        overlay[label.mask] = label.colour
    out = cv2.addWeighted(overlay, 0.45, frame, 0.55, 0)
    if scale != 1:
        out = cv2.resize(out, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    for label in labels:
        x1, y1, x2, y2 = label.box
        p1 = (int(x1 * scale), int(y1 * scale))
        p2 = (int(x2 * scale) - 1, int(y2 * scale) - 1)
        cv2.rectangle(out, p1, p2, label.colour, 1)
        org = (p1[0], max(p1[1] - 4, 10))
        cv2.putText(out, label.text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(
            out, label.text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.4, label.colour, 1, cv2.LINE_AA
        )
        if label.below:
            under = (p1[0], min(p2[1] + 12, out.shape[0] - 4))
            for colour, thickness in (((0, 0, 0), 3), (label.colour, 1)):
                cv2.putText(
                    out,
                    label.below,
                    under,
                    cv2.FONT_HERSHEY_SIMPLEX,
                    0.4,
                    colour,
                    thickness,
                    cv2.LINE_AA,
                )
    if caption:
        cv2.putText(
            out,
            caption,
            (4, out.shape[0] - 6),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
    return out
