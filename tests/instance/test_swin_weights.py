"""The released Cascade Mask R-CNN Swin-B (COCO) state dict converts into our CascadeMaskRCNN key
for key: the Swin trunk computes torchvision's Swin features through the key map, the release's
background-last classes and class-specific boxes and masks land on torchvision's layout, and the
box coders decode the release's deltas as MMDetection does."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.models import swin_t
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

from models.checkpoints import CheckpointError
from models.checkpoints.importing import detect_format
from models.checkpoints.public_formats import coco_80_class_names
from models.common.swin import SWIN_SIZES, SwinTrunk
from models.instance import InstanceConfig
from models.instance.config import RELEASE_TARGET_STDS
from models.instance.swin_weights import (
    convert_release_state_dict,
    expected_release_keys,
    load_release_state_dict,
    release_architecture,
    to_release_state_dict,
)
from tests.vis.mmtracking_fixtures import parse_key_list, stated_parameter_count

KEY_FILE = "cascade_mask_rcnn_swin_b_coco_checkpoint_keys.txt"
# A copy of the list in the shared reference folder, so that CI never needs that folder.
KEY_LIST = Path(__file__).parent / "data" / KEY_FILE
SHARED_KEY_LIST = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / KEY_FILE

CLASSES = 80
CLASS_5 = 5  # a foreground class in the release's 0-based labels; ours is 6 (background is 0)
HEAD = "roi_head.bbox_head.0"
MASK = "roi_head.mask_head.0"


# ---- the release's state dict, from its key list --------------------------------------------
def swin_relative_position_index(window: int) -> torch.Tensor:
    """Swin's own formula (the release's WindowAttention.__init__), (window², window²) int64."""
    coords = torch.stack(torch.meshgrid([torch.arange(window)] * 2, indexing="ij"))
    coords_flatten = torch.flatten(coords, 1)
    relative_coords = (coords_flatten[:, :, None] - coords_flatten[:, None, :]).permute(1, 2, 0)
    relative_coords[:, :, 0] += window - 1
    relative_coords[:, :, 1] += window - 1
    relative_coords[:, :, 0] *= 2 * window - 1
    return relative_coords.sum(-1)


def release_like_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Every entry of the key list, named, shaped and typed as the released file: random values
    (of a fresh network's scale), the real relative position index, batch counters of 7."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, (shape, dtype) in parse_key_list(KEY_LIST).items():
        if name.endswith("relative_position_index"):
            state[name] = swin_relative_position_index(math.isqrt(shape[0]))
        elif dtype != torch.float32:
            state[name] = torch.full(shape, 7, dtype=dtype)
        elif len(shape) >= 2:
            state[name] = torch.randn(shape, generator=generator) / math.sqrt(math.prod(shape[1:]))
        else:
            state[name] = 1 + 0.1 * torch.randn(shape, generator=generator)
        assert state[name].dtype == dtype
    return state


@pytest.fixture(scope="module")
def release_state():
    return release_like_state()


@pytest.fixture(scope="module")
def loaded(release_state):
    """The full Swin-B Cascade Mask R-CNN holding the release's weights (built once)."""
    return load_release_state_dict({"meta": {}, "state_dict": release_state})


def test_the_committed_key_list_is_the_shared_one():
    if not SHARED_KEY_LIST.exists():
        pytest.skip(f"{SHARED_KEY_LIST} is absent (the shared folder is not in the repository)")
    assert KEY_LIST.read_text() == SHARED_KEY_LIST.read_text()


def test_the_key_list_is_every_name_the_converter_expects(release_state):
    assert len(release_state) == 505
    assert set(release_state) == expected_release_keys()


