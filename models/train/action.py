"""`vidserve train action`: the SlowFast-ACRN detector on an AVA v2.2 dataset (ours or AVA's).

Each key frame is a sample: the clip around it (MMAction2's SampleAVAFrames: clip_len frames
frame_interval apart, jittered, clamped to the video; models.train.action_data), prepared as
inference prepares clips (models.action.inference.prepare_clip), flipped at random, and its
actors' ground-truth boxes as RoIs. The loss is BBoxHeadAVA's: sigmoid cross-entropy of each
actor's logits against its multi-hot actions, the background row 0 left out, averaged over the
actors and classes (its focal terms off, as the releases train). Validation is AVA frame-mAP@0.5
(models.eval.action) with the ground-truth boxes on held-out videos, per action too; the
checkpoint is published and announced as the other families' are.

The releases train SGD at lr 0.1 (64 clips a step) from Kinetics-pretrained backbones; the small
model trains from scratch with the loop's AdamW and cosine schedule (rates not yet tuned on the
synthetic world).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Subset

from models.action.config import ActionConfig
from models.action.model import FAMILY, ActionDetector, build_action_model
from models.checkpoints.checkpoint import read_manifest
from models.data.ava import AvaBox
from models.train.action_data import (
    ActionClips,
    ActionSample,
    AvaData,
    collate_samples,
    prepare_inputs,
)
from models.train.action_features import actor_features, frame_map, key_frame_rows, with_banks
from models.train.distributed import Drawn, on_main_rank, prepare_model, process_group
from models.train.loop import (
    TrainRun,
    batch_stream,
    prepare_run,
    run_loop,
    seed_everything,
    source_record,
    start_from_init,
)
from models.train.vis import validate_and_publish

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class ActionTrainConfig(TrainRun):
    name: str = "slowfast-acrn"
    work_dir: Path = Path("runs/action")
    lr: float = 1e-3
    grad_clip: float = 10.0
    fps: float | None = None  # the frames' rate; None: the generator's (ours) or AVA's 30
    loader_workers: int = 1  # processes decoding JPEGs beside the training step


class ActionLosses:
    """A batch's loss: the clips and RoIs prepared as for inference, BBoxHeadAVA's multi-label
    sigmoid cross-entropy over the action rows (1..), row 0 (background) dropped."""

    def __init__(self, model: ActionDetector):
        self.model = model

    def __call__(self, drawn: Drawn) -> dict[str, torch.Tensor]:
        samples: list[ActionSample] = drawn.batch
        clips, rois = prepare_inputs(samples, self.model.config, self.model.device)
        labels = torch.from_numpy(np.concatenate([s.labels for s in samples])).to(clips.device)
        logits = self.model(clips, rois)
        return {"loss_action_cls": action_loss(logits, labels)}


def action_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean sigmoid cross-entropy of logits (N, 1 + A) against multi-hot labels (N, A)."""
    return F.binary_cross_entropy_with_logits(logits[:, 1:], labels.to(logits.dtype))


def train_action(cfg: ActionTrainConfig) -> Path | None:
    """Train, evaluate and publish; returns the published checkpoint folder (None on the ranks
    other than 0 under torchrun)."""
    with process_group():
        return _train_action(cfg)


def _train_action(cfg: ActionTrainConfig) -> Path | None:
    seed_everything(cfg.seed)
    data = AvaData.load(cfg.data, cfg.split, cfg.fps)
    train_videos, val_set = split_action(cfg, data)
    config = initial_config(cfg, data)
    network = build_action_model(config)
    start_from_init(network, cfg, FAMILY, data.class_names)
    # The 3D batch norms are not synced under DDP (sync_batchnorm converts 2D ones only): each
    # rank normalises with its shard's statistics.
    model = prepare_model(network, synced_batchnorm=False)
    clips = ActionClips(data, config, train=True)
    keys = data.key_frames_of(train_videos)
    loop_cfg, optimizer, start = prepare_run(model, cfg)
    loop_cfg.grad_clip = cfg.grad_clip
    batches = batch_stream(
        Subset(clips, keys),
        collate_samples,
        cfg,
        start,
        rng_owner=clips,
        loader_workers=cfg.loader_workers,
    )
    log.info("training %s on %d key frames of %d videos", cfg.name, len(keys), len(train_videos))
    result = run_loop(
        model, optimizer, batches, ActionLosses(model), loop_cfg, start, "train action"
    )
    return on_main_rank(
        lambda: validate_and_publish(
            cfg,
            model,
            FAMILY,
            evaluate_action_model,
            data.files.annotations,
            data.class_names,
            val_set,
            result,
            start,
            len(train_videos),
            grad_clip=cfg.grad_clip,
            fps=data.fps,
            **source_record(cfg),
        )
    )


def initial_config(cfg: ActionTrainConfig, data: AvaData) -> ActionConfig:
    """The small configuration for the data's actions, or with --init the starting
    checkpoint's architecture (its weights must fit)."""
    if cfg.init is None:
        return ActionConfig.small(num_classes=len(data.actions) + 1, **cfg.model_overrides)
    architecture = read_manifest(cfg.init).architecture
    return ActionConfig.from_dict({**architecture, **cfg.model_overrides})


def split_action(cfg: ActionTrainConfig, data: AvaData) -> tuple[list[str], tuple]:
    """Training videos, and (validation data, its videos): --val's, or the last val_videos."""
    if cfg.val is not None:
        val = AvaData.load(cfg.val, cfg.val_split, cfg.fps)
        if val.actions != data.actions:
            raise ValueError(f"{cfg.val}: action list differs from the training set's")
        return data.videos(), (val, val.videos())
    train_videos, held = cfg.hold_out(data.videos())
    return train_videos, (data, held)


def predict_key_frames(
    model: ActionDetector, data: AvaData, indices: list[int], batch_size: int = 4
) -> list[AvaBox]:
    """Every action's score for every ground-truth actor of the key frames (test-time clips: no
    jitter, no flip; a model with a bank reads each actor's past key frames), as AVA prediction
    rows, in the order of `indices`."""
    features = actor_features(model, data, indices, batch_size)
    return key_frame_rows(model, data, with_banks(data, features, model.config))


def evaluate_action_model(
    model: ActionDetector,
    data: AvaData,
    videos: list[str],
    batch_size: int = 4,
    bank_window_s: float | None = None,
) -> dict[str, float]:
    """Frame-mAP@0.5 (`frame_map`) with the ground-truth boxes on every key frame of the given
    videos, and each action's AP (`ap_<name>`, absent for an action with no ground truth).
    `bank_window_s` narrows a bank model's window (0: no bank read)."""
    indices = data.key_frames_of(videos)
    features = actor_features(model, data, indices, batch_size)
    return frame_map(model, data, with_banks(data, features, model.config, bank_window_s))
