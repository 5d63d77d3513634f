"""Image-guided mask refinement (models.common.mask_refine): the mask head also reads the RoI's
pixels, on the grid its targets are cut on, and a checkpoint without it can be fine-tuned into
one with it, starting exactly where it was."""

import pytest
import torch
from torchvision.models.detection.roi_heads import project_masks_on_boxes
from vis_fixtures import HEIGHT, WIDTH, draw_rectangles, tiny_config, two_rectangle_sample

from models.checkpoints.checkpoint import load_weights_into, save_checkpoint
from models.checkpoints.errors import CheckpointError
from models.common.detection import mask_roi_pool, parts_added
from models.common.mask_refine import (
    IMAGE_KEY,
    REFINE_PREFIX,
    RefiningMaskPredictor,
    RoIMaskInputs,
)
from models.vis import build_masktrack_rcnn

CLASS_NAMES = ["a", "b"]


def saved_model(tmp_path, config):
    torch.manual_seed(0)
    model = build_masktrack_rcnn(config)
    folder = tmp_path / "start"
    save_checkpoint(
        model,
        folder,
        family="vis",
        architecture=config.to_dict(),
        class_names=CLASS_NAMES,
        version="start",
    )
    return model, folder


def test_pixels_are_cut_on_the_grid_the_mask_targets_are_cut_on():
    # A one-channel "image" that is the mask itself: its RoI pixels must be the mask target
    # torchvision's loss cuts for the same box (a 56-pixel box: 2 samples a cell either way).
    _, masks = draw_rectangles([(20, 4, 60, 50)], [(255, 255, 255)])
    mask = torch.from_numpy(masks).float()
    box = torch.tensor([[12.0, 2.0, 68.0, 58.0]])
    pool = mask_roi_pool(tiny_config(mask_refine_channels=8))
    features = {level: torch.zeros(1, 64, HEIGHT // 4, WIDTH // 4) for level in "0123"}
    features[IMAGE_KEY] = mask[None].expand(1, 3, HEIGHT, WIDTH)
    cut = pool(features, [box], [(HEIGHT, WIDTH)])
    target = project_masks_on_boxes(mask, box, torch.tensor([0]), 28)
    assert cut.pixels.shape == (1, 3, 28, 28) and cut.features.shape == (1, 64, 14, 14)
    torch.testing.assert_close(cut.pixels[0, 0], target[0])


def test_the_refinement_reads_the_pixels_and_starts_as_a_no_op():
    torch.manual_seed(0)
    predictor = RefiningMaskPredictor(16, 16, 3, width=8)
    features = torch.randn(2, 16, 14, 14)
    pixels = torch.randn(2, 3, 28, 28)
    plain = predictor.mask_fcn_logits(torch.relu(predictor.conv5_mask(features)))
    torch.testing.assert_close(predictor(RoIMaskInputs(features, pixels)), plain)
    torch.nn.init.normal_(predictor.refine[-1].weight)
    moved = predictor(RoIMaskInputs(features, pixels))
    assert not torch.allclose(moved, plain)
    assert not torch.allclose(predictor(RoIMaskInputs(features, -pixels)), moved)


def test_the_mask_loss_trains_the_refinement():
    torch.manual_seed(0)
    model = build_masktrack_rcnn(tiny_config(mask_refine_channels=8)).train()
    key, key_target = two_rectangle_sample(shift=0)
    ref, ref_target = two_rectangle_sample(shift=3)
    losses = model.training_losses([key], [key_target], [ref], [ref_target])
    losses["loss_mask"].backward()
    assert model.roi_heads.mask_predictor.refine[-1].weight.grad.abs().sum() > 0


def test_a_checkpoint_without_refinement_fine_tunes_into_one_that_starts_the_same(tmp_path):
    before_config = tiny_config(num_classes=2, mask_refine_channels=0)
    before, folder = saved_model(tmp_path, before_config)
    after_config = tiny_config(num_classes=2, mask_refine_channels=8)
    added = parts_added(before_config.to_dict(), after_config)
    assert added == (REFINE_PREFIX,)
    after = build_masktrack_rcnn(after_config)
    load_weights_into(after, folder, "vis", new_parts=added)
    frame, _ = two_rectangle_sample()
    expected, got = (
        before.detect([frame], min_score=0.0)[0],
        after.detect([frame], min_score=0.0)[0],
    )
    assert len(expected) > 0
    torch.testing.assert_close(got.boxes, expected.boxes)
    torch.testing.assert_close(got.scores, expected.scores)
    assert torch.equal(got.masks, expected.masks)


def test_only_the_added_parts_may_be_missing(tmp_path):
    config = tiny_config(num_classes=2, mask_refine_channels=0)
    _, folder = saved_model(tmp_path, config)
    refined = build_masktrack_rcnn(tiny_config(num_classes=2, mask_refine_channels=8))
    with pytest.raises(CheckpointError, match="missing.*refine"):
        load_weights_into(refined, folder, "vis")  # not said to be new: refused
    assert parts_added(config.to_dict(), config) == ()
    # A checkpoint that has the refinement already loads it: nothing is left at its start.
    _, refined_folder = saved_model(
        tmp_path / "r", tiny_config(num_classes=2, mask_refine_channels=8)
    )
    assert parts_added({"mask_refine_channels": 8}, refined.config) == ()
    load_weights_into(refined, refined_folder, "vis")


def test_a_negative_width_is_refused():
    with pytest.raises(ValueError, match="mask_refine_channels"):
        tiny_config(mask_refine_channels=-1)