def test_the_release_loads_key_for_key(release_state, loaded):
    ours = loaded.state_dict()
    assert set(convert_release_state_dict(release_state)) == set(ours)  # each of ours is set
    # Every release entry used, unchanged where the layouts agree: reverse the conversion.
    back = to_release_state_dict(ours)
    assert set(back) == set(release_state)
    for name, tensor in release_state.items():
        assert back[name].dtype == tensor.dtype, name
        assert torch.equal(back[name], tensor), name
    pairs = {
        "backbone.body.features.0.0.weight": "backbone.patch_embed.proj.weight",
        "backbone.body.features.0.2.bias": "backbone.patch_embed.norm.bias",
        "backbone.body.features.1.1.mlp.0.weight": "backbone.layers.0.blocks.1.mlp.fc1.weight",
        "backbone.body.features.5.17.mlp.3.bias": "backbone.layers.2.blocks.17.mlp.fc2.bias",
        "backbone.body.features.5.3.attn.qkv.weight": "backbone.layers.2.blocks.3.attn.qkv.weight",
        "backbone.body.features.2.reduction.weight": (
            "backbone.layers.0.downsample.reduction.weight"
        ),
        "backbone.body.features.6.norm.weight": "backbone.layers.2.downsample.norm.weight",
        "backbone.body.features.7.1.norm2.weight": "backbone.layers.3.blocks.1.norm2.weight",
        "backbone.body.norms.3.bias": "backbone.norm3.bias",
        "backbone.fpn.inner_blocks.2.0.weight": "neck.lateral_convs.2.conv.weight",
        "backbone.fpn.layer_blocks.3.0.bias": "neck.fpn_convs.3.conv.bias",
        "rpn.head.conv.0.0.weight": "rpn_head.rpn_conv.weight",
        "rpn.head.bbox_pred.weight": "rpn_head.rpn_reg.weight",
        "roi_heads.stages.1.box_head.2.0.weight": "roi_head.bbox_head.1.shared_convs.2.conv.weight",
        "roi_heads.stages.2.box_head.3.1.running_var": (
            "roi_head.bbox_head.2.shared_convs.3.bn.running_var"
        ),
        "roi_heads.stages.0.box_head.5.weight": "roi_head.bbox_head.0.shared_fcs.0.weight",
        "roi_heads.stages.2.mask_head.3.0.bias": "roi_head.mask_head.2.convs.3.conv.bias",
        "roi_heads.stages.1.mask_predictor.conv5_mask.weight": (
            "roi_head.mask_head.1.upsample.weight"
        ),
    }
    for our_name, release_name in pairs.items():
        assert torch.equal(ours[our_name], release_state[release_name]), our_name
    counter = ours["roi_heads.stages.0.box_head.0.1.num_batches_tracked"]
    assert counter.dtype == torch.int64 and counter.item() == 7  # batch-norm counters carried
    index = ours["backbone.body.features.3.1.attn.relative_position_index"]
    assert index.shape == (2401,) and torch.equal(index, swin_relative_position_index(7).flatten())
    # Ours holds what the release leaves out: 4 box deltas and a mask channel for the background.
    background_rows = 3 * (4 * 1024 + 4 + 256 + 1)
    parameters = sum(p.numel() for p in loaded.parameters())
    assert parameters - background_rows == stated_parameter_count(KEY_LIST) == 144_977_002
    assert not loaded.training


def test_each_stage_decodes_deltas_as_the_release_box_coder(loaded):
    generator = torch.Generator().manual_seed(3)
    corners = torch.rand(50, 2, generator=generator) * 500
    rois = torch.cat([corners, corners + 10 + torch.rand(50, 2, generator=generator) * 300], 1)
    deltas = torch.randn(50, 4, generator=generator)
    # Growth past 1000 / 16 is clamped alike. (torchvision does not clamp shrinking, MMDetection
    # does at 16 / 1000: boxes shrunk 60-fold, which no trained head asks for.)
    deltas[0] = torch.tensor([0.5, -0.5, 80.0, 80.0])
    for stage, stds in zip(loaded.roi_heads.stages, RELEASE_TARGET_STDS, strict=True):
        ours = stage.box_coder.decode_single(deltas, rois)
        assert torch.allclose(ours, mmdetection_delta2bbox(rois, deltas, stds), atol=1e-3)


