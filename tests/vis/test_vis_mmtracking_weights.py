"""MMTracking's MaskTrack R-CNN checkpoint (YouTube-VIS 2019) converts into our model key for key:
detector and track head, with MMDetection's background-last classes moved to torchvision's
layout."""

import pytest
import torch
from mmtracking_fixtures import (
    KEY_LIST,
    SHARED_KEY_LIST,
    mmtracking_like_state,
    parse_key_list,
    stated_parameter_count,
)
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

from models.checkpoints import CheckpointError
from models.common.roi_align import AlignedMultiScaleRoIAlign, multiscale_roi_align
from models.vis import VisConfig, build_masktrack_rcnn
from models.vis.mmtracking_weights import (
    YOUTUBE_VIS_2019_CLASSES,
    convert_mmtracking_masktrack,
    expected_mmtracking_keys,
)

CLASSIFIER = "detector.roi_head.bbox_head.fc_cls"
REGRESSOR = "detector.roi_head.bbox_head.fc_reg"
MASK_LOGITS = "detector.roi_head.mask_head.conv_logits"
SEDAN = YOUTUBE_VIS_2019_CLASSES.index("sedan")  # 5 in MMDetection's 0-based foreground labels


@pytest.fixture(scope="module")
def state():
    return mmtracking_like_state()


@pytest.fixture(scope="module")
def converted(state):
    return convert_mmtracking_masktrack(state)


def test_the_committed_key_list_is_the_shared_one():
    if not SHARED_KEY_LIST.exists():
        pytest.skip(f"{SHARED_KEY_LIST} is absent (the shared folder is not in the repository)")
    assert KEY_LIST.read_text() == SHARED_KEY_LIST.read_text()


def test_the_key_list_is_every_name_the_converter_expects(state):
    assert len(state) == 364
    assert set(state) == expected_mmtracking_keys()


def test_the_whole_video_model_loads_key_for_key(state, converted):
    ours, architecture, classes = converted
    assert classes == list(YOUTUBE_VIS_2019_CLASSES) and len(classes) == 40
    config = VisConfig.from_dict(architecture)
    assert (config.backbone, config.num_classes, config.box_head_convs) == ("resnet50_fpn", 40, 0)
    assert (config.track_embed_dim, config.track_cosine_scale) == (1024, 0.0)
    with torch.device("meta"):
        model = build_masktrack_rcnn(config)
    model.load_state_dict(ours, strict=True, assign=True)  # every name, every shape
    pools = (model.roi_heads.box_roi_pool, model.roi_heads.mask_roi_pool, model.track_head.roi_pool)
    assert all(isinstance(pool, AlignedMultiScaleRoIAlign) for pool in pools)
    assert [pool.sampling_ratio for pool in pools] == [0, 0, 0]  # MMDetection's RoIAlign
    loaded = model.state_dict()
    assert torch.equal(
        loaded["backbone.body.layer3.5.conv2.weight"],
        state["detector.backbone.layer3.5.conv2.weight"],
    )
    assert torch.equal(
        loaded["backbone.fpn.inner_blocks.2.0.weight"],
        state["detector.neck.lateral_convs.2.conv.weight"],
    )
    assert torch.equal(
        loaded["backbone.fpn.layer_blocks.3.0.bias"], state["detector.neck.fpn_convs.3.conv.bias"]
    )
    assert torch.equal(
        loaded["rpn.head.cls_logits.weight"], state["detector.rpn_head.rpn_cls.weight"]
    )
    assert torch.equal(
        loaded["roi_heads.box_head.fc7.weight"],
        state["detector.roi_head.bbox_head.shared_fcs.1.weight"],
    )
    assert torch.equal(
        loaded["roi_heads.mask_predictor.conv5_mask.weight"],
        state["detector.roi_head.mask_head.upsample.weight"],
    )
    assert torch.equal(
        loaded["track_head.fcs.0.weight"], state["track_head.embed_head.fcs.0.weight"]
    )
    assert torch.equal(loaded["track_head.fcs.1.bias"], state["track_head.embed_head.fcs.1.bias"])
    # Ours has what the reference leaves out: 4 box deltas and a mask channel for the background.
    background_rows = 4 * 1024 + 4 + 256 + 1
    parameters = sum(p.numel() for p in model.parameters())
    assert parameters - background_rows == stated_parameter_count() == 58_076_736  # fmt: skip


