"""Results to what other tools read: supervision's Detections, YouTube-VIS results JSON, DAVIS
palette PNGs. The files are the ones the service's own writers make (service/writers/ytvis.py and
davis.py in the server; a test compares them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .png import davis_palette, encode_palette
from .results import FrameResult, Mask, SegmentResult

_DAVIS_PALETTE = davis_palette()
SUPERVISION_EXTRA = "vidserve-client[supervision]"


def _instances(frame: FrameResult) -> list[tuple[int | None, str, float, Mask, tuple | None]]:
    """(track id, category, score, mask, box or None) of a frame's instances: its objects; a
    frame without objects (a panoptic model) has its thing segments, stuff is never one."""
    if frame.objects:
        return [(o.track_id, o.category, o.score, o.mask, o.box) for o in frame.objects]
    return [(s.track_id, s.category, s.score, s.mask, None) for s in frame.segments if s.isthing]


# --- supervision ---------------------------------------------------------------------------------
def _supervision():
    try:
        import supervision
    except ImportError as error:
        raise ImportError(
            "converting to supervision.Detections needs the supervision package: "
            f"pip install '{SUPERVISION_EXTRA}'"
        ) from error
    return supervision


def to_supervision(frame: FrameResult, classes: Sequence[str] | None = None):
    """A frame's instances as `supervision.Detections`: xyxy boxes, bool masks (N, H, W),
    class_id (0-based position of the category in the model's class list), tracker_id (None for
    per-frame models), confidence, and data["class_name"].

    classes: the model's class list; default the one the client attached (`frame.classes`). A
    model without classes (video object segmentation: every object is "object") gets class_id 0.
    """
    sv = _supervision()
    instances = _instances(frame)
    names = [category for _, category, _, _, _ in instances]
    class_ids = _class_ids(names, classes if classes is not None else frame.classes, frame.model)
    if not instances:
        detections = sv.Detections.empty()
        detections.data = {"class_name": np.array([], dtype=str)}
        return detections
    masks = np.stack([mask.to_numpy() for _, _, _, mask, _ in instances])
    boxes = [
        box if box is not None else _mask_box(mask)
        for (*_, box), mask in zip(instances, masks, strict=True)
    ]
    track_ids = [track_id for track_id, *_ in instances]
    return sv.Detections(
        xyxy=np.array(boxes, dtype=np.float32).reshape(-1, 4),
        mask=masks,
        confidence=np.array([score for _, _, score, _, _ in instances], dtype=np.float32),
        class_id=np.array(class_ids, dtype=int),
        tracker_id=None if None in track_ids else np.array(track_ids, dtype=int),
        data={"class_name": np.array(names)},
    )


def _class_ids(names: list[str], classes: Sequence[str] | None, model: str) -> list[int]:
    if classes is None:
        raise ValueError(
            f"the class list of model '{model}' is not known: pass classes= "
            "(Client.models() has it)"
        )
    if not classes:  # a class-agnostic model
        return [0] * len(names)
    index = {name: k for k, name in enumerate(classes)}
    missing = sorted({name for name in names if name not in index})
    if missing:
        raise ValueError(f"categories {missing} are not in the class list {list(classes)}")
    return [index[name] for name in names]


def _mask_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """Tight [x1, y1, x2, y2] of a mask (x2, y2 exclusive, as the service's boxes)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


# --- YouTube-VIS ---------------------------------------------------------------------------------
def ytvis_results(
    result: SegmentResult,
    video_id: int = 1,
    classes: Sequence[str] | Mapping[str, int] | None = None,
) -> list[dict]:
    """YouTube-VIS results entries `{video_id, category_id, score, segmentations}`, one per
    track in order of its first frame: a compressed RLE per frame of the result (null where the
    track is absent); score and category are the track's summary (`result.tracks`); category ids
    are 1-based positions in the class list unless a {name: id} mapping is given. An object
    without a track id (a per-frame model) is an entry of its own, on its frame only."""
    ids = _category_ids(classes if classes is not None else result.classes, result.model)
    summaries = {t.track_id: t for t in result.tracks}
    frames = sorted(result.frames, key=lambda f: f.frame_index)
    entries: dict = {}  # track id (or a key of an untracked object) -> (category, score, masks)
    for t, frame in enumerate(frames):
        for k, (track_id, category, score, mask, _) in enumerate(_instances(frame)):
            key = ("untracked", t, k) if track_id is None else track_id
            if track_id is not None:
                if track_id not in summaries:
                    raise ValueError(f"track {track_id} is not in the result's tracks")
                category, score = summaries[track_id].category, summaries[track_id].score
            _, _, masks = entries.setdefault(key, (category, score, {}))
            masks[t] = mask.to_dict()
    return [
        {
            "video_id": video_id,
            "category_id": _category_id(ids, category),
            "score": float(score),
            "segmentations": [masks.get(t) for t in range(len(frames))],
        }
        for category, score, masks in entries.values()
    ]


def _category_ids(classes: Sequence[str] | Mapping[str, int] | None, model: str) -> dict:
    if classes is None:
        raise ValueError(
            f"the class list of model '{model}' is not known: pass classes= "
            "(Client.models() has it)"
        )
    if isinstance(classes, Mapping):
        return {str(name): int(i) for name, i in classes.items()}
    return {name: k + 1 for k, name in enumerate(classes)}


def _category_id(ids: Mapping[str, int], name: str) -> int:
    if name not in ids:
        known = ", ".join(ids) or "empty"
        raise ValueError(f"category '{name}' is not in the class list ({known})")
    return ids[name]


# --- DAVIS ---------------------------------------------------------------------------------------
def davis_name(frame_index: int) -> str:
    return f"{frame_index:05d}.png"


def davis_ids(frame: FrameResult, height: int, width: int) -> np.ndarray:
    """(H, W) uint8 object ids (track ids) of a frame's objects, 0 where there is none."""
    ids = np.zeros((height, width), dtype=np.uint8)
    for obj in frame.objects:
        if obj.track_id is None or not 1 <= obj.track_id <= 255:
            raise ValueError(f"object id {obj.track_id} cannot be written to a DAVIS PNG (1..255)")
        ids[obj.mask.to_numpy()] = obj.track_id
    return ids


def write_davis(result: SegmentResult, folder: Path | str) -> int:
    """One DAVIS palette PNG per frame into `folder` (created), named by frame index
    (00000.png, ...), pixel value = object id; returns how many were written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for frame in result.frames:
        ids = davis_ids(frame, result.height, result.width)
        (folder / davis_name(frame.frame_index)).write_bytes(encode_palette(ids, _DAVIS_PALETTE))
    return len(result.frames)
