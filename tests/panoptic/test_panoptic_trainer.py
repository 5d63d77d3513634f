"""`vidserve train panoptic` (models.train.panoptic): targets in the model's classes (things
first, then stuff), flips that move image and masks together, the loss falling on one repeated
image, and the job end to end on a tiny synthetic dataset: trained, PQ-validated, published,
reloaded through the registry, resumed."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from models.checkpoints.checkpoint import load_checkpoint
from models.data.synthetic.export import generate_dataset
from models.data.synthetic.world import WorldConfig
from models.eval.panoptic import evaluate_panoptic
from models.panoptic import PanopticConfig, build_maskformer
from models.panoptic.config import SYNTHETIC_STUFF, SYNTHETIC_THINGS
from models.panoptic.inference import PanopticPrediction, PanopticSegment, segment_frames
from models.panoptic.loss import PanopticTarget
from models.train.distributed import Drawn
from models.train.panoptic import (
    PanopticData,
    PanopticFrames,
    PanopticLosses,
    PanopticTrainConfig,
    as_segments,
    evaluate_panoptic_model,
    fit_target,
    ground_truth,
    train_panoptic,
)

WORLD = WorldConfig(width=96, height=64, frames=3, fps=3, max_objects=2)
# A tiny model of the small configuration's architecture, at the tiny world's frame size.
TINY = dict(
    image_long_edge=96,
    image_short_edge=64,
    hidden_dim=32,
    num_heads=2,
    ffn_dim=64,
    group_norm_groups=8,
    encoder_layers=1,
    decoder_layers=2,
    num_queries=10,
    dropout=0.0,  # as the trainer's default
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("panoptic-data") / "data"
    meta = generate_dataset(root, WORLD, 3, seed=5, split="train")
    return root, meta


def test_classes_are_things_then_stuff_and_each_pixel_is_in_its_segment_mask(dataset):
    root, meta = dataset
    data = PanopticData.load(root, "train")
    assert (data.num_things, data.num_stuff) == (SYNTHETIC_THINGS, SYNTHETIC_STUFF)
    things = [meta["thing_categories"][k] for k in sorted(meta["thing_categories"], key=int)]
    stuff = [meta["stuff_categories"][k] for k in sorted(meta["stuff_categories"], key=int)]
    assert data.class_names == things + stuff
    assert data.videos() == ["vid0000", "vid0001", "vid0002"]

    frame, ids = data.read(0)
    target = data.target(0, ids)
    segments = data.dataset.images[0].segments
    assert target.masks.dtype == torch.bool and target.masks.shape[1:] == frame.shape[:2]
    for label, mask, segment in zip(target.labels, target.masks, segments, strict=True):
        assert np.array_equal(mask.numpy(), ids == segment.id)
        category = data.category_ids[int(label)]
        assert category == segment.category_id
        assert data.dataset.categories[category].isthing == (int(label) < data.num_things)
    # Every labelled pixel lies in exactly one mask; void pixels in none.
    assert np.array_equal(target.masks.sum(0).numpy(), (ids != 0).astype(np.int64))


def test_a_flip_mirrors_the_image_and_its_masks_together(dataset):
    data = PanopticData.load(dataset[0], "train")
    frames = PanopticFrames(data)
    frames.rng = np.random.default_rng(0)
    draws = [frames[0] for _ in range(8)]
    plain, ids = data.read(0)
    flipped = [s for s in draws if not np.array_equal(s.image, plain)]
    assert 0 < len(flipped) < len(draws)
    mirrored = data.target(0, ids[:, ::-1].copy())
    assert np.array_equal(flipped[0].image, plain[:, ::-1])
    assert torch.equal(flipped[0].target.masks, mirrored.masks)


def test_targets_are_resized_to_the_input_and_padded_with_nothing():
    masks = torch.zeros(1, 4, 6, dtype=torch.bool)
    masks[0, :2, :3] = True  # the top-left quarter
    fitted = fit_target(PanopticTarget(torch.tensor([2]), masks), (8, 12), (10, 16))
    assert fitted.masks.shape == (1, 10, 16)
    assert int(fitted.masks.sum()) == 4 * 6 and bool(fitted.masks[0, :4, :6].all())


def test_ground_truth_scored_against_itself_is_perfect(dataset):
    data = PanopticData.load(dataset[0], "train")
    _, ids = data.read(0)
    gt = ground_truth(data, 0, ids)
    prediction = PanopticPrediction(
        torch.from_numpy(ids.astype(np.int32)),
        [PanopticSegment(i, c, c < data.num_things, 1.0, 0) for i, c in gt.category.items()],
    )
    categories = {k: k < data.num_things for k in range(len(data.category_ids))}
    metrics = evaluate_panoptic([("0", gt, as_segments(prediction))], categories).metrics
    assert metrics["PQ"] == pytest.approx(1.0)


def test_loss_falls_on_one_repeated_image(dataset):
    torch.manual_seed(0)
    data = PanopticData.load(dataset[0], "train")
    sample = PanopticFrames(data, flip=False)[0]
    model = build_maskformer(PanopticConfig.small(**TINY)).train()
    losses = PanopticLosses(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    totals = []
    for _ in range(30):
        total = sum(losses(Drawn([0, 1], [sample, sample])).values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(float(total.detach()))
    assert np.mean(totals[-3:]) < 0.75 * np.mean(totals[:3]), totals


def test_calibration_scores_each_threshold_as_inference_with_it_and_keeps_the_best(dataset):
    torch.manual_seed(0)
    data = PanopticData.load(dataset[0], "train")
    sample = PanopticFrames(data, flip=False)[0]
    model = build_maskformer(PanopticConfig.small(**TINY)).train()
    losses = PanopticLosses(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(30):  # fit one image, so that thresholds make a difference
        total = sum(losses(Drawn([0], [sample])).values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    model.eval()
    videos = data.videos()[:1]
    thresholds = (0.95, 0.6, 0.3, 0.0)
    alone = {}
    for t in thresholds:
        model.config = replace(model.config, object_mask_threshold=t)
        alone[t] = evaluate_panoptic_model(model, data, videos)
    assert len({m["pq"] for m in alone.values()}) > 1, alone  # the sweep has something to pick

    calibrated = evaluate_panoptic_model(model, data, videos, thresholds=thresholds)
    for t in thresholds:
        assert calibrated[f"pq_at_{t:g}"] == alone[t]["pq"]
        assert calibrated[f"pq_things_at_{t:g}"] == alone[t]["pq_things"]
    best = max(thresholds, key=lambda t: (alone[t]["pq"], t))
    assert calibrated["object_mask_threshold"] == best
    assert model.config.object_mask_threshold == best
    assert (
        calibrated["pq"] == alone[best]["pq"]
        and calibrated["rq_things"] == alone[best]["rq_things"]
    )


def train_config(root, tmp_path, **overrides):
    values = dict(
        data=root,
        store=tmp_path / "store",
        iters=3,
        batch_size=2,
        val_videos=1,
        work_dir=tmp_path / "work",
        show_progress=False,
        loader_workers=0,
        model_overrides=TINY,
    )
    return PanopticTrainConfig(**{**values, **overrides})


def test_train_publish_reload_resume(dataset, tmp_path):
    root, meta = dataset
    folder = train_panoptic(train_config(root, tmp_path))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["family"] == "panoptic" and folder.parent.name == "maskformer"
    assert manifest["dataset_fingerprint"] == meta["fingerprint"]
    assert manifest["architecture"]["num_things"] == SYNTHETIC_THINGS
    assert len(manifest["class_names"]) == SYNTHETIC_THINGS + SYNTHETIC_STUFF
    assert {"pq", "pq_things", "pq_stuff", "sq", "rq"} <= set(manifest["metrics"])
    assert all(0.0 <= v <= 1.0 for v in manifest["metrics"].values())
    # The validation picked the object-mask threshold the checkpoint is published with.
    chosen = manifest["metrics"]["object_mask_threshold"]
    assert chosen in PanopticTrainConfig.object_mask_thresholds
    assert manifest["architecture"]["object_mask_threshold"] == chosen
    training = manifest["training"]
    assert training["iters"] == 3 and training["train_videos"] == 2
    assert training["validation_videos"] == 1

    loaded = load_checkpoint(folder)  # built by the registered family, probed
    frame, _ = PanopticData.load(root, "train").read(0)
    first, second = (segment_frames(loaded.model, [frame])[0] for _ in range(2))
    assert torch.equal(first.ids, second.ids) and first.ids.shape == frame.shape[:2]

    resumed = train_panoptic(
        train_config(root, tmp_path, iters=5, resume=True, store=tmp_path / "store2")
    )
    training = json.loads((resumed / "manifest.json").read_text())["training"]
    assert training["resumed_from_step"] == 3 and training["iters"] == 5
    losses = (tmp_path / "work" / "losses.tsv").read_text().splitlines()
    assert [int(line.split("\t")[0]) for line in losses] == [0, 1, 2, 3, 4]

    # Fine-tuning: --init's architecture and weights, the decoder now reading the stride-4 map.
    tuned = train_panoptic(
        train_config(
            root,
            tmp_path,
            iters=1,
            init=folder,
            lr=1e-12,
            model_overrides={"decoder_memory": "pixel_embedding"},
            store=tmp_path / "store3",
            work_dir=tmp_path / "work3",
        )
    )
    manifest = json.loads((tuned / "manifest.json").read_text())
    assert manifest["training"]["init"] == str(folder)
    assert manifest["architecture"] == {
        **json.loads((folder / "manifest.json").read_text())["architecture"],
        "decoder_memory": "pixel_embedding",
        "object_mask_threshold": manifest["metrics"]["object_mask_threshold"],
    }
    before, after = (load_checkpoint(f).model.state_dict() for f in (folder, tuned))
    assert before.keys() == after.keys()
    assert all(
        torch.allclose(before[k], after[k], atol=1e-6)
        for k in before
        if "running" not in k and "num_batches" not in k
    )


def test_the_trunk_starts_from_a_detection_checkpoints_backbone_body_key_for_key():
    from safetensors.torch import load_file

    from models.checkpoints.errors import CheckpointError
    from models.checkpoints.store import CheckpointStore
    from models.train.panoptic import start_trunk
    from service.settings import SHIPPED_CHECKPOINTS

    store = CheckpointStore(SHIPPED_CHECKPOINTS)
    masktrack = store.latest("vis", "masktrack")
    model = build_maskformer(PanopticConfig.small())
    assert start_trunk(model, masktrack) == {"trunk_init": f"vis/masktrack/{masktrack.name}"}
    weights = load_file(next(masktrack.glob("*.safetensors")))
    trunk = model.backbone.state_dict()
    assert len(trunk) == sum(name.startswith("backbone.body.") for name in weights)
    assert all(
        torch.equal(value, weights["backbone.body." + name]) for name, value in trunk.items()
    )
    assert start_trunk(model, None) == {}

    # Swin's backbone is no ResNet trunk: refused with what does not fit, nothing half-loaded.
    swin = store.latest("instance", "cascade-swin")
    with pytest.raises(CheckpointError, match="backbone.body"):
        start_trunk(model, swin)
    assert all(
        torch.equal(value, trunk[name]) for name, value in model.backbone.state_dict().items()
    )
