"""A tiny MaskFormer and one server of its own for the panoptic serving tests
(test_panoptic_serving.py, test_panoptic_video.py): the fixture `panoptic_server` lives in
tests/service/conftest.py, so both modules share one server per test session."""

import torch

from models.data.synthetic.world import STUFF_CATEGORIES, THING_CATEGORIES
from models.panoptic.config import PanopticConfig
from models.panoptic.model import build_maskformer

MODEL = "maskformer"
THINGS, STUFF = list(THING_CATEGORIES.values()), list(STUFF_CATEGORIES.values())


def tiny_maskformer():
    """A randomly initialised MaskFormer, small enough to answer a frame in tens of ms, whose
    answers still hold several things and stuff: thresholds 0 keep every query that is not "no
    object" (pushed down), and the class, mask and query weights are scaled up so that queries
    differ and their classes and masks are sharp (seeded: the same model every run)."""
    torch.manual_seed(2)
    config = PanopticConfig.small(
        hidden_dim=32,
        ffn_dim=64,
        num_heads=2,
        group_norm_groups=8,
        encoder_layers=1,
        decoder_layers=1,
        num_queries=12,
        object_mask_threshold=0.0,
        overlap_threshold=0.0,
    )
    model = build_maskformer(config.to_dict()).eval()
    head = model.panoptic_head
    with torch.no_grad():
        head.cls_embed.weight.mul_(50)
        head.cls_embed.bias[-1] = -20
        head.mask_embed[-1].weight.mul_(10)
        head.query_embed.weight.mul_(30)
    return model, config
