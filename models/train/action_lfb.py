"""`vidserve train action-lfb`: the action head with an online long-term feature bank
(models.action.feature_bank), on a trained action checkpoint's frozen backbone.

The paper trains its LFB model in two stages: a first model computes the bank's features, a
second reads them. Here the first model is the starting checkpoint (--init) and the second
keeps its backbone and ACRN head frozen, so the features a bank holds in serving (computed by
the served model at earlier key frames) are exactly those it held in training. Every key frame's
actor features are computed once (test-time clips, as serving builds them: no jitter, no flip);
then the bank operator and the classifier train on them through the shared loop. An actor's
bank is its own features at the earlier key frames of its video within the window, at most
`lfb_per_second` a second: TrackBanks read and written in time order, as a serving session
does, with the annotations' person ids as the tracks.

The classifier starts as the checkpoint's, its bank columns zero, so step 0 is the checkpoint.
`--lfb none` trains the same head the same way without a bank: the control that tells what the
bank adds. Validation is frame-mAP@0.5 with the ground-truth boxes, the held-out banks built the
same way; the checkpoint is published and announced as the other families' are.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from models.action.config import ActionConfig
from models.action.model import FAMILY, ActionDetector, build_action_model
from models.checkpoints.checkpoint import load_checkpoint
from models.train.action import action_loss, split_action
from models.train.action_data import AvaData
from models.train.action_features import (
    CachedKeyFrame,
    actor_features,
    frame_map,
    head_inputs,
    with_banks,
)
from models.train.distributed import Drawn, on_main_rank
from models.train.loop import TrainRun, batch_stream, prepare_run, run_loop, seed_everything
from models.train.vis import validate_and_publish

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class ActionLfbTrainConfig(TrainRun):
    name: str = "slowfast-acrn-lfb"
    lr: float = 1e-3
    grad_clip: float = 10.0
    fps: float | None = None
    lfb: str = "max"
    lfb_window_s: float = 4.0
    lfb_per_second: float = 1.0


def bank_config(base: ActionConfig, cfg: ActionLfbTrainConfig) -> ActionConfig:
    return ActionConfig.from_dict(
        {
            **base.to_dict(),
            "lfb": cfg.lfb,
            "lfb_window_s": cfg.lfb_window_s,
            "lfb_per_second": cfg.lfb_per_second,
        }
    )


def start_from(base: ActionDetector, config: ActionConfig) -> ActionDetector:
    """A model of `config` with the base's weights; the classifier's bank columns zero (so it
    scores as the base), the bank operator freshly initialised; the backbone and ACRN frozen."""
    model = build_action_model(config)
    state = base.state_dict()
    fc = "roi_head.bbox_head.fc_cls.weight"
    widened = model.state_dict()[fc].clone().zero_()
    widened[:, : state[fc].shape[1]] = state[fc]
    missing, unexpected = model.load_state_dict({**state, fc: widened}, strict=False)
    assert not unexpected and all(".fbo." in k for k in missing), (missing, unexpected)
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.startswith("roi_head.bbox_head.")
    return model


def cached_features(
    model: ActionDetector, data: AvaData, indices: list[int], cfg: ActionLfbTrainConfig, tag: str
) -> dict[int, Tensor]:
    """actor_features, kept in the work dir: a second run on the same checkpoint and data (the
    control, another operator) reads them back. The file is named by the checkpoint's version
    and the annotations' sha256, and holds tensors only (read with weights_only)."""
    digest = hashlib.sha256(data.files.annotations.read_bytes()).hexdigest()[:16]
    path = Path(cfg.work_dir) / f"features-{tag}-{cfg.init.name}-{digest}.pt"
    if path.is_file():
        stored = torch.load(path, map_location="cpu", weights_only=True)
        if sorted(stored) == sorted(indices):
            log.info("actor features read from %s", path)
            return stored
    features = actor_features(model, data, indices, show_progress=cfg.show_progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(features, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    return features


class HeadLosses:
    """The classifier's loss on cached features with their banks (BBoxHeadAVA's)."""

    def __init__(self, model: ActionDetector):
        self.model = model

    def __call__(self, drawn: Drawn) -> dict[str, Tensor]:
        channels = self.model.config.feature_channels
        actors, banks, labels = head_inputs(drawn.batch, channels, self.model.device)
        logits = self.model.roi_head.bbox_head.classify(actors, banks)
        return {"loss_action_cls": action_loss(logits, labels)}


class CachedSet(torch.utils.data.Dataset):
    def __init__(self, cached: list[CachedKeyFrame]):
        self.cached = cached
        self.rng = np.random.default_rng(0)  # the loop's draws seed it; nothing random here

    def __len__(self) -> int:
        return len(self.cached)

    def __getitem__(self, index: int) -> CachedKeyFrame:
        return self.cached[index]


def _collate(samples: list[CachedKeyFrame]) -> list[CachedKeyFrame]:
    return samples


def train_action_lfb(cfg: ActionLfbTrainConfig):
    """Cache, train the head with its bank, validate, publish; returns the checkpoint folder."""
    if cfg.init is None:
        raise ValueError("train action-lfb starts from a trained action checkpoint: give --init")
    seed_everything(cfg.seed)
    data = AvaData.load(cfg.data, cfg.split, cfg.fps)
    train_videos, (val_data, val_videos) = split_action(cfg, data)
    base = load_checkpoint(cfg.init, "cpu", family=FAMILY)
    if base.manifest.class_names != data.class_names:
        raise ValueError(
            f"{cfg.init}: actions {base.manifest.class_names} differ from the data's "
            f"{data.class_names}"
        )
    if base.model.config.lfb != "none":
        raise ValueError(f"{cfg.init}: already has a feature bank ({base.model.config.lfb})")
    model = start_from(base.model, bank_config(base.model.config, cfg))
    train_keys = data.key_frames_of(train_videos)
    train = with_banks(data, cached_features(model, data, train_keys, cfg, "train"), model.config)
    val_keys = val_data.key_frames_of(val_videos)
    val = with_banks(val_data, cached_features(model, val_data, val_keys, cfg, "val"), model.config)
    log.info("start (the checkpoint, banks in): %s", frame_map(model, val_data, val))
    loop_cfg, optimizer, start = prepare_run(model, cfg)
    loop_cfg.grad_clip = cfg.grad_clip
    batches = batch_stream(CachedSet([train[k] for k in train_keys]), _collate, cfg, start)
    result = run_loop(
        model, optimizer, batches, HeadLosses(model), loop_cfg, start, "train action-lfb"
    )
    return on_main_rank(
        lambda: validate_and_publish(
            cfg,
            model,
            FAMILY,
            lambda m, d, v: frame_map(m, d, val),
            data.files.annotations,
            data.class_names,
            (val_data, val_videos),
            result,
            start,
            len(train_videos),
            grad_clip=cfg.grad_clip,
            fps=data.fps,
            init=str(cfg.init),
            init_version=base.manifest.version,
        )
    )
