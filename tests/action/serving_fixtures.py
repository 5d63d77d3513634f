"""The action head's model for the head's tests (test_action_head.py): the small SlowFast-ACRN,
randomly initialised (seeded). Random weights score every actor, just not meaningfully: the
tests check what is answered when, not how well. NAME and ACTION_NAMES are the shipped
checkpoint's, which the API tests (tests/service/test_action_api.py) are served."""

import torch

from models.action.config import ActionConfig
from models.action.model import build_action_model
from models.data.synthetic.world import ACTIONS

NAME = "slowfast-acrn"
BANK_NAME = "slowfast-acrn-lfb"  # the shipped head with a feature bank
TRAINING_FPS = 8.0  # the synthetic world's
ACTION_NAMES = list(ACTIONS.values())


def small_action_model(short_side: int = 240, **overrides):
    torch.manual_seed(5)
    config = ActionConfig.small(
        num_classes=len(ACTION_NAMES) + 1, test_short_side=short_side, **overrides
    )
    return build_action_model(config.to_dict()).eval(), config
