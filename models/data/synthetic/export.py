"""Write generated videos in the standard dataset formats, all describing the same videos.

    OUT/meta.json                                   generator settings, vocabularies, fingerprint
    OUT/videos/<video>.mp4                          H.264, for serving tests and demos
    OUT/ytvis/JPEGImages/<video>/00000.jpg          YouTube-VIS 2019 style
    OUT/ytvis/<split>.json
    OUT/davis/JPEGImages/480p/<video>/00000.jpg     DAVIS 2017 style
    OUT/davis/Annotations/480p/<video>/00000.png
    OUT/davis/ImageSets/2017/<split>.txt
    OUT/panoptic/images/<video>/00000.jpg           COCO panoptic style
    OUT/panoptic/panoptic_<split>.json
    OUT/panoptic/panoptic_<split>/<video>/00000.png
    OUT/ava/frames/<video>/img_00001.jpg            AVA style (frames 1-based, as mmaction's)
    OUT/ava/annotations/ava_<split>_v2.2.csv
    OUT/ava/annotations/ava_action_list_v2.2.pbtxt

Frames are JPEG-encoded once and hard-linked into the other layouts (copied where links fail).
Annotation files are byte-identical for the same seed and settings.
"""

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np

from models.data.ava import AvaBox, write_action_list, write_ava_csv
from models.data.coco_panoptic import (
    PanopticCategory,
    PanopticImage,
    segments_from_ids,
    write_coco_panoptic,
    write_panoptic_png,
)
from models.data.davis import write_davis_split, write_palette_png
from models.data.rle import encode_mask, mask_box_xyxy
from models.data.synthetic.photos import PHOTOS
from models.data.synthetic.render import RenderedVideo, render_scene
from models.data.synthetic.world import (
    ACTIONS,
    STUFF_CATEGORIES,
    THING_CATEGORIES,
    WIDE_FIELDS,
    WorldConfig,
    simulate_scene,
)
from models.data.video import write_mp4
from models.data.ytvis import YtvisTrack, YtvisVideo, write_ytvis

JPEG_QUALITY = 95


def video_name(index: int) -> str:
    return f"vid{index:04d}"


def frame_stem(t: int) -> str:
    return f"{t:05d}"


def generate_video(config: WorldConfig, seed: int, index: int) -> RenderedVideo:
    return render_scene(simulate_scene(config, seed, index, video_name(index)))


def key_frames(config: WorldConfig) -> list[int]:
    """AVA annotates one frame a second: the frames at whole seconds."""
    return list(range(0, config.frames, config.fps))


