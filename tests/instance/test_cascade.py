"""Cascade Mask R-CNN: the cascade's inference and losses on hand-set heads, and the training job
end to end (dataset -> training -> published checkpoint -> reload -> served)."""

import json
from collections import OrderedDict

import numpy as np
import pytest
import torch

from models.checkpoints.checkpoint import load_checkpoint
from models.data.synthetic.export import generate_dataset
from models.data.synthetic.world import WorldConfig
from models.instance import InstanceConfig, build_cascade_mask_rcnn
from models.instance.cascade import CascadeRoIHeads
from models.train.instance import InstanceTrainConfig, train_instance
from models.train.vis_data import read_rgb

CLASSES = 3
SIZE = (64, 64)


@pytest.fixture
def heads():
    torch.manual_seed(0)
    config = InstanceConfig.small(num_classes=CLASSES, box_score_thresh=0.0)
    return CascadeRoIHeads(config, channels=8).eval()


def features():
    return OrderedDict((str(k), torch.rand(1, 8, 16 >> k, 16 >> k)) for k in range(4))


def set_box_predictor(stage, class_bias, box_bias=None):
    """A stage that answers the same logits (and class deltas) for every RoI."""
    predictor = stage.box_predictor
    torch.nn.init.zeros_(predictor.cls_score.weight)
    torch.nn.init.zeros_(predictor.bbox_pred.weight)
    with torch.no_grad():
        predictor.cls_score.bias.copy_(torch.tensor(class_bias))
        predictor.bbox_pred.bias.copy_(
            torch.zeros(4 * (CLASSES + 1)) if box_bias is None else box_bias
        )


@torch.no_grad()
def test_scores_are_the_softmax_of_the_stages_mean_logits(heads):
    biases = [[0.0, 4.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0], [0.0, 0.0, 5.0, 0.0]]
    for stage, bias in zip(heads.stages, biases, strict=True):
        set_box_predictor(stage, bias)
    proposal = torch.tensor([[10.0, 12.0, 30.0, 40.0]])
    boxes, scores, labels = heads.detect_boxes(features(), [proposal], [SIZE])
    expected = torch.softmax(torch.tensor(biases).mean(0), 0)
    by_label = dict(zip(labels[0].tolist(), scores[0].tolist(), strict=True))
    for label in range(1, CLASSES + 1):  # one box a class; background (0) never answered
        assert by_label[label] == pytest.approx(float(expected[label]), abs=1e-6)
    torch.testing.assert_close(boxes[0], proposal.expand(CLASSES, 4))


@torch.no_grad()
def test_each_stage_regresses_by_its_top_class_and_the_last_gives_the_boxes(heads):
    # Stage 1 moves boxes of its top class (2) right by 0.1 of their width / its weight 10;
    # stage 2 answers class 1 (whose deltas it leaves at 0); stage 3 moves class 3 down.
    first = torch.zeros(4 * (CLASSES + 1))
    first[4 * 2 + 0] = 1.0  # dx of class 2 in stage 1, weight 10: 0.1 of the width
    last = torch.zeros(4 * (CLASSES + 1))
    last[4 * 3 + 1] = 3.0  # dy of class 3 in stage 3, weight ~30: ~0.1 of the height
    set_box_predictor(heads.stages[0], [0.0, 0.0, 9.0, 0.0], first)
    set_box_predictor(heads.stages[1], [0.0, 9.0, 0.0, 0.0])
    set_box_predictor(heads.stages[2], [0.0, 0.0, 0.0, 9.0], last)
    proposal = torch.tensor([[10.0, 10.0, 30.0, 50.0]])  # 20 wide, 40 high
    boxes, _, labels = heads.detect_boxes(features(), [proposal], [SIZE])
    class_3 = boxes[0][labels[0] == 3][0]
    down = 3.0 / heads.config.stage_box_weights[2][1] * 40.0
    torch.testing.assert_close(class_3, torch.tensor([12.0, 10.0 + down, 32.0, 50.0 + down]))


@torch.no_grad()
def test_masks_are_the_mean_of_the_stages_probabilities(heads):
    biases = [2.0, -1.0, 0.5]
    for stage, bias in zip(heads.stages, biases, strict=True):
        logits = stage.mask_predictor.mask_fcn_logits
        torch.nn.init.zeros_(logits.weight)
        torch.nn.init.constant_(logits.bias, bias)
    boxes = [torch.tensor([[4.0, 4.0, 40.0, 40.0]])]
    probs = heads.mask_probs(features(), boxes, [torch.tensor([2])], [SIZE])
    expected = torch.sigmoid(torch.tensor(biases)).mean()
    assert probs[0].shape == (1, 1, 28, 28)
    torch.testing.assert_close(probs[0], torch.full_like(probs[0], float(expected)))


