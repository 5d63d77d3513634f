"""The action detector (models.action): the releases' state dicts (MMAction2's names, shapes and
dtypes, from the key lists) loading key for key; output shapes of both releases and the small
model on tiny clips; the small model's size; bad checkpoints refused with the reason; the
config's checks; and what the heads must do with time, batches and boxes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.action import ActionConfig, ActionDetector, build_action_model, prepare_clip
from models.action.backbone import subsample_frames
from models.action.inference import probe_action_model
from models.action.mmaction_weights import (
    convert_release_state_dict,
    load_release_file,
    load_release_state_dict,
    to_release_state_dict,
)
from models.action.roi_head import pool_time
from models.checkpoints import CheckpointError
from models.checkpoints.registry import build_model
from models.common.backbones import count_parameters
from tests.vis.mmtracking_fixtures import parse_key_list, stated_parameter_count

DATA = Path(__file__).parent / "data"
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "reference"
SLOWFAST_KEYS = "slowfast_acrn_r50_ava21_checkpoint_keys.txt"
SLOWONLY_KEYS = "slowonly_r50_4x16_ava21_checkpoint_keys.txt"
RELEASES = {
    "slowfast_acrn_r50_ava21": (SLOWFAST_KEYS, ActionConfig.slowfast_acrn_r50),
    "slowonly_r50_4x16_ava21": (SLOWONLY_KEYS, ActionConfig.slowonly_r50),
}
SMALL_PARAMETER_LIMIT = 10_000_000  # a model that trains on 2 CPU cores


def state_from_key_list(key_file: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every entry of the list, named, shaped and typed as the released file, random values of
    a fresh network's scale (so a forward pass stays finite)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, (shape, dtype) in parse_key_list(DATA / key_file).items():
        if not dtype.is_floating_point:
            state[name] = torch.randint(0, 1000, shape, dtype=dtype, generator=generator)
        elif name.endswith("running_var"):
            state[name] = 0.5 + torch.rand(shape, generator=generator)
        elif len(shape) >= 2:
            fan_in = math.prod(shape[1:])
            state[name] = torch.randn(shape, generator=generator) / math.sqrt(fan_in)
        else:
            state[name] = 0.1 * torch.randn(shape, generator=generator)
    return state


@pytest.fixture(scope="module", params=list(RELEASES))
def release(request):
    """(release name, key file, config, its randomly initialised model)."""
    key_file, make_config = RELEASES[request.param]
    config = make_config()
    return request.param, key_file, config, build_action_model(config)


def tiny_clip(config: ActionConfig, batch: int = 1, size: int = 64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((batch, 3, config.clip_len, size, size), generator=generator)


TINY_ROIS = torch.tensor([[0, 4.5, 6.0, 40.0, 60.0], [0, 30.0, 2.0, 63.0, 30.5]])


# ---- the releases' state dicts ----------------------------------------------------------------
@pytest.mark.parametrize("key_file", [SLOWFAST_KEYS, SLOWONLY_KEYS])
def test_key_list_copies_equal_the_shared_reference(key_file):
    if not (SHARED / key_file).exists():
        pytest.skip("the shared reference folder is not here (CI)")
    assert (DATA / key_file).read_text() == (SHARED / key_file).read_text()


def test_our_state_dict_has_exactly_the_release_names_shapes_and_dtypes(release):
    _, key_file, _, model = release
    expected = parse_key_list(DATA / key_file)
    ours = {name: (tuple(t.shape), t.dtype) for name, t in model.state_dict().items()}
    assert ours == expected  # num_batches_tracked (int64, shape ()) included
    assert count_parameters(model) == stated_parameter_count(DATA / key_file)


def test_release_state_dict_loads_key_for_key(release):
    name, key_file, config, model = release
    state = state_from_key_list(key_file)
    converted = convert_release_state_dict({"meta": {}, "state_dict": state}, config)
    assert list(converted) == list(model.state_dict())
    model.load_state_dict(converted, strict=True)
    loaded = model.state_dict()
    for entry, tensor in state.items():
        assert torch.equal(loaded[entry], tensor), entry
    assert to_release_state_dict(loaded).keys() == state.keys()


def test_release_forward_gives_81_logits_per_box_on_a_tiny_clip(release):
    _, _, config, model = release
    with torch.no_grad():
        logits = model(tiny_clip(config), TINY_ROIS)
        scores = model.action_scores(tiny_clip(config), TINY_ROIS)
    assert logits.shape == (2, 81)
    assert scores.shape == (2, 80)  # the background row dropped
    torch.testing.assert_close(scores, torch.sigmoid(logits[:, 1:]))
    assert torch.isfinite(logits).all()


def test_release_loaded_from_a_weights_only_file(tmp_path):
    state = state_from_key_list(SLOWONLY_KEYS, seed=3)
    path = tmp_path / "slowonly.pth"
    extra = {"data_preprocessor.mean": torch.zeros(3, 1, 1, 1)}  # not a weight: ignored
    torch.save({"meta": {"epoch": 20}, "state_dict": {**state, **extra}}, path)
    model = load_release_file(path, "slowonly_r50_4x16_ava21")
    assert torch.equal(model.state_dict()["roi_head.bbox_head.fc_cls.weight"],
                       state["roi_head.bbox_head.fc_cls.weight"])  # fmt: skip
    assert not model.training


# ---- bad checkpoints ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slowonly_state():
    return state_from_key_list(SLOWONLY_KEYS, seed=1)


def refused(state, release="slowonly_r50_4x16_ava21") -> str:
    with pytest.raises(CheckpointError) as error:
        load_release_state_dict({"meta": {}, "state_dict": state}, release)
    return str(error.value)


def test_missing_entry_is_refused_by_name(slowonly_state):
    state = dict(slowonly_state)
    del state["backbone.layer3.2.conv2.bn.running_var"]
    message = refused(state)
    assert "missing 1: backbone.layer3.2.conv2.bn.running_var" in message


def test_unexpected_entry_is_refused_by_name(slowonly_state):
    state = {**slowonly_state, "roi_head.bbox_head.fc_reg.weight": torch.zeros(4, 2048)}
    assert "unexpected 1: roi_head.bbox_head.fc_reg.weight" in refused(state)


def test_wrong_shape_is_refused_with_both_shapes(slowonly_state):
    state = {**slowonly_state, "roi_head.bbox_head.fc_cls.weight": torch.zeros(60, 2048)}
    message = refused(state)
    assert "wrong shape 1: roi_head.bbox_head.fc_cls.weight (60, 2048) != (81, 2048)" in message


def test_float_batch_counter_is_refused(slowonly_state):
    state = {**slowonly_state, "backbone.conv1.bn.num_batches_tracked": torch.tensor(3.0)}
    assert "wrong dtype 1: backbone.conv1.bn.num_batches_tracked" in refused(state)


def test_the_other_release_is_refused(slowonly_state):
    message = refused(slowonly_state, release="slowfast_acrn_r50_ava21")
    assert "missing 652: backbone.fast_path.conv1.bn.bias" in message
    assert "unexpected 318: backbone.conv1.bn.bias" in message


def test_non_tensor_entry_is_refused(slowonly_state):
    state = {**slowonly_state, "backbone.conv1.conv.weight": [1.0, 2.0]}
    assert "not tensors: backbone.conv1.conv.weight" in refused(state)


def test_file_with_pickled_objects_is_refused_not_run(tmp_path, slowonly_state):
    path = tmp_path / "pickled.pth"
    torch.save({"meta": {"config": Path("x")}, "state_dict": slowonly_state}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_release_file(path, "slowonly_r50_4x16_ava21")


def test_unknown_release_name_is_a_key_error(slowonly_state):
    with pytest.raises(KeyError, match="unknown release"):
        load_release_state_dict(slowonly_state, "slowfast_r101")


# ---- the small model -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return build_action_model(ActionConfig.small(num_classes=5))


def test_small_model_is_cpu_sized_with_the_release_module_names(small_model):
    parameters = count_parameters(small_model)
    print(f"ActionConfig.small(): {parameters:,} parameters")
    assert parameters < SMALL_PARAMETER_LIMIT
    release_names = set(parse_key_list(DATA / SLOWFAST_KEYS))
    small_names = set(small_model.state_dict())
    # Fewer blocks per stage (2, not 3/4/6/3): every name of the small model is a release name.
    assert small_names < release_names
    assert small_model.roi_head.bbox_head.fc_cls.out_features == 5


def test_small_forward_shapes_and_scores(small_model):
    config = small_model.config
    with torch.no_grad():
        features = small_model.backbone(tiny_clip(config))
        logits = small_model(tiny_clip(config), TINY_ROIS)
    slow, fast = features
    assert slow.shape == (1, 512, config.clip_len // 4, 4, 4)  # stride 16, 1 / tau of the frames
    assert fast.shape == (1, 64, config.clip_len, 4, 4)
    assert logits.shape == (2, 5)


def test_box_in_the_second_clip_sees_only_that_clip(small_model):
    """ACRN's context and RoIAlign take the box's own clip: a box of clip 1 in a batch of two
    scores as it does with clip 1 alone."""
    config = small_model.config
    clips = tiny_clip(config, batch=2, seed=5)
    box = [30.0, 2.0, 63.0, 30.5]
    with torch.no_grad():
        batched = small_model(clips, torch.tensor([[0, *box], [1, *box]]))
        alone = small_model(clips[1:], torch.tensor([[0, *box]]))
    torch.testing.assert_close(batched[1:], alone)
    assert not torch.allclose(batched[0], batched[1])


def test_a_clip_without_actors_gives_no_rows(small_model):
    with torch.no_grad():
        scores = small_model.action_scores(tiny_clip(small_model.config), torch.zeros((0, 5)))
    assert scores.shape == (0, 4)


def test_probe_runs_a_noise_clip_with_one_box(small_model):
    scores = probe_action_model(small_model)
    assert scores.shape == (1, 4)
    assert torch.isfinite(scores).all()


def test_family_builds_from_the_architecture_dict(small_model):
    model = build_model("action", small_model.architecture())
    assert isinstance(model, ActionDetector)
    assert model.config == small_model.config
    assert model.state_dict().keys() == small_model.state_dict().keys()


# ---- what the parts must do ----------------------------------------------------------------------
def test_slow_pathway_takes_every_tau_th_frame():
    clip = torch.arange(32.0).view(1, 1, 32, 1, 1).expand(1, 3, 32, 2, 2)
    assert subsample_frames(clip, 4)[0, 0, :, 0, 0].tolist() == list(range(0, 32, 4))


@pytest.mark.parametrize("mode", ["avg", "max"])
def test_pooling_over_time_equals_resampling_to_the_longest_first(mode):
    """MMAction2 stretches the slow pathway (nearest) to the fast one's length before pooling;
    pooling directly gives the same, and a length that does not divide is still stretched."""
    generator = torch.Generator().manual_seed(0)
    for frames in (8, 5):
        slow = torch.randn((2, 3, frames, 4, 4), generator=generator)
        stretched = F.interpolate(slow, size=(32, 4, 4), mode="nearest")
        reduce = stretched.mean if mode == "avg" else stretched.amax
        torch.testing.assert_close(pool_time(slow, mode, 32), reduce(dim=2, keepdim=True))


def test_prepare_clip_resizes_to_the_short_side_and_normalises():
    config = ActionConfig.small()
    frames = [torch.full((120, 160, 3), 255, dtype=torch.uint8)] * 3
    clip = prepare_clip(frames, config)
    assert clip.shape == (3, 3, 240, 320)
    expected = [(1 - m) / s for m, s in zip(config.image_mean, config.image_std, strict=True)]
    torch.testing.assert_close(clip[:, 0, 0, 0], torch.tensor(expected))


# ---- the config ----------------------------------------------------------------------------------
def test_release_configs_have_the_release_settings():
    slowfast, slowonly = ActionConfig(), ActionConfig.slowonly_r50()
    assert (slowfast.clip_len, slowfast.frame_interval) == (32, 2)
    assert (slowonly.clip_len, slowonly.frame_interval) == (4, 16)
    assert (slowfast.resample_rate, slowfast.speed_ratio, slowfast.channel_ratio) == (4, 4, 8)
    assert slowfast.feature_stride == slowonly.feature_stride == 16
    assert slowfast.feature_channels == 2304 and slowonly.feature_channels == 2048
    assert slowfast.acrn and not slowonly.acrn
    assert ActionConfig.from_dict(slowfast.to_dict()) == slowfast


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"backbone": "x3d"}, "backbone must be one of"),
        ({"depth": 34}, "depth must be one of"),
        ({"base_channels": 60}, "channel_ratio"),
        ({"resample_rate": 6}, "multiple of speed_ratio"),
        ({"clip_len": 30}, "multiple of resample_rate"),
        ({"temporal_pool": "sum"}, "temporal_pool"),
        ({"num_classes": 1}, "background slot"),
        ({"dropout": 1.0}, "dropout"),
        ({"spatial_strides": (1, 2, 2)}, "one per stage"),
    ],
)
def test_config_rejects_bad_fields(overrides, message):
    with pytest.raises(ValueError, match=message):
        ActionConfig(**overrides)


def test_unknown_manifest_key_is_refused():
    with pytest.raises(ValueError, match="unknown ActionConfig keys: fbo_layers"):
        ActionConfig.from_dict({**ActionConfig().to_dict(), "fbo_layers": True})