def mmdetection_delta2bbox(rois, deltas, stds):
    """MMDetection 2.x DeltaXYWHBBoxCoder.decode (means 0, wh_ratio_clip 16 / 1000, no clip)."""
    max_ratio = abs(math.log(16 / 1000))
    dx, dy, dw, dh = (deltas * torch.tensor(stds)).unbind(1)
    dw, dh = dw.clamp(-max_ratio, max_ratio), dh.clamp(-max_ratio, max_ratio)
    px, py = (rois[:, 0] + rois[:, 2]) * 0.5, (rois[:, 1] + rois[:, 3]) * 0.5
    pw, ph = rois[:, 2] - rois[:, 0], rois[:, 3] - rois[:, 1]
    gw, gh = pw * dw.exp(), ph * dh.exp()
    gx, gy = px + pw * dx, py + ph * dy
    return torch.stack([gx - gw * 0.5, gy - gh * 0.5, gx + gw * 0.5, gy + gh * 0.5], 1)


# ---- the Swin trunk against torchvision's Swin --------------------------------------------------
def torchvision_to_release(name: str) -> str:
    """A torchvision SwinTransformer `features.*` name as the release's backbone names it
    (written here independently of the converter's map)."""
    _, feature, rest = name.split(".", 2)
    index = int(feature)
    if index == 0:  # features.0 = Conv2d, Permute, LayerNorm
        layer, rest = rest.split(".", 1)
        return f"backbone.patch_embed.{ {'0': 'proj', '2': 'norm'}[layer] }.{rest}"
    if index % 2 == 1:  # a stage: its blocks
        block, rest = rest.split(".", 1)
        rest = rest.replace("mlp.0.", "mlp.fc1.").replace("mlp.3.", "mlp.fc2.")
        return f"backbone.layers.{(index - 1) // 2}.blocks.{block}.{rest}"
    return f"backbone.layers.{index // 2 - 1}.downsample.{rest}"  # the merge ending that stage


@pytest.fixture(scope="module")
def torchvision_swin_t():
    torch.manual_seed(4)
    model = swin_t(weights=None).eval()
    with torch.no_grad():  # norms and biases away from 1 / 0, so that a swapped one shows
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


@pytest.mark.parametrize("size", [(224, 224), (256, 320)])
def test_the_key_map_gives_torchvision_swin_features(torchvision_swin_t, size):
    generator = torch.Generator().manual_seed(5)
    release = {
        torchvision_to_release(f"features.{name}"): tensor.view(49, 49)
        if name.endswith("relative_position_index")
        else tensor
        for name, tensor in torchvision_swin_t.features.state_dict().items()
    }
    norms = [torch.randn(2, 96 * 2**stage, generator=generator) for stage in range(4)]
    for stage, (weight, bias) in enumerate(norms):
        release[f"backbone.norm{stage}.weight"] = weight
        release[f"backbone.norm{stage}.bias"] = bias
    trunk = SwinTrunk(SWIN_SIZES["swin_t"]).eval()
    reference = {f"backbone.body.{n}": tuple(t.shape) for n, t in trunk.state_dict().items()}
    converted = convert_release_state_dict(release, reference)
    trunk.load_state_dict({n.removeprefix("backbone.body."): t for n, t in converted.items()})

    image = torch.randn(1, 3, *size, generator=generator)
    with torch.no_grad():
        ours = trunk(image)
        stage_ends = torchvision_stage_outputs(torchvision_swin_t, image)
    for stage, (nhwc, (weight, bias)) in enumerate(zip(stage_ends, norms, strict=True)):
        expected = F.layer_norm(nhwc, weight.shape, weight, bias).permute(0, 3, 1, 2)
        assert ours[str(stage)].shape == expected.shape
        assert torch.allclose(ours[str(stage)], expected, atol=1e-5), f"stage {stage}"


def torchvision_stage_outputs(model, image: torch.Tensor) -> list[torch.Tensor]:
    """torchvision's intermediate features (NHWC) at the end of each stage, i.e. the outputs of
    `features[:2]`, `features[:4]`, `features[:6]` and `features[:8]`, in one pass."""
    outputs, x = [], image
    for index, module in enumerate(model.features):
        x = module(x)
        if index % 2 == 1:
            outputs.append(x)
    return outputs


