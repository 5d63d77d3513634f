"""What the writers share: category ids, and a frame's instances."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from service.schemas import FrameResult, Mask


@dataclass(frozen=True)
class Instance:
    """One instance of a frame: an object, or a thing segment of a panoptic model."""

    track_id: int | None
    category: str
    score: float
    mask: Mask
    box: tuple[float, float, float, float] | None  # [x1, y1, x2, y2] pixels; None: from the mask


def frame_instances(frame: FrameResult) -> list[Instance]:
    """A frame's instances: its objects; a frame without objects (a panoptic model) has its
    thing segments as instances, stuff is never one."""
    if frame.objects:
        return [Instance(o.track_id, o.category, o.score, o.mask, o.box) for o in frame.objects]
    return [
        Instance(s.track_id, s.category, s.score, s.mask, None) for s in frame.segments if s.isthing
    ]


def category_ids(classes: Sequence[str] | Mapping[str, int]) -> dict[str, int]:
    """{category name: id}: a mapping as given, a class list as 1-based positions (ids 1..C, as
    YouTube-VIS and COCO-style datasets number them)."""
    if isinstance(classes, Mapping):
        return {str(name): int(i) for name, i in classes.items()}
    return {name: k + 1 for k, name in enumerate(classes)}


def category_id(ids: Mapping[str, int], name: str) -> int:
    try:
        return ids[name]
    except KeyError:
        raise ValueError(
            f"category '{name}' is not in the class list ({', '.join(ids) or 'empty'})"
        ) from None


def image_id_of(image_ids: Mapping[int, int] | None, frame_index: int) -> int | None:
    """A frame's image id in a COCO-style file: by default its frame index; with a mapping
    {frame index: image id}, the mapped id, None (leave the frame out) for a frame it lacks."""
    if image_ids is None:
        return frame_index
    return image_ids.get(frame_index)