class DatasetWriter:
    """Accumulates videos, then writes the annotation files of every format (`finish`)."""

    def __init__(self, out: Path, config: WorldConfig, seed: int, split: str):
        self.out, self.config, self.seed, self.split = Path(out), config, seed, split
        self.yt_videos: list[YtvisVideo] = []
        self.yt_tracks: list[YtvisTrack] = []
        self.pan_images: list[PanopticImage] = []
        self.pan_extra: dict[int, dict] = {}
        self.ava_rows: list[AvaBox] = []
        self.names: list[str] = []
        self.negatives: list[str] = []
        self.photos: set[str] = set()

    def add(self, video: RenderedVideo) -> None:
        name = video.name
        self.names.append(name)
        if video.scene.negative:
            self.negatives.append(name)
        self.photos |= photos_of(video)
        self._write_frames(video)
        write_mp4(self.out / "videos" / f"{name}.mp4", video.frames, self.config.fps)
        self._add_ytvis(video)
        self._write_davis(video)
        self._add_panoptic(video)
        self._add_ava(video)

    def _write_frames(self, video: RenderedVideo) -> None:
        jpg_dir = self.out / "ytvis" / "JPEGImages" / video.name
        links = [
            self.out / "davis" / "JPEGImages" / "480p" / video.name,
            self.out / "panoptic" / "images" / video.name,
        ]
        ava_dir = self.out / "ava" / "frames" / video.name
        for d in [jpg_dir, ava_dir, *links]:
            d.mkdir(parents=True, exist_ok=True)
        for t, frame in enumerate(video.frames):
            src = jpg_dir / f"{frame_stem(t)}.jpg"
            ok, data = cv2.imencode(
                ".jpg", frame[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
            )
            assert ok, "JPEG encoding failed"
            src.write_bytes(data.tobytes())
            for d in links:
                _link(src, d / src.name)
            _link(src, ava_dir / f"img_{t + 1:05d}.jpg")

    def _annotated_ids(self, video: RenderedVideo) -> list[int]:
        return [o.object_id for o in video.scene.objects if not o.is_distractor]

    def _add_ytvis(self, video: RenderedVideo) -> None:
        video_id = len(self.yt_videos) + 1
        n, h, w = video.object_map.shape
        self.yt_videos.append(
            YtvisVideo(
                video_id, video.name, w, h, [f"{video.name}/{frame_stem(t)}.jpg" for t in range(n)]
            )
        )
        for obj in video.scene.objects:
            if obj.is_distractor:
                continue
            segs = [
                encode_mask(m) if m.any() else None for m in (video.object_map == obj.object_id)
            ]
            if any(s is not None for s in segs):
                self.yt_tracks.append(
                    YtvisTrack(len(self.yt_tracks) + 1, video_id, obj.category_id, 0, segs)
                )

    def _write_davis(self, video: RenderedVideo) -> None:
        """Objects seen on frame 0 are the ones DAVIS asks to follow, numbered 1..M in id order
        (mostly their own ids: the world numbers frame-0 objects first); the rest are 0."""
        ann_dir = self.out / "davis" / "Annotations" / "480p" / video.name
        ann_dir.mkdir(parents=True, exist_ok=True)
        first = set(np.unique(video.object_map[0]).tolist()) & set(self._annotated_ids(video))
        keep = np.zeros(256, dtype=np.uint8)
        for new_id, object_id in enumerate(sorted(first), start=1):
            keep[object_id] = new_id
        for t, ids in enumerate(video.object_map):
            write_palette_png(ann_dir / f"{frame_stem(t)}.png", keep[ids])

    def _add_panoptic(self, video: RenderedVideo) -> None:
        """Things keep their object id as segment id; a stuff segment's id is its category id
        (> any object id); distractors are void (0), as unlabelled objects are in COCO."""
        png_root = self.out / "panoptic" / f"panoptic_{self.split}"
        (png_root / video.name).mkdir(parents=True, exist_ok=True)
        category_of = {
            o.object_id: o.category_id for o in video.scene.objects if not o.is_distractor
        }
        category_of.update({c: c for c in STUFF_CATEGORIES})
        for t in range(video.frames.shape[0]):
            objects = video.object_map[t].astype(np.int64)
            ids = np.where(objects > 0, objects, video.stuff_category_map(t))
            ids[np.isin(objects, [o.object_id for o in video.scene.objects if o.is_distractor])] = 0
            png = png_root / video.name / f"{frame_stem(t)}.png"
            write_panoptic_png(png, ids)
            image_id = len(self.pan_images) + 1
            h, w = ids.shape
            self.pan_images.append(
                PanopticImage(
                    image_id,
                    f"{video.name}/{frame_stem(t)}.jpg",
                    h,
                    w,
                    png,
                    segments_from_ids(ids, category_of),
                )
            )
            self.pan_extra[image_id] = {"video": video.name, "frame_index": t}

    def _add_ava(self, video: RenderedVideo) -> None:
        _, h, w = video.object_map.shape
        for t in key_frames(self.config):
            for obj in video.scene.objects:
                box = (
                    None
                    if obj.is_distractor
                    else mask_box_xyxy(video.object_map[t] == obj.object_id)
                )
                if box is None:
                    continue
                norm = (box[0] / w, box[1] / h, box[2] / w, box[3] / h)
                self.ava_rows.append(
                    AvaBox(
                        video.name,
                        t // self.config.fps,
                        norm,
                        int(obj.action[t]),
                        person_id=obj.object_id,
                    )
                )

    def finish(self) -> dict:
        """Write the annotation files and meta.json; returns the meta."""
        split = self.split
        write_ytvis(
            self.out / "ytvis" / f"{split}.json", self.yt_videos, self.yt_tracks, THING_CATEGORIES
        )
        write_davis_split(self.out / "davis", split, self.names)
        categories = {i: PanopticCategory(i, n, True) for i, n in THING_CATEGORIES.items()}
        categories.update({i: PanopticCategory(i, n, False) for i, n in STUFF_CATEGORIES.items()})
        write_coco_panoptic(
            self.out / "panoptic" / f"panoptic_{split}.json",
            self.pan_images,
            categories,
            self.out / "panoptic" / f"panoptic_{split}",
            self.pan_extra,
        )
        ann = self.out / "ava" / "annotations"
        ann.mkdir(parents=True, exist_ok=True)
        write_ava_csv(ann / f"ava_{split}_v2.2.csv", self.ava_rows)
        write_action_list(ann / "ava_action_list_v2.2.pbtxt", ACTIONS)
        meta = {
            "generator": "vidserve synthetic world",
            "seed": self.seed,
            "split": split,
            **self._world_meta(),
            "videos": self.names,
            "thing_categories": THING_CATEGORIES,
            "stuff_categories": STUFF_CATEGORIES,
            "actions": ACTIONS,
            "fingerprint": dataset_fingerprint(self.out, split),
        }
        (self.out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        return meta

    def _world_meta(self) -> dict:
        """The config; for the wide world also its name, the negative videos and the photos
        shown with their licences. A classic dataset's meta.json stays as it was before the wide
        world existed (no key of it), byte for byte."""
        config = asdict(self.config)
        if self.config.world == "classic":
            return {"config": {k: v for k, v in config.items() if k not in WIDE_FIELDS}}
        return {
            "world": "wide",
            "config": config,
            "negative_videos": self.negatives,
            "photos": {name: PHOTOS[name][0] for name in sorted(self.photos)},
        }


def photos_of(video: RenderedVideo) -> set[str]:
    """The photos a video shows: its background's and its objects' textures'."""
    scene = video.scene
    names = {o.appearance.photo for o in scene.objects if o.appearance.photo is not None}
    if scene.background is not None:
        names.add(scene.background.photo)
    return names


def annotation_files(out: Path, split: str) -> list[Path]:
    """The files that define a split's labels (frames and videos are derived from the seed)."""
    out = Path(out)
    return [
        out / "ytvis" / f"{split}.json",
        out / "davis" / "ImageSets" / "2017" / f"{split}.txt",
        out / "panoptic" / f"panoptic_{split}.json",
        out / "ava" / "annotations" / f"ava_{split}_v2.2.csv",
        out / "ava" / "annotations" / "ava_action_list_v2.2.pbtxt",
    ]


def dataset_fingerprint(out: Path, split: str) -> str:
    digest = hashlib.sha256()
    for path in annotation_files(out, split):
        digest.update(path.relative_to(out).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def stored_fingerprint(*folders: Path) -> str | None:
    """The fingerprint in meta.json of the first folder that has one (a `vidserve synth`
    output); None for other datasets."""
    for folder in folders:
        meta = Path(folder) / "meta.json"
        if meta.is_file():
            return json.loads(meta.read_text())["fingerprint"]
    return None


def generate_dataset(
    out: Path | str,
    config: WorldConfig,
    videos: int,
    seed: int,
    split: str = "train",
    on_video: Callable[[RenderedVideo], None] | None = None,
) -> dict:
    """Generate `videos` videos into `out` in every format; returns meta.json's content."""
    out = Path(out)
    if videos < 1:
        raise ValueError(f"videos must be >= 1, got {videos}")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new folder")
    (out / "videos").mkdir(parents=True, exist_ok=True)
    writer = DatasetWriter(out, config, seed, split)
    for index in range(videos):
        video = generate_video(config, seed, index)
        writer.add(video)
        if on_video:
            on_video(video)
    return writer.finish()


def _link(src: Path, dst: Path) -> None:
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
