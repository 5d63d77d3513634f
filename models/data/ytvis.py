"""YouTube-VIS (2019 / 2021) instances JSON: reader and writer.

Layout: `JPEGImages/<video>/<frame>.jpg` and an instances JSON with `videos` (id, width, height,
length, file_names), `annotations` (one per track: per-frame `segmentations` as RLE or null,
`bboxes` [x, y, w, h] or null, `areas`) and `categories`. Real YouTube-VIS uses uncompressed RLE
(list counts) in training annotations; both kinds are read.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.data.errors import DatasetError
from models.data.rle import decode_rle, to_compressed


@dataclass
class YtvisVideo:
    id: int
    name: str
    width: int
    height: int
    file_names: list[str]  # relative to the image root, one per frame

    @property
    def length(self) -> int:
        return len(self.file_names)


@dataclass
class YtvisTrack:
    id: int
    video_id: int
    category_id: int
    iscrowd: int
    segmentations: list[dict | None]  # compressed RLE with str counts, or None where absent

    def mask(self, t: int) -> np.ndarray | None:
        rle = self.segmentations[t]
        return None if rle is None else decode_rle(rle)


@dataclass
class YtvisDataset:
    videos: dict[int, YtvisVideo]
    categories: dict[int, str]
    tracks: list[YtvisTrack]
    image_root: Path | None = None
    _by_video: dict[int, list[YtvisTrack]] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        for track in self.tracks:
            self._by_video.setdefault(track.video_id, []).append(track)

    def tracks_of(self, video_id: int) -> list[YtvisTrack]:
        return self._by_video.get(video_id, [])

    def frame_path(self, video_id: int, t: int) -> Path:
        if self.image_root is None:
            raise ValueError("this dataset was loaded without an image root")
        return self.image_root / self.videos[video_id].file_names[t]


def load_ytvis(
    ann_file: Path | str, image_root: Path | str | None = None, check_files: bool = False
) -> YtvisDataset:
    """Read and validate an instances JSON. `check_files` also checks every frame file exists."""
    ann_file = Path(ann_file)
    data = _read_json(ann_file)
    for key in ("videos", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(ann_file, f"missing or non-list '{key}'")
    categories = {int(c["id"]): str(c["name"]) for c in data["categories"]}
    videos = {}
    for entry in data["videos"]:
        video = _parse_video(ann_file, entry)
        videos[video.id] = video
    tracks = [
        _parse_track(ann_file, k, a, videos, categories) for k, a in enumerate(data["annotations"])
    ]
    root = Path(image_root) if image_root is not None else None
    if check_files and root is not None:
        for video in videos.values():
            for name in video.file_names:
                if not (root / name).is_file():
                    raise DatasetError(root / name, f"frame file of video {video.id} is missing")
    return YtvisDataset(videos, categories, tracks, root)


def merge_ytvis(parts: list[YtvisDataset]) -> YtvisDataset:
    """Several datasets of the same categories as one (training on a mix, e.g. the classic and
    the wide synthetic worlds): video and track ids renumbered after the previous part's, frame
    paths made absolute so that each keeps its own image root."""
    if not parts:
        raise ValueError("no dataset to merge")
    if len(parts) == 1:
        return parts[0]
    first = parts[0].categories
    videos: dict[int, YtvisVideo] = {}
    tracks: list[YtvisTrack] = []
    for part in parts:
        if part.categories != first:
            raise ValueError(f"categories differ: {part.categories} against {first}")
        if part.image_root is None:
            raise ValueError("a dataset to merge was loaded without an image root")
        video_base = _after(videos, part.videos)
        track_base = _after([t.id for t in tracks], [t.id for t in part.tracks])
        root = part.image_root.resolve()
        for video in part.videos.values():
            new_id = video_base + video.id
            names = [str(root / name) for name in video.file_names]
            videos[new_id] = YtvisVideo(new_id, video.name, video.width, video.height, names)
        for track in part.tracks:
            tracks.append(
                YtvisTrack(
                    track_base + track.id,
                    video_base + track.video_id,
                    track.category_id,
                    track.iscrowd,
                    track.segmentations,
                )
            )
    # Absolute frame names: the root joins them unchanged.
    return YtvisDataset(videos, dict(first), tracks, Path("/"))


def _after(taken, incoming) -> int:
    """The offset that puts the incoming ids after the taken ones (0 for the first part)."""
    if not taken or not incoming:
        return 0
    return max(taken) - min(incoming) + 1


def _read_json(path: Path) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise DatasetError(path, "file not found") from None
    except json.JSONDecodeError as e:
        raise DatasetError(path, f"not valid JSON ({e})") from None


def _parse_video(path: Path, entry: dict) -> YtvisVideo:
    try:
        file_names = [str(n) for n in entry["file_names"]]
        name = str(Path(file_names[0]).parent) if file_names else str(entry["id"])
        video = YtvisVideo(
            int(entry["id"]), name, int(entry["width"]), int(entry["height"]), file_names
        )
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetError(
            path, f"video entry {entry.get('id', '?')} is malformed ({e!r})"
        ) from None
    if "length" in entry and int(entry["length"]) != video.length:
        raise DatasetError(
            path, f"video {video.id}: length {entry['length']} but {video.length} file_names"
        )
    return video


def _parse_track(
    path: Path, k: int, ann: dict, videos: dict[int, YtvisVideo], categories: dict[int, str]
) -> YtvisTrack:
    where = f"annotation #{k} (id {ann.get('id', '?')})"
    video = videos.get(int(ann.get("video_id", -1)))
    if video is None:
        raise DatasetError(path, f"{where}: video_id {ann.get('video_id')} is not a known video")
    category = int(ann.get("category_id", -1))
    if category not in categories:
        raise DatasetError(path, f"{where}: category_id {category} is not a known category")
    segs = ann.get("segmentations")
    if not isinstance(segs, list) or len(segs) != video.length:
        got = len(segs) if isinstance(segs, list) else type(segs).__name__
        raise DatasetError(
            path, f"{where}: {got} segmentations for a video of {video.length} frames"
        )
    rles = []
    for t, seg in enumerate(segs):
        if seg is None:
            rles.append(None)
            continue
        try:
            rle = to_compressed(seg)
        except Exception as e:  # pycocotools raises bare exceptions on malformed counts
            raise DatasetError(path, f"{where} frame {t}: malformed RLE ({e})") from None
        if list(rle["size"]) != [video.height, video.width]:
            raise DatasetError(
                path,
                f"{where} frame {t}: RLE size {list(rle['size'])} != "
                f"video size [{video.height}, {video.width}]",
            )
        counts = rle["counts"]
        rles.append(
            {
                "size": list(rle["size"]),
                "counts": counts.decode() if isinstance(counts, bytes) else counts,
            }
        )
    return YtvisTrack(
        int(ann.get("id", k + 1)), video.id, category, int(ann.get("iscrowd", 0)), rles
    )


def ytvis_categories_json(categories: dict[int, str]) -> list[dict]:
    return [
        {"id": cid, "name": name, "supercategory": "object"} for cid, name in categories.items()
    ]


def write_ytvis(
    path: Path | str, videos: list[YtvisVideo], tracks: list[YtvisTrack], categories: dict[int, str]
) -> None:
    """Write an instances JSON; bboxes and areas are derived from the masks."""
    by_id = {v.id: v for v in videos}
    annotations = []
    for track in tracks:
        bboxes, areas = [], []
        for rle in track.segmentations:
            box, area = _box_and_area(rle)
            bboxes.append(box)
            areas.append(area)
        video = by_id[track.video_id]
        annotations.append(
            {
                "id": track.id,
                "video_id": track.video_id,
                "category_id": track.category_id,
                "iscrowd": track.iscrowd,
                "height": video.height,
                "width": video.width,
                "length": video.length,
                "segmentations": track.segmentations,
                "bboxes": bboxes,
                "areas": areas,
            }
        )
    data = {
        "info": {"description": "vidserve YouTube-VIS style instances"},
        "videos": [
            {
                "id": v.id,
                "width": v.width,
                "height": v.height,
                "length": v.length,
                "file_names": v.file_names,
            }
            for v in videos
        ],
        "annotations": annotations,
        "categories": ytvis_categories_json(categories),
    }
    Path(path).write_text(json.dumps(data, separators=(",", ":")))


def _box_and_area(rle: dict | None) -> tuple[list[float] | None, int | None]:
    from pycocotools import mask as mask_utils

    if rle is None:
        return None, None
    compressed = to_compressed(rle)
    x, y, w, h = (float(v) for v in mask_utils.toBbox(compressed))
    return [x, y, w, h], int(mask_utils.area(compressed))
