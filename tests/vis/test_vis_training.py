"""training_losses(): the loss dict, the track loss targets, and that a few steps learn."""

import numpy as np
import pytest
import torch
from vis_fixtures import tiny_config, two_rectangle_sample

from models.vis import build_masktrack_rcnn
from models.vis.track_head import match_targets

LOSS_NAMES = {
    "loss_objectness",
    "loss_rpn_box_reg",
    "loss_classifier",
    "loss_box_reg",
    "loss_mask",
    "loss_track",
}


def clip_batch():
    """Two clips: key frames and reference frames where the objects moved."""
    key_0, key_target_0 = two_rectangle_sample(shift=0)
    ref_0, ref_target_0 = two_rectangle_sample(shift=3)
    key_1, key_target_1 = two_rectangle_sample(shift=2)
    ref_1, ref_target_1 = two_rectangle_sample(shift=0)
    # In the second clip the green bar is absent from the reference frame: "new object".
    ref_target_1 = {name: value[:1] for name, value in ref_target_1.items()}
    key_targets = [key_target_0, key_target_1]
    return [key_0, key_1], key_targets, [ref_0, ref_1], [ref_target_0, ref_target_1]


def test_match_targets_point_at_the_reference_instance_or_new():
    key_ids = torch.tensor([9, 7, 7, 4])
    ref_ids = torch.tensor([7, 9])
    assert match_targets(key_ids, ref_ids).tolist() == [2, 1, 1, 0]
    assert match_targets(key_ids, torch.zeros(0, dtype=torch.int64)).tolist() == [0, 0, 0, 0]


def test_training_losses_are_finite_and_complete():
    torch.manual_seed(0)
    model = build_masktrack_rcnn(tiny_config()).train()
    losses = model.training_losses(*clip_batch())
    assert set(losses) == LOSS_NAMES
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), name
    assert losses["loss_track"] > 0
    sum(losses.values()).backward()
    assert model.track_head.fcs[0].weight.grad.abs().sum() > 0
    assert model.backbone.body.stem[0][0].weight.grad.abs().sum() > 0


def test_a_few_optimisation_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = build_masktrack_rcnn(tiny_config()).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = clip_batch()
    totals = []
    for _ in range(5):
        total = sum(model.training_losses(*batch).values())
        optimiser.zero_grad()
        total.backward()
        # As the reference trains (clip_grad max_norm=35): raw dot-product logits start large.
        torch.nn.utils.clip_grad_norm_(model.parameters(), 35.0)
        optimiser.step()
        totals.append(total.item())
    assert totals[-1] < 0.8 * totals[0], totals


def test_frames_without_objects_train_too():
    torch.manual_seed(0)
    model = build_masktrack_rcnn(tiny_config()).train()
    key, key_target = two_rectangle_sample()
    empty_frame = np.full_like(key, 20)
    empty = {"boxes": [], "labels": [], "masks": [], "instance_ids": []}
    losses = model.training_losses(
        [key, empty_frame], [key_target, empty], [empty_frame] * 2, [empty] * 2
    )
    assert all(torch.isfinite(value) for value in losses.values())
    assert losses["loss_track"] == 0  # every positive RoI is "new": nothing to match against


def test_training_needs_train_mode_and_valid_targets():
    model = build_masktrack_rcnn(tiny_config())
    keys, key_targets, refs, ref_targets = clip_batch()
    with pytest.raises(RuntimeError, match="train mode"):
        model.training_losses(keys, key_targets, refs, ref_targets)
    model.train()
    bad_label = dict(key_targets[0], labels=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="target 0: labels must be in 1..2"):
        model.training_losses([keys[0]], [bad_label], [refs[0]], [ref_targets[0]])
    flat_box = dict(key_targets[0], boxes=torch.tensor([[5.0, 5.0, 5.0, 9.0], [1, 1, 9, 9]]))
    with pytest.raises(ValueError, match="x2 > x1"):
        model.training_losses([keys[0]], [flat_box], [refs[0]], [ref_targets[0]])
    small_masks = dict(key_targets[0], masks=key_targets[0]["masks"][:, :10])
    with pytest.raises(ValueError, match="masks must be"):
        model.training_losses([keys[0]], [small_masks], [refs[0]], [ref_targets[0]])
    no_ids = {name: value for name, value in key_targets[0].items() if name != "instance_ids"}
    with pytest.raises(ValueError, match="missing instance_ids"):
        model.training_losses([keys[0]], [no_ids], [refs[0]], [ref_targets[0]])


def upsample_twice(masks):
    return masks.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)


def test_images_are_resized_like_at_test_time_with_their_targets():
    torch.manual_seed(0)
    model = build_masktrack_rcnn(tiny_config()).train()
    keys, key_targets, refs, ref_targets = clip_batch()
    # The same clip at twice the size: resized to 96x64 with boxes and masks halved.
    big = [torch.from_numpy(k).permute(2, 0, 1).float().div(255) for k in keys]
    big = [torch.nn.functional.interpolate(b[None], scale_factor=2.0)[0] for b in big]
    big_targets = [
        dict(t, boxes=t["boxes"] * 2, masks=upsample_twice(t["masks"])) for t in key_targets
    ]
    losses = model.training_losses(big, big_targets, refs, ref_targets)
    assert all(torch.isfinite(v) for v in losses.values())


def test_frozen_backbone_batchnorm_keeps_its_statistics():
    torch.manual_seed(0)
    model = build_masktrack_rcnn(tiny_config(freeze_backbone_bn=True)).train()
    batchnorm = model.backbone.body.stem[0][1]
    before = batchnorm.running_mean.clone()
    model.training_losses(*clip_batch())
    assert not batchnorm.training and not batchnorm.weight.requires_grad
    assert torch.equal(batchnorm.running_mean, before)
    assert model.backbone.fpn.training  # only the trunk's batch norms are frozen