def test_a_position_index_of_another_order_is_refused(release_state):
    name = "backbone.layers.1.blocks.0.attn.relative_position_index"
    transposed = dict(release_state, **{name: release_state[name].T.contiguous()})
    with pytest.raises(CheckpointError, match=rf"{name} differs from Swin's relative position"):
        convert_release_state_dict(transposed)


# ---- classes: background last, class-specific boxes and masks -----------------------------------
def hand_made_heads(release_state) -> dict[str, torch.Tensor]:
    """Stage 0's classifier, regressor and mask logits with known values: class 5 scores
    highest, the background row (80) second; class k's deltas are 4k..4k+3 (+ a little of the
    feature); class k's mask bias is k."""
    generator = torch.Generator().manual_seed(6)
    cls_bias = torch.zeros(CLASSES + 1)
    cls_bias[CLASS_5], cls_bias[CLASSES] = 8.0, 5.0
    mask_weight = torch.zeros(CLASSES, 256, 1, 1)
    mask_weight[CLASS_5] = 1.0
    return dict(
        release_state,
        **{
            f"{HEAD}.fc_cls.weight": 0.01 * torch.randn(CLASSES + 1, 1024, generator=generator),
            f"{HEAD}.fc_cls.bias": cls_bias,
            f"{HEAD}.fc_reg.weight": 0.01 * torch.randn(4 * CLASSES, 1024, generator=generator),
            f"{HEAD}.fc_reg.bias": torch.arange(4.0 * CLASSES),
            f"{MASK}.conv_logits.weight": mask_weight,
            f"{MASK}.conv_logits.bias": torch.arange(float(CLASSES)),
        },
    )