def test_a_background_last_classifier_scores_the_same_classes(state, converted):
    ours = converted[0]
    predictor = FastRCNNPredictor(1024, 41)
    predictor.load_state_dict(
        {name.split("box_predictor.")[1]: t for name, t in ours.items() if "box_predictor." in name}
    )
    features = torch.randn(3, 1024, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        our_logits, our_deltas = predictor(features)
    # MMDetection 2.x: softmax over 41 rows, background the LAST; class-specific deltas 4 x 40.
    theirs = features @ state[f"{CLASSIFIER}.weight"].T + state[f"{CLASSIFIER}.bias"]
    their_deltas = features @ state[f"{REGRESSOR}.weight"].T + state[f"{REGRESSOR}.bias"]
    our_scores, their_scores = our_logits.softmax(1), theirs.softmax(1)
    assert torch.allclose(our_scores[:, 0], their_scores[:, 40], atol=1e-6)  # background
    assert torch.allclose(our_scores[:, 1 + SEDAN], their_scores[:, SEDAN], atol=1e-6)
    assert torch.allclose(our_scores[:, 1:], their_scores[:, :40], atol=1e-6)
    # torchvision reads class c's box deltas at rows 4c..4c+3 (c counting the background).
    our_per_class = our_deltas.reshape(3, 41, 4)
    assert torch.allclose(our_per_class[:, 1 + SEDAN], their_deltas[:, 4 * SEDAN : 4 * SEDAN + 4])
    assert torch.count_nonzero(our_per_class[:, 0]) == 0


def test_a_class_mask_lands_on_its_class_channel(state, converted):
    ours = converted[0]
    logits = ours["roi_heads.mask_predictor.mask_fcn_logits.weight"]
    assert logits.shape == (41, 256, 1, 1)
    assert torch.equal(logits[1 + SEDAN], state[f"{MASK_LOGITS}.weight"][SEDAN])
    assert torch.count_nonzero(logits[0]) == 0


def test_a_hand_made_background_last_row_lands_at_index_0():
    state = {
        name: torch.zeros(shape, dtype=dtype) for name, (shape, dtype) in parse_key_list().items()
    }
    state[f"{CLASSIFIER}.bias"] = torch.arange(41.0)  # class c has bias c, background 40
    state[f"{REGRESSOR}.bias"] = torch.arange(160.0)  # class c's deltas 4c..4c+3
    ours, _, _ = convert_mmtracking_masktrack(state)
    assert ours["roi_heads.box_predictor.cls_score.bias"].tolist() == [40.0, *range(40)]
    deltas = ours["roi_heads.box_predictor.bbox_pred.bias"].reshape(41, 4)
    assert deltas[0].tolist() == [0.0] * 4
    assert deltas[1 + SEDAN].tolist() == [20.0, 21.0, 22.0, 23.0]


def test_missing_or_reshaped_entries_are_named(state):
    missing = {name: t for name, t in state.items() if name != "track_head.embed_head.fcs.1.bias"}
    with pytest.raises(CheckpointError, match=r"missing 1: track_head\.embed_head\.fcs\.1\.bias"):
        convert_mmtracking_masktrack(missing)
    reshaped = dict(state, **{"detector.neck.fpn_convs.0.conv.bias": torch.zeros(128)})
    with pytest.raises(CheckpointError, match=r"backbone\.fpn\.layer_blocks\.0\.0\.bias \(128,\)"):
        convert_mmtracking_masktrack(reshaped)
    with pytest.raises(CheckpointError, match="give their 2 names"):
        small = dict(state, **{f"{CLASSIFIER}.weight": torch.zeros(3, 1024)})
        convert_mmtracking_masktrack(small)


def test_the_reference_roi_align_is_aligned_on_the_level_of_each_box():
    from torchvision.ops import roi_align

    generator = torch.Generator().manual_seed(2)
    strides = (4, 8, 16, 32)
    features = {
        str(level): torch.randn(1, 2, 512 // stride, 512 // stride, generator=generator)
        for level, stride in enumerate(strides)
    }
    # sqrt(area) in [56 * 2^k, 56 * 2^(k+1)) goes to level k (MMDetection's finest_scale 56).
    boxes = torch.tensor(
        [[10.3, 12.7, 40.1, 50.9], [100.0, 90.5, 250.2, 240.0], [20.0, 30.0, 300.0, 330.0],
         [5.0, 6.0, 505.0, 500.0]]
    )  # fmt: skip
    pooled = multiscale_roi_align(7, sampling_ratio=0, aligned=True)(
        features, [boxes], [(512, 512)]
    )
    for level, (box, stride) in enumerate(zip(boxes, strides, strict=True)):
        expected = roi_align(
            features[str(level)], [box[None]], 7, 1 / stride, sampling_ratio=0, aligned=True
        )
        assert torch.allclose(pooled[level], expected[0], atol=1e-6), f"level {level}"
    unaligned = multiscale_roi_align(7, sampling_ratio=0)(features, [boxes], [(512, 512)])
    assert not torch.allclose(pooled, unaligned, atol=1e-3)