def test_giou_loss_is_zero_on_the_ground_truth_and_grows_with_the_error(heads):
    stage = heads.stages[0]
    gt = torch.tensor([[10.0, 10.0, 30.0, 50.0]])
    targets = [{"boxes": gt}]
    deltas = torch.zeros(1, 4 * (CLASSES + 1))
    exact = heads._giou_loss(stage, deltas, [gt], [torch.tensor([1])], [torch.tensor([0])], targets)
    assert float(exact) == pytest.approx(0.0, abs=1e-6)
    deltas[0, 4] = 5.0  # class 1's dx: half a width to the right (weight 10)
    moved = heads._giou_loss(stage, deltas, [gt], [torch.tensor([1])], [torch.tensor([0])], targets)
    # IoU of two 20x40 boxes 10 apart: 400 / 1200; their hull is the union: GIoU loss 2/3, x10.
    assert float(moved) == pytest.approx(10.0 * 2.0 / 3.0, rel=1e-5)
    # A background RoI has no box loss.
    none = heads._giou_loss(stage, deltas, [gt], [torch.tensor([0])], [torch.tensor([0])], targets)
    assert float(none) == 0.0


def test_training_losses_fall_on_one_image():
    torch.manual_seed(0)
    model = build_cascade_mask_rcnn(
        InstanceConfig.small(num_classes=CLASSES, image_long_edge=128, image_short_edge=96)
    ).train()
    image = torch.rand(3, 96, 128) * 0.2
    masks = torch.zeros(2, 96, 128, dtype=torch.uint8)
    masks[0, 10:40, 10:50] = 1
    masks[1, 50:90, 70:120] = 1
    image[:, masks[0].bool()] = torch.tensor([0.9, 0.1, 0.1])[:, None]
    image[:, masks[1].bool()] = torch.tensor([0.1, 0.9, 0.1])[:, None]
    target = {
        "boxes": torch.tensor([[10.0, 10.0, 50.0, 40.0], [70.0, 50.0, 120.0, 90.0]]),
        "labels": torch.tensor([1, 2]),
        "masks": masks,
        "instance_ids": torch.tensor([1, 2]),
    }
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    totals = []
    for _ in range(12):
        losses = model.training_losses([image, image], [target, target])
        assert set(losses) == {
            "loss_objectness",
            "loss_rpn_box_reg",
            "loss_classifier",
            "loss_box_reg",
            "loss_mask",
        }
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    assert np.mean(totals[-3:]) < 0.7 * np.mean(totals[:3]), totals


WORLD = WorldConfig(width=128, height=96, frames=4, fps=4, max_objects=2)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("instance-data") / "data"
    meta = generate_dataset(root, WORLD, 3, seed=6, split="train")
    return root, meta


def train_config(root, tmp_path, **overrides):
    values = dict(
        data=root,
        store=tmp_path / "store",
        iters=3,
        batch_size=2,
        val_videos=1,
        work_dir=tmp_path / "work",
        show_progress=False,
    )
    return InstanceTrainConfig(**{**values, **overrides})


def test_train_publish_reload_resume(dataset, tmp_path):
    root, meta = dataset
    folder = train_instance(train_config(root, tmp_path))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (
        manifest["family"] == "instance" and manifest["dataset_fingerprint"] == meta["fingerprint"]
    )
    assert folder.parent.name == "cascade-swin"
    assert manifest["architecture"]["backbone"] == "swin_small"
    assert set(manifest["metrics"]) >= {"AP", "AP50", "AP75"}
    assert manifest["training"]["iters"] == 3 and manifest["training"]["train_videos"] == 2

    frame = read_rgb(root / "ytvis" / "JPEGImages" / "vid0000" / "00000.jpg")
    first, second = (
        load_checkpoint(folder).model.detect([frame], min_score=0.0)[0] for _ in range(2)
    )
    np.testing.assert_array_equal(first.scores.numpy(), second.scores.numpy())
    assert first.masks.shape[1:] == frame.shape[:2]

    resumed = train_instance(
        train_config(root, tmp_path, iters=5, resume=True, store=tmp_path / "store2")
    )
    training = json.loads((resumed / "manifest.json").read_text())["training"]
    assert training["resumed_from_step"] == 3 and training["iters"] == 5
