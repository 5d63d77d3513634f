"""The ResNet-50-FPN detector is torchvision's maskrcnn_resnet50_fpn, name for name, so that
torchvision's COCO weights load into it and give torchvision's outputs."""

import pytest
import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn

from models.checkpoints import CheckpointError, load_checkpoint
from models.common.detections import paste_masks, unaligned_grid_boxes
from models.vis import VisConfig, build_masktrack_rcnn
from models.vis.torchvision_weights import (
    TRACK_HEAD_PREFIX,
    convert_torchvision_maskrcnn,
    load_torchvision_maskrcnn_state,
)

# A 128x96 input fits the 128x96 test size as it is, so neither model resizes it.
IMAGE_SIZE = (96, 128)
SETTINGS = dict(
    rpn_pre_nms_top_n_test=200,
    rpn_post_nms_top_n_test=200,
    box_score_thresh=0.01,
    box_nms_thresh=0.5,
    box_detections_per_img=100,
)


@pytest.fixture(scope="module")
def torchvision_model():
    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=91,
        min_size=IMAGE_SIZE[0],
        max_size=IMAGE_SIZE[1],
        **SETTINGS,
    )
    return model.eval()


@pytest.fixture(scope="module")
def coco_config():
    return VisConfig(
        num_classes=90, image_long_edge=IMAGE_SIZE[1], image_short_edge=IMAGE_SIZE[0], **SETTINGS
    )


@pytest.fixture(scope="module")
def our_model(coco_config):
    return build_masktrack_rcnn(coco_config)


def shapes(state):
    return {name: tuple(tensor.shape) for name, tensor in state.items()}


def test_detector_names_and_shapes_equal_torchvision(torchvision_model, our_model):
    ours = {
        name: shape
        for name, shape in shapes(our_model.state_dict()).items()
        if not name.startswith(TRACK_HEAD_PREFIX)
    }
    assert ours == shapes(torchvision_model.state_dict())
    track = shapes(our_model.track_head.state_dict())
    assert track == {
        "fcs.0.weight": (1024, 256 * 7 * 7),
        "fcs.0.bias": (1024,),
        "fcs.1.weight": (1024, 1024),
        "fcs.1.bias": (1024,),
    }


def test_torchvision_weights_give_torchvision_outputs(torchvision_model, our_model):
    load_torchvision_maskrcnn_state(our_model, torchvision_model.state_dict())
    image = torch.rand(3, *IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = torchvision_model([image])[0]
        roi_masks = torchvision_roi_masks(torchvision_model, image)
    ours = our_model.detect([image], mask_probs=True)[0]
    assert len(ours) > 0
    assert torch.equal(ours.labels, expected["labels"])
    assert torch.allclose(ours.scores, expected["scores"], atol=1e-5)
    assert torch.allclose(ours.boxes, expected["boxes"], atol=1e-3)
    # The networks' mask probabilities agree; the paste onto the image is ours (exact at the
    # float box, where torchvision's truncates the box to whole pixels): models.common.detections.
    grid_boxes = unaligned_grid_boxes(expected["boxes"], IMAGE_SIZE, IMAGE_SIZE)
    pasted, probs = paste_masks(roi_masks, grid_boxes, IMAGE_SIZE, 0.5, with_probs=True)
    assert torch.allclose(ours.mask_probs, probs, atol=1e-4)
    assert torch.equal(ours.masks, pasted)
    # and torchvision's own paste differs from it by at most about a pixel's shift
    assert (ours.masks != (expected["masks"][:, 0] >= 0.5)).float().mean() < 0.05


def torchvision_roi_masks(model, image):
    """torchvision's RoI mask probabilities (N, 1, 28, 28), before its paste onto the image."""
    images, _ = model.transform([image])
    features = model.backbone(images.tensors)
    proposals, _ = model.rpn(images, features)
    detections, _ = model.roi_heads(features, proposals, images.image_sizes)
    return detections[0]["masks"]


def test_legacy_names_and_frozen_batchnorm_files_load(torchvision_model, coco_config):
    # torchvision's COCO file predates two renames and has no num_batches_tracked buffers.
    legacy = {}
    for name, tensor in torchvision_model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        name = name.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
        for index in range(4):
            name = name.replace(f"mask_head.{index}.0.", f"mask_head.mask_fcn{index + 1}.")
        legacy[name] = tensor
    model = build_masktrack_rcnn(coco_config)
    load_torchvision_maskrcnn_state(model, legacy)
    expected = torchvision_model.state_dict()
    assert torch.equal(model.rpn.head.conv[0][0].weight, expected["rpn.head.conv.0.0.weight"])
    mask_bias = expected["roi_heads.mask_head.3.0.bias"]
    assert torch.equal(model.roi_heads.mask_head[3][0].bias, mask_bias)


def test_loading_is_strict_for_detector_keys(torchvision_model, coco_config):
    model = build_masktrack_rcnn(coco_config)
    state = dict(torchvision_model.state_dict())
    del state["roi_heads.box_head.fc6.weight"]
    with pytest.raises(CheckpointError, match="missing 1: roi_heads.box_head.fc6.weight"):
        load_torchvision_maskrcnn_state(model, state)
    state = dict(torchvision_model.state_dict(), extra_thing=torch.zeros(1))
    with pytest.raises(CheckpointError, match="unexpected 1: extra_thing"):
        load_torchvision_maskrcnn_state(model, state)
    forty_classes = build_masktrack_rcnn(VisConfig(num_classes=40))
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_torchvision_maskrcnn_state(forty_classes, torchvision_model.state_dict())


def test_pth_file_converts_to_a_checkpoint(torchvision_model, coco_config, tmp_path):
    pth = tmp_path / "maskrcnn_coco.pth"
    torch.save(torchvision_model.state_dict(), pth)
    manifest = convert_torchvision_maskrcnn(
        pth,
        tmp_path / "converted",
        version="coco-1",
        image_long_edge=IMAGE_SIZE[1],
        image_short_edge=IMAGE_SIZE[0],
    )
    assert manifest.family == "vis" and len(manifest.class_names) == 90
    assert manifest.class_names[0] == "person"
    loaded = load_checkpoint(tmp_path / "converted")
    assert loaded.model.config.backbone_bn_eps == 0.0
    weight = "roi_heads.box_predictor.cls_score.weight"
    assert torch.equal(loaded.model.state_dict()[weight], torchvision_model.state_dict()[weight])
