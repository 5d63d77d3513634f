"""The action trainer's data: an AVA v2.2 dataset folder as key frames with their actors, and
the clips around them, sampled as MMAction2's SampleAVAFrames samples them.

Layouts read (the same files either way):
- ours (`vidserve synth`): `<root>/ava/frames/<video>/img_00001.jpg` (1-based), `<root>/ava/
  annotations/ava_<split>_v2.2.csv` and the action list beside it; the frame rate is the
  generator's (meta.json), the video's clock starts at frame 1 (timestamp 0);
- AVA's: `<root>/frames/<video>/img_%05d.jpg` and `<root>/annotations/...`, frames extracted at
  30 fps from second 900 of each movie (MMAction2's `timestamp_start`), so key frame t is frame
  (t - 900) x 30 + 1. `ava_<split>_excluded_timestamps_v2.2.csv`, when there, drops key frames.

A sample is one key frame (video, timestamp) with every actor annotated on it: the actor's box
(one per person, as AVA repeats it on each of the person's rows) and its actions as a multi-hot
row over the action list (ids in order; ids not in the list are dropped, as the official label
map drops them, and an actor left without any action is dropped, as BBoxHeadAVA trains only on
boxes with a label).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from models.action.config import ActionConfig
from models.action.inference import prepare_clip
from models.common.image import pad_batch, scale_boxes
from models.data.ava import AvaBox, load_action_list, load_ava_csv
from models.data.errors import DatasetError
from models.train.vis_data import read_rgb

AVA_FPS = 30.0  # AVA's frames are extracted at 30 fps ...
AVA_TIMESTAMP_START = 900.0  # ... from second 900 of each movie (MMAction2's timestamp_start)
ACTION_LISTS = (
    "ava_action_list_v2.2.pbtxt",
    "ava_action_list_v2.2_for_activitynet_2019.pbtxt",
    "ava_action_list_v2.1.pbtxt",
)


@dataclass
class AvaFiles:
    """Where an AVA dataset's parts are."""

    annotations: Path  # ava_<split>_v2.2.csv
    action_list: Path
    frames: Path  # frames/<video>/img_%05d.jpg
    excluded: Path | None  # ava_<split>_excluded_timestamps_v2.2.csv, when there
    meta: Path | None  # our generator's meta.json


def locate_ava(root: Path, split: str) -> AvaFiles:
    """The files of an AVA dataset folder: ours (`<root>/ava/...`, meta.json in `<root>`) or
    AVA's (`<root>/annotations/`, `<root>/frames/`)."""
    root = Path(root)
    base = root / "ava" if (root / "ava" / "annotations").is_dir() else root
    ann_dir = base / "annotations"
    csvs = [ann_dir / f"ava_{split}_v{v}.csv" for v in ("2.2", "2.1")]
    annotations = next((p for p in csvs if p.is_file()), None)
    if annotations is None:
        raise FileNotFoundError(f"{root}: no {csvs[0]} (nor v2.1)")
    action_list = next((ann_dir / n for n in ACTION_LISTS if (ann_dir / n).is_file()), None)
    if action_list is None:
        raise FileNotFoundError(f"{ann_dir}: no action list ({', '.join(ACTION_LISTS)})")
    excluded = ann_dir / f"ava_{split}_excluded_timestamps_v2.2.csv"
    meta = next((p for p in (root / "meta.json", base.parent / "meta.json") if p.is_file()), None)
    return AvaFiles(
        annotations, action_list, base / "frames", excluded if excluded.is_file() else None, meta
    )


@dataclass
class KeyFrame:
    """One annotated key frame: its actors' boxes (normalised x1 y1 x2 y2) and actions."""

    video: str
    timestamp: float
    boxes: np.ndarray  # (N, 4) float32 in [0, 1]
    labels: np.ndarray  # (N, A) float32 multi-hot over the action list, in id order
    actor_ids: tuple[int, ...] = ()  # each actor's person id (AVA's: the same across key frames)