def test_background_last_scores_and_class_boxes_map_to_torchvision(release_state):
    state = hand_made_heads(release_state)
    ours = convert_release_state_dict(state)
    prefix = "roi_heads.stages.0.box_predictor."
    predictor = FastRCNNPredictor(1024, CLASSES + 1)
    predictor.load_state_dict({n.removeprefix(prefix): t for n, t in ours.items() if prefix in n})
    features = torch.randn(3, 1024, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        our_logits, our_deltas = predictor(features)
    # The release: softmax over 81 rows with the background LAST; 4 deltas for each of 80.
    their_logits = F.linear(features, state[f"{HEAD}.fc_cls.weight"], state[f"{HEAD}.fc_cls.bias"])
    their_deltas = F.linear(features, state[f"{HEAD}.fc_reg.weight"], state[f"{HEAD}.fc_reg.bias"])
    our_scores, their_scores = our_logits.softmax(1), their_logits.softmax(1)
    assert their_scores.argmax(1).tolist() == [CLASS_5] * 3
    assert our_scores.argmax(1).tolist() == [CLASS_5 + 1] * 3
    assert torch.allclose(our_scores[:, 0], their_scores[:, CLASSES], atol=1e-6)  # background
    assert torch.allclose(our_scores[:, 1:], their_scores[:, :CLASSES], atol=1e-6)
    # torchvision reads class c's deltas at rows 4c..4c+3, c counting the background.
    assert torch.allclose(our_deltas[:, 24:28], their_deltas[:, 4 * CLASS_5 : 4 * CLASS_5 + 4])
    assert ours[f"{prefix}bbox_pred.bias"][24:28].tolist() == [20.0, 21.0, 22.0, 23.0]
    assert torch.count_nonzero(our_deltas[:, :4]) == 0  # no background box
    our_per_class = our_deltas.reshape(3, CLASSES + 1, 4)[:, 1:].flatten(1)
    assert torch.allclose(our_per_class, their_deltas)


def test_a_class_mask_lands_on_its_class_channel(release_state):
    state = hand_made_heads(release_state)
    ours = convert_release_state_dict(state)
    prefix = "roi_heads.stages.0.mask_predictor."
    predictor = MaskRCNNPredictor(256, 256, CLASSES + 1)
    predictor.load_state_dict({n.removeprefix(prefix): t for n, t in ours.items() if prefix in n})
    roi_features = torch.randn(2, 256, 14, 14, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        our_logits = predictor(roi_features)
        upsampled = F.relu(
            F.conv_transpose2d(
                roi_features, state[f"{MASK}.upsample.weight"], state[f"{MASK}.upsample.bias"], 2
            )
        )
        their_logits = F.conv2d(
            upsampled, state[f"{MASK}.conv_logits.weight"], state[f"{MASK}.conv_logits.bias"]
        )
    assert our_logits.shape == (2, CLASSES + 1, 28, 28)
    assert torch.allclose(our_logits[:, CLASS_5 + 1], their_logits[:, CLASS_5], atol=1e-5)
    assert torch.allclose(our_logits[:, 1:], their_logits, atol=1e-5)
    assert torch.count_nonzero(our_logits[:, 0]) == 0  # the background channel is zero
    assert ours[f"{prefix}mask_fcn_logits.bias"][:8].tolist() == [0.0, 0.0, 1, 2, 3, 4, 5, 6]


# ---- refusals, round trips, the importer ----------------------------------------------------
def test_a_missing_unexpected_or_reshaped_entry_is_refused_by_name(release_state):
    missing = "roi_head.mask_head.2.upsample.bias"
    without = {name: t for name, t in release_state.items() if name != missing}
    with pytest.raises(CheckpointError, match=rf"missing 1: {missing}"):
        load_release_state_dict({"meta": {}, "state_dict": without}, "release.pth")
    extra = dict(release_state, **{"backbone.norm": torch.zeros(1024)})
    with pytest.raises(CheckpointError, match=r"release\.pth: .*unexpected 1: backbone\.norm\b"):
        load_release_state_dict(extra, "release.pth")
    reshaped = dict(release_state, **{f"{HEAD}.fc_cls.weight": torch.zeros(91, 1024)})
    with pytest.raises(CheckpointError, match=r"cls_score\.weight \(91, 1024\) != \(81, 1024\)"):
        convert_release_state_dict(reshaped)


def test_release_to_ours_and_back_is_the_identity(release_state):
    back = to_release_state_dict(convert_release_state_dict(release_state))
    assert set(back) == set(release_state)
    assert all(torch.equal(back[name], t) for name, t in release_state.items())


def test_ours_to_release_and_back_is_the_identity(loaded):
    ours = loaded.state_dict()
    again = convert_release_state_dict(to_release_state_dict(ours))
    assert set(again) == set(ours)
    assert all(torch.equal(again[name], t) for name, t in ours.items())
    # The background's box deltas and mask channel have no place in the release (nothing reads
    # them): a model with other values there comes back with zeros, all else as it was.
    name = "roi_heads.stages.1.box_predictor.bbox_pred.bias"
    changed = dict(ours, **{name: torch.cat([torch.ones(4), ours[name][4:]])})
    again = convert_release_state_dict(to_release_state_dict(changed))
    assert torch.equal(again[name], ours[name])


def test_the_importer_recognises_and_converts_the_release(release_state):
    found = detect_format(release_state)
    assert (found.key, found.family, found.default_name) == (
        "cascade-mask-rcnn-swin-b-coco",
        "instance",
        "cascade-swin-b",
    )
    converted = found.convert(release_state, {}, Path("release.pth"))
    assert converted.class_names == coco_80_class_names() and len(converted.class_names) == 80
    assert converted.class_names[:3] == ["person", "bicycle", "car"]
    config = InstanceConfig.from_dict(converted.architecture)
    assert config == release_architecture()
    assert (config.backbone, config.num_classes, config.stages) == ("swin_b", 80, 3)
    assert set(converted.state) == set(convert_release_state_dict(release_state))
    names = [f"class {k}" for k in range(80)]
    assert found.convert(release_state, {"CLASSES": names}, Path("x")).class_names == names
