"""The action head's inputs for annotated key frames, and scoring them with ground-truth boxes.

Every key frame's actors go through the model once (test-time clips, as serving builds them: no
jitter, no flip) to their pooled features (ActionDetector.actor_features); with a feature bank
(config.lfb), each actor's bank is its own features at the earlier key frames of its video
within the window, at most `lfb_per_second` a second: TrackBanks read and written in time order,
as a serving session does, with the annotations' person ids as the tracks. The scores are the
classifier's on those features (in eval mode the same numbers as the whole model's pass). The
validation of both action trainers and benchmarks/action_quality.py score this way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from rich.progress import Progress
from torch import Tensor

from models.action.config import ActionConfig
from models.action.feature_bank import BankBatch, TrackBanks
from models.action.model import ActionDetector
from models.data.ava import AvaBox
from models.eval.action import METRIC_NAME, evaluate_actions
from models.train.action_data import ActionClips, AvaData, prepare_inputs

BANK_BYTES = 1 << 30  # no cap here: a video's banks are small


@dataclass
class CachedKeyFrame:
    """A key frame's actors as the classifier sees them: features (N, C), each actor's bank
    (L_i, C), labels (N, A)."""

    features: Tensor
    banks: list[Tensor]
    labels: np.ndarray


@torch.no_grad()
def actor_features(
    model: ActionDetector,
    data: AvaData,
    indices: list[int],
    batch_size: int = 4,
    show_progress: bool = False,
) -> dict[int, Tensor]:
    """Each key frame's actor features (N, C), from test-time clips, the model in eval mode."""
    model.eval()
    clips = ActionClips(data, model.config, train=False)
    features: dict[int, Tensor] = {}
    with Progress(disable=not show_progress) as progress:
        task = progress.add_task("actor features", total=len(indices))
        for first in range(0, len(indices), batch_size):
            chunk = indices[first : first + batch_size]
            samples = [clips[k] for k in chunk]
            actors = model.actor_features(*prepare_inputs(samples, model.config, model.device))
            sizes = [len(s.boxes) for s in samples]
            features.update(zip(chunk, actors.cpu().split(sizes), strict=True))
            progress.update(task, advance=len(chunk))
    return features


def with_banks(
    data: AvaData,
    features: dict[int, Tensor],
    config: ActionConfig,
    window_s: float | None = None,
) -> dict[int, CachedKeyFrame]:
    """The key frames' features with each actor's bank: per video, key frames in time order, a
    bank read before the key frame's own features are written (past only). `window_s` narrows
    the config's window (0: nothing read, as action_bank_window=0 serves); a model without a bank
    operator reads none."""
    window = config.lfb_window_s if window_s is None else window_s
    reading = config.lfb != "none" and window > 0
    by_video: dict[str, list[int]] = {}
    for k in features:
        by_video.setdefault(data.key_frames[k].video, []).append(k)
    cached = {}
    for keys in by_video.values():
        banks = TrackBanks(window, config.lfb_per_second, BANK_BYTES) if reading else None
        for k in sorted(keys, key=lambda k: data.key_frames[k].timestamp):
            key = data.key_frames[k]
            ids = list(key.actor_ids)
            if banks is None:
                reads = [torch.zeros((0, 0))] * len(ids)
            else:
                reads = banks.read(ids, key.timestamp)
                banks.write(ids, features[k], key.timestamp)
            cached[k] = CachedKeyFrame(features[k], reads, key.labels)
    return {k: cached[k] for k in features}  # in the order of `features`


def head_inputs(samples: list[CachedKeyFrame], channels: int, device=None) -> tuple:
    """A batch of cached key frames: actor features (N, C), their BankBatch, labels (N, A)."""
    actors = torch.cat([s.features for s in samples]).to(device)
    banks = BankBatch.stack([b for s in samples for b in s.banks], channels, device)
    labels = torch.from_numpy(np.concatenate([s.labels for s in samples])).to(device)
    return actors, banks, labels


@torch.no_grad()
def key_frame_rows(
    model: ActionDetector, data: AvaData, cached: dict[int, CachedKeyFrame]
) -> list[AvaBox]:
    """Every action's score for every ground-truth actor of the cached key frames (in their
    order), as AVA prediction rows."""
    model.eval()
    rows = []
    channels = model.config.feature_channels
    for k, sample in cached.items():
        actors, banks, _ = head_inputs([sample], channels, model.device)
        scores = model.scores_from_features(actors, banks).cpu().numpy()
        key = data.key_frames[k]
        for box, actor_scores in zip(key.boxes, scores, strict=True):
            box = tuple(map(float, box))
            for action, score in zip(data.action_ids, actor_scores, strict=True):
                rows.append(AvaBox(key.video, key.timestamp, box, action, score=float(score)))
    return rows


def frame_map(
    model: ActionDetector, data: AvaData, cached: dict[int, CachedKeyFrame]
) -> dict[str, float]:
    """Frame-mAP@0.5 (`frame_map`) with the ground-truth boxes on the cached key frames, and
    each action's AP (`ap_<name>`, absent for an action with no ground truth)."""
    result = evaluate_actions(
        data.ground_truth(list(cached)),
        key_frame_rows(model, data, cached),
        class_ids=data.action_ids,
        class_names=data.actions,
    )
    metrics = {"frame_map": round(float(result.metrics[METRIC_NAME]), 4)}
    for name, ap in result.per_class.items():
        metrics[f"ap_{name}"] = round(float(ap), 4)
    return metrics
