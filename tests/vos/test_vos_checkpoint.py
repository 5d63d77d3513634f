"""STCN's parameter names and shapes are the official checkpoint's, and its files load."""

import pytest
import torch
from vos_fixtures import KEY_LIST, SHARED_KEY_LIST, key_list_total_numel, parse_key_list

from models.checkpoints import CheckpointError, load_checkpoint
from models.vos import STCN, VosConfig, convert_official_state_dict, load_official_stcn
from models.vos.checkpoint import StateDictMismatchError, convert_official_stcn

BATCH_COUNT = "num_batches_tracked"


class NotATensor:
    """Any pickled object other than tensors and containers: must be refused, never built."""


@pytest.fixture(scope="module")
def reference_shapes() -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):  # names and shapes only: no memory, no init
        model = STCN(VosConfig())
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


@pytest.fixture(scope="module")
def reference_model() -> STCN:
    return STCN(VosConfig())


@pytest.fixture(scope="module")
def official_like_state() -> dict[str, torch.Tensor]:
    """A state dict as the official file would hold it: every entry filled with its own number."""
    state = {}
    for number, (name, shape) in enumerate(parse_key_list(KEY_LIST).items()):
        dtype = torch.int64 if name.endswith(BATCH_COUNT) else torch.float32
        state[name] = torch.full(shape, number % 251 + 1, dtype=dtype)
    return state


def test_the_committed_key_list_is_the_models_state_dict(reference_shapes):
    expected = parse_key_list(KEY_LIST)
    assert len(expected) == 405
    assert list(reference_shapes.items()) == list(expected.items())


def test_the_shared_reference_key_list_is_the_models_state_dict(reference_shapes):
    if not SHARED_KEY_LIST.exists():
        pytest.skip(f"{SHARED_KEY_LIST} is absent (the shared folder is not in the repository)")
    assert parse_key_list(SHARED_KEY_LIST) == reference_shapes


def test_size_matches_the_published_count(reference_shapes):
    # The stated 54,469,252 counts parameters and BN running statistics, not the batch counters.
    stated = key_list_total_numel(KEY_LIST)
    total = sum(
        torch.Size(shape).numel()
        for name, shape in reference_shapes.items()
        if not name.endswith(BATCH_COUNT)
    )
    assert total == stated == 54_469_252


def test_every_value_encoder_conv_has_a_bias(reference_shapes):
    conv_weights = [
        name.removesuffix(".weight")
        for name, shape in reference_shapes.items()
        if name.startswith("value_encoder.") and len(shape) == 4
    ]
    # stem 1, layer1-3 14 (2 of them shortcuts), fuser ResBlocks 5, CBAM spatial conv 1
    assert len(conv_weights) == 21
    assert all(f"{conv}.bias" in reference_shapes for conv in conv_weights)


@pytest.mark.parametrize("with_batch_counts", [True, False], ids=["with-counts", "without-counts"])
def test_an_official_state_dict_loads_key_for_key(
    reference_model, official_like_state, with_batch_counts
):
    state = {
        name: tensor
        for name, tensor in official_like_state.items()
        if with_batch_counts or not name.endswith(BATCH_COUNT)
    }
    converted = convert_official_state_dict(state, reference_model.state_dict())
    reference_model.load_state_dict(converted, strict=True)
    loaded = reference_model.state_dict()
    for name, tensor in official_like_state.items():
        expected = tensor if with_batch_counts or not name.endswith(BATCH_COUNT) else 0 * tensor
        assert torch.equal(loaded[name], expected), name


def test_a_stage0_checkpoint_gets_a_zero_other_objects_channel(
    reference_model, official_like_state
):
    state = dict(official_like_state)
    state["value_encoder.conv1.weight"] = torch.randn(64, 4, 7, 7)
    converted = convert_official_state_dict(state, reference_model.state_dict())
    reference_model.load_state_dict(converted, strict=True)
    weight = reference_model.value_encoder.conv1.weight
    assert torch.equal(weight[:, :4], state["value_encoder.conv1.weight"])
    assert torch.count_nonzero(weight[:, 4]) == 0


def test_a_data_parallel_pth_file_loads(tmp_path, reference_model, official_like_state):
    path = tmp_path / "stcn.pth"
    without_counts = {k: v for k, v in official_like_state.items() if not k.endswith(BATCH_COUNT)}
    torch.save({f"module.{name}": tensor for name, tensor in without_counts.items()}, path)
    model = load_official_stcn(path, reference_model)
    assert not model.training
    assert torch.equal(model.decoder.pred.bias, official_like_state["decoder.pred.bias"])


def test_a_pth_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"key_comp.bias": torch.zeros(512), "payload": NotATensor()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_official_stcn(path, STCN(VosConfig.small()))


def test_a_state_dict_that_does_not_fit_names_the_entries(reference_model, official_like_state):
    state = dict(official_like_state)
    state["key_encoder.layer1.0.conv1.weight"] = state.pop("key_encoder.res2.0.conv1.weight")
    state["key_comp.bias"] = torch.zeros(256)
    with pytest.raises(StateDictMismatchError) as caught:
        convert_official_state_dict(state, reference_model.state_dict())
    message = str(caught.value)
    for part in ("key_encoder.res2.0.conv1.weight", "key_encoder.layer1.0.conv1.weight"):
        assert part in message
    assert "key_comp.bias (256,) != (512,)" in message


def test_official_weights_become_a_vos_checkpoint(tmp_path, official_like_state):
    pth = tmp_path / "stcn.pth"
    torch.save(official_like_state, pth)
    manifest = convert_official_stcn(pth, tmp_path / "ckpt", version="official-1")
    assert manifest.family == "vos"
    assert VosConfig.from_dict(manifest.architecture) == VosConfig()
    # Constant weights (1..251) are names and shapes, not a model: its forward pass overflows,
    # which the probe would refuse, so only the files are checked here.
    loaded = load_checkpoint(tmp_path / "ckpt", family="vos", probe=False)
    expected = official_like_state["key_proj.key_proj.weight"]
    assert torch.equal(loaded.model.key_proj.key_proj.weight, expected)