@dataclass
class AvaData:
    """An AVA dataset: its key frames, its action list, and its videos' clocks."""

    files: AvaFiles
    actions: dict[int, str]  # action id -> name, ids ascending: model class k + 1 = k-th id
    key_frames: list[KeyFrame]
    fps: float
    timestamp_start: float  # the video time of frame 1
    frame_counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path, split: str, fps: float | None = None) -> AvaData:
        """`fps` overrides the frame rate (ours: the generator's; AVA's: 30)."""
        if fps is not None and not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        files = locate_ava(root, split)
        actions = dict(sorted(load_action_list(files.action_list).items()))
        if files.meta is not None:
            rate, start = float(json.loads(files.meta.read_text())["config"]["fps"]), 0.0
        else:
            rate, start = AVA_FPS, AVA_TIMESTAMP_START
        rows = load_ava_csv(files.annotations)
        excluded = _excluded_key_frames(files.excluded)
        key_frames = group_key_frames([r for r in rows if r.action_id in actions], list(actions))
        key_frames = [k for k in key_frames if (k.video, k.timestamp) not in excluded]
        data = cls(files, actions, key_frames, float(fps or rate), start)
        data.frame_counts = {video: count_frames(files.frames / video) for video in data.videos()}
        return data

    @property
    def class_names(self) -> list[str]:
        return list(self.actions.values())

    @property
    def action_ids(self) -> list[int]:
        return list(self.actions)

    def videos(self) -> list[str]:
        """The annotated videos, in the order of their first row."""
        return list(dict.fromkeys(k.video for k in self.key_frames))

    def key_frames_of(self, videos: list[str]) -> list[int]:
        chosen = set(videos)
        return [i for i, k in enumerate(self.key_frames) if k.video in chosen]

    def centre_frame(self, key: KeyFrame) -> int:
        """The 0-based index of a key frame's frame (file img_{index + 1:05d}.jpg)."""
        return int(round((key.timestamp - self.timestamp_start) * self.fps))

    def read_frames(self, video: str, indices: np.ndarray) -> list[np.ndarray]:
        """RGB frames of a video at 0-based indices; a frame repeated (clamped clips) is read
        once."""
        read = {
            int(i): read_rgb(self.files.frames / video / f"img_{int(i) + 1:05d}.jpg")
            for i in set(indices.tolist())
        }
        return [read[int(i)] for i in indices]

    def ground_truth(self, indices: list[int]) -> list[AvaBox]:
        """The key frames' (actor, action) rows, as the evaluator reads ground truth."""
        rows = []
        for index in indices:
            key = self.key_frames[index]
            for box, labels in zip(key.boxes, key.labels, strict=True):
                for k in np.flatnonzero(labels):
                    rows.append(
                        AvaBox(key.video, key.timestamp, tuple(map(float, box)), self.action_ids[k])
                    )
        return rows


def group_key_frames(rows: list[AvaBox], action_ids: list[int]) -> list[KeyFrame]:
    """AVA rows (one per actor and action) as key frames in order of their first row, each
    actor once (its box) with its actions multi-hot."""
    column = {a: k for k, a in enumerate(action_ids)}
    actors: dict[tuple[str, float], dict[tuple, np.ndarray]] = {}
    for row in rows:
        frame = actors.setdefault((row.video_id, float(row.timestamp)), {})
        actor = (row.person_id, row.box)
        labels = frame.setdefault(actor, np.zeros(len(action_ids), dtype=np.float32))
        labels[column[row.action_id]] = 1.0
    return [
        KeyFrame(
            video,
            timestamp,
            np.array([box for _, box in found], dtype=np.float32).reshape(-1, 4),
            np.stack(list(found.values())),
            tuple(person for person, _ in found),
        )
        for (video, timestamp), found in actors.items()
    ]


def _excluded_key_frames(path: Path | None) -> set[tuple[str, float]]:
    if path is None:
        return set()
    lines = [line.split(",") for line in path.read_text().splitlines() if line.strip()]
    return {(video.strip(), float(ts)) for video, ts, *_ in lines}


def count_frames(folder: Path) -> int:
    """Frames of a video folder (img_00001.jpg on, no gap assumed)."""
    if not folder.is_dir():
        raise DatasetError(folder, "the video's frame folder is missing")
    count = sum(1 for p in folder.iterdir() if p.name.startswith("img_"))
    if count == 0:
        raise DatasetError(folder, "no img_*.jpg frames")
    return count


