"""VosConfig round-trips through the manifest's JSON and rejects what would build another model."""

import json

import pytest

from models.checkpoints.registry import build_model
from models.vos import STCN, VosConfig


@pytest.mark.parametrize("config", [VosConfig(), VosConfig.small()], ids=["reference", "small"])
def test_config_round_trips_through_json(config):
    data = json.loads(json.dumps(config.to_dict()))
    assert VosConfig.from_dict(data) == config


def test_missing_keys_take_defaults_and_unknown_keys_are_refused():
    assert VosConfig.from_dict({"value_dim": 256}) == VosConfig(value_dim=256)
    with pytest.raises(ValueError, match="unknown VosConfig keys: valu_dim"):
        VosConfig.from_dict({"valu_dim": 256})


@pytest.mark.parametrize(
    "data",
    [
        {"key_block": "wide"},
        {"key_widths": [64, 128]},
        {"value_dim": 0},
        {"value_dim": 12.5},
        {"value_dim": True},
        {"short_edge": 8},
        {"short_edge": "480"},
    ],
)
def test_invalid_configs_are_refused(data):
    with pytest.raises(ValueError):
        VosConfig.from_dict(data)


def test_small_config_keeps_the_key_dim_and_module_structure():
    small = VosConfig.small()
    assert small.key_dim == 64
    assert small.short_edge == 240
    assert 64 <= small.value_dim <= 128


def test_the_registry_builds_the_vos_family_from_a_manifest_dict():
    model = build_model("vos", VosConfig.small().to_dict())
    assert isinstance(model, STCN)
    assert model.config == VosConfig.small()
