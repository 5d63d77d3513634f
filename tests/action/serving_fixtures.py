"""An action checkpoint for the serving tests: the small SlowFast-ACRN, randomly initialised
(seeded), published beside a copy of the shipped `masktrack`, so that the store serves the
pipeline `slowfast-acrn` = masktrack -> action head. Random weights score every actor, just
not meaningfully: the tests check what is answered when, not how well."""

import shutil
from pathlib import Path

import torch

from models.action.config import ActionConfig
from models.action.model import build_action_model
from models.checkpoints.store import CheckpointStore
from models.data.synthetic.world import ACTIONS
from service.settings import SHIPPED_CHECKPOINTS

NAME = "slowfast-acrn"
VERSION = "20250101T000000Z"
TRAINING_FPS = 8.0  # the synthetic world's
ACTION_NAMES = list(ACTIONS.values())


def small_action_model(short_side: int = 240):
    torch.manual_seed(5)
    config = ActionConfig.small(num_classes=len(ACTION_NAMES) + 1, test_short_side=short_side)
    return build_action_model(config.to_dict()).eval(), config


def action_store(folder: Path, short_side: int = 240) -> Path:
    """A store with the shipped masktrack and a random small action checkpoint."""
    shutil.copytree(SHIPPED_CHECKPOINTS / "vis", folder / "vis")
    model, config = small_action_model(short_side)
    CheckpointStore(folder).publish(
        model,
        family="action",
        name=NAME,
        version=VERSION,
        architecture=config.to_dict(),
        class_names=ACTION_NAMES,
        training={"fps": TRAINING_FPS},
    )
    return folder