def clip_indices(
    centre: int,
    clip_len: int,
    frame_interval: int,
    total_frames: int,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """The 0-based frames of the clip around a key frame, as MMAction2's SampleAVAFrames:
    clip_len frames frame_interval apart, clip_len // 2 of them before the centre (the key frame
    is the clip's (clip_len // 2)-th frame), the rest from the centre on. In training (`rng`)
    each frame moves by an offset drawn from [-interval // 2, (interval + 1) // 2) as Python
    evaluates that (-interval floor-divided: {-1, 0} at interval 1 and 2). Indices outside the
    video are clamped to its first or last frame (MMAction2 clamps to [0, total) on 1-based
    files, which can name a frame 0 that is not there; the clamp here is to frames that are)."""
    indices = centre + frame_interval * (np.arange(clip_len) - clip_len // 2)
    if rng is not None:
        low, high = (-frame_interval) // 2, (frame_interval + 1) // 2
        indices = indices + rng.integers(low, high, size=clip_len)
    return np.clip(indices, 0, total_frames - 1)


def flip_boxes(boxes: np.ndarray, width: float) -> np.ndarray:
    """x1 y1 x2 y2 boxes mirrored left-right in an image `width` wide."""
    flipped = boxes.copy()
    flipped[:, 0], flipped[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    return flipped


@dataclass
class ActionSample:
    frames: np.ndarray  # (T, H, W, 3) RGB uint8, the clip at the video's size
    boxes: np.ndarray  # (N, 4) float32 x1 y1 x2 y2 in the frames' pixels
    labels: np.ndarray  # (N, A) float32 multi-hot


class ActionClips(Dataset):
    """Each key frame's clip with its actors; in training the frames are jittered (SampleAVA
    Frames) and the clip flipped left-right at random, boxes with it."""

    def __init__(self, data: AvaData, config: ActionConfig, train: bool = True):
        self.data = data
        self.clip_len = config.clip_len
        self.frame_interval = config.frame_interval
        self.train = train
        self.rng = np.random.default_rng(0)  # replaced per draw (SeededDraws)

    def __len__(self) -> int:
        return len(self.data.key_frames)

    def __getitem__(self, index: int) -> ActionSample:
        key = self.data.key_frames[index]
        indices = clip_indices(
            self.data.centre_frame(key),
            self.clip_len,
            self.frame_interval,
            self.data.frame_counts[key.video],
            self.rng if self.train else None,
        )
        frames = np.stack(self.data.read_frames(key.video, indices))
        height, width = frames.shape[1:3]
        boxes = key.boxes * np.array([width, height, width, height], dtype=np.float32)
        if self.train and self.rng.uniform() < 0.5:
            frames, boxes = frames[:, :, ::-1].copy(), flip_boxes(boxes, width)
        return ActionSample(frames, boxes, key.labels)


def collate_samples(samples: list[ActionSample]) -> list[ActionSample]:
    return samples


def prepare_inputs(
    samples: list[ActionSample], config: ActionConfig, device: torch.device | None = None
) -> tuple[Tensor, Tensor]:
    """The model's inputs for a batch of samples: clips (B, 3, T, H, W) prepared as inference
    prepares them (short side resized, normalised), zero-padded at the bottom and right to the
    batch's largest (the mean after normalisation); RoIs (N, 5) [sample, x1, y1, x2, y2] in the
    resized clips' pixels."""
    clips, rois = [], []
    for k, sample in enumerate(samples):
        clip = prepare_clip(list(sample.frames), config, device)
        clips.append(clip)
        boxes = torch.as_tensor(sample.boxes, dtype=torch.float32, device=clip.device)
        scaled = scale_boxes(boxes, sample.frames.shape[1:3], tuple(clip.shape[-2:]))
        rois.append(torch.cat([scaled.new_full((len(scaled), 1), float(k)), scaled], dim=1))
    return pad_batch(clips, multiple=1), torch.cat(rois)
