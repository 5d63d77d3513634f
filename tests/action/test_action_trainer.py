"""`vidserve train action` (models.train.action): key frames with their actors read from the AVA
layout (ours and AVA's clock), clips sampled as MMAction2's SampleAVAFrames (centred, jittered,
clamped), boxes that follow the frames through the flip and the resize, the loss falling on one
repeated sample, and the job end to end on a tiny synthetic dataset: trained, frame-mAP
validated, published, reloaded through the registry, resumed."""

import json
import shutil
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from models.action import ActionConfig, build_action_model
from models.action.config import SMALL_BACKBONES
from models.checkpoints.checkpoint import load_checkpoint
from models.checkpoints.errors import CheckpointError
from models.data.ava import load_ava_csv
from models.data.synthetic.export import generate_dataset
from models.data.synthetic.world import ACTIONS, WorldConfig
from models.train.action import (
    ActionLosses,
    ActionTrainConfig,
    action_loss,
    evaluate_action_model,
    predict_key_frames,
    train_action,
)
from models.train.action_data import ActionClips, AvaData, clip_indices, prepare_inputs
from models.train.action_features import actor_features, head_inputs, with_banks
from models.train.action_lfb import (
    ActionLfbTrainConfig,
    bank_config,
    start_from,
    train_action_lfb,
)
from models.train.distributed import Drawn
from service.cli import app

WORLD = WorldConfig(width=96, height=64, frames=8, fps=4, max_objects=2)
# A tiny model of the small configuration's architecture, at the tiny world's frame size.
TINY = dict(
    depth=14, base_channels=8, clip_len=4, frame_interval=1, test_short_side=64, dropout=0.0
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("action-data") / "data"
    meta = generate_dataset(root, WORLD, 3, seed=5, split="train")
    return root, meta


def tiny_config(**overrides) -> ActionConfig:
    return ActionConfig.small(num_classes=len(ACTIONS) + 1, **{**TINY, **overrides})


# ---- the data --------------------------------------------------------------------------------
def test_key_frames_hold_each_actor_once_with_its_actions(dataset):
    root, meta = dataset
    data = AvaData.load(root, "train")
    assert data.class_names == [ACTIONS[k] for k in sorted(ACTIONS)]
    assert data.videos() == meta["videos"] == ["vid0000", "vid0001", "vid0002"]
    assert (data.fps, data.timestamp_start) == (WORLD.fps, 0.0)  # ours: meta.json's clock
    assert set(data.frame_counts.values()) == {WORLD.frames}
    rows = load_ava_csv(data.files.annotations)
    assert sum(int(k.labels.sum()) for k in data.key_frames) == len(rows)
    # Two key frames a video (seconds 0 and 1), at frames 0 and fps (img_00001, img_00005).
    assert [(k.video, k.timestamp) for k in data.key_frames[:2]] == [
        ("vid0000", 0.0),
        ("vid0000", 1.0),
    ]
    assert [data.centre_frame(k) for k in data.key_frames[:2]] == [0, WORLD.fps]
    for key in data.key_frames:
        mine = [r for r in rows if (r.video_id, r.timestamp) == (key.video, key.timestamp)]
        assert len(key.boxes) == len({r.person_id for r in mine})
        assert (key.labels.sum(1) >= 1).all()
    # The evaluator's ground truth is the CSV, row for row.
    truth = data.ground_truth(list(range(len(data.key_frames))))
    as_rows = lambda boxes: sorted(  # noqa: E731
        (b.video_id, b.timestamp, tuple(np.round(b.box, 3)), b.action_id) for b in boxes
    )
    assert as_rows(truth) == as_rows(rows)


def test_ava_layout_reads_on_ava_clock(tmp_path):
    """AVA's frames start at second 900, 30 a second: key frame 902 is img_00061; an excluded
    timestamp is dropped; an action outside the list is dropped, and an actor left without one."""
    ann, frames = tmp_path / "annotations", tmp_path / "frames" / "movie"
    ann.mkdir()
    frames.mkdir(parents=True)
    for t in range(1, 121):
        cv2.imwrite(str(frames / f"img_{t:05d}.jpg"), np.zeros((8, 8, 3), np.uint8))
    (ann / "ava_train_v2.2.csv").write_text(
        "movie,0902,0.1,0.1,0.5,0.5,12,0\n"
        "movie,0902,0.1,0.1,0.5,0.5,80,0\n"
        "movie,0902,0.5,0.5,0.9,0.9,99,1\n"
        "movie,0903,0.1,0.1,0.5,0.5,12,0\n"
    )
    (ann / "ava_action_list_v2.2.pbtxt").write_text(
        'label { name: "stand" label_id: 12 }\nlabel { name: "watch" label_id: 80 }\n'
    )
    (ann / "ava_train_excluded_timestamps_v2.2.csv").write_text("movie,0903\n")
    data = AvaData.load(tmp_path, "train")
    assert (data.fps, data.timestamp_start, data.frame_counts) == (30.0, 900.0, {"movie": 120})
    assert data.class_names == ["stand", "watch"]
    (key,) = data.key_frames
    assert data.centre_frame(key) == 60
    assert key.labels.tolist() == [[1.0, 1.0]]
    assert AvaData.load(tmp_path, "train", fps=25).centre_frame(key) == 50


def test_clips_are_centred_on_the_key_frame_and_clamped_to_the_video():
    assert clip_indices(10, 4, 2, 100).tolist() == [6, 8, 10, 12]  # key frame at clip_len // 2
    assert clip_indices(10, 5, 2, 100).tolist() == [6, 8, 10, 12, 14]
    assert clip_indices(1, 4, 2, 100).tolist() == [0, 0, 1, 3]
    assert clip_indices(98, 4, 2, 100).tolist() == [94, 96, 98, 99]
    assert clip_indices(0, 4, 1, 1).tolist() == [0, 0, 0, 0]
    rng = np.random.default_rng(0)
    for interval, offsets in ((2, {-1, 0}), (4, {-2, -1, 0, 1}), (1, {-1, 0})):
        base = clip_indices(50, 8, interval, 100)
        seen = set()
        for _ in range(20):
            seen |= set((clip_indices(50, 8, interval, 100, rng) - base).tolist())
        assert seen == offsets, (interval, seen)


def test_a_flip_moves_the_boxes_with_the_frames_and_the_resize_scales_them(dataset):
    data = AvaData.load(dataset[0], "train")
    config = tiny_config(test_short_side=128)  # twice the world's 64 rows
    index = next(i for i, k in enumerate(data.key_frames) if k.timestamp == 1.0)
    plain = ActionClips(data, config, train=False)[index]
    key = data.key_frames[index]
    expected = clip_indices(data.centre_frame(key), 4, 1, WORLD.frames)
    assert np.array_equal(plain.frames, np.stack(data.read_frames(key.video, expected)))
    width = WORLD.width
    assert np.allclose(plain.boxes, key.boxes * [width, WORLD.height, width, WORLD.height])

    clips = ActionClips(data, config)
    flipped = []
    for draw in range(12):
        clips.rng = np.random.default_rng([0, draw])
        sample = clips[index]
        if np.array_equal(sample.frames[2], plain.frames[2, :, ::-1]):
            flipped.append(sample)
    assert 0 < len(flipped) < 12
    sample = flipped[0]
    assert np.allclose(sample.boxes[:, [0, 2]], width - plain.boxes[:, [2, 0]])
    assert np.allclose(sample.boxes[:, [1, 3]], plain.boxes[:, [1, 3]])
    # The key frame's pixels inside a flipped box are the mirror of those inside the box.
    x1, y1, x2, y2 = np.round(sample.boxes[0]).astype(int)
    px1, _, px2, _ = np.round(plain.boxes[0]).astype(int)
    assert np.array_equal(sample.frames[2, y1:y2, x1:x2], plain.frames[2, y1:y2, px1:px2][:, ::-1])

    clip, rois = prepare_inputs([plain, sample], config)
    assert clip.shape == (2, 3, 4, 128, 192)
    count = len(plain.boxes)
    assert rois[:count, 0].eq(0).all() and rois[count:, 0].eq(1).all()
    torch.testing.assert_close(rois[:count, 1:], torch.from_numpy(plain.boxes) * 2)


def test_loss_drops_the_background_row():
    logits = torch.tensor([[50.0, 0.0, 0.0], [-50.0, 0.0, 0.0]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(action_loss(logits, labels), torch.tensor(np.log(2.0)).float())


def test_loss_falls_on_one_repeated_sample(dataset):
    torch.manual_seed(1)  # a start that is wrong on this actor (seed 0's is right by chance)
    data = AvaData.load(dataset[0], "train")
    model = build_action_model(tiny_config()).train()
    sample = ActionClips(data, model.config, train=False)[1]
    losses = ActionLosses(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    totals = []
    for _ in range(10):
        total = sum(losses(Drawn([0, 1], [sample, sample])).values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(float(total.detach()))
    assert totals[0] > 1.0 and np.mean(totals[-3:]) < 0.25 * np.mean(totals[:3]), totals


def test_validation_scores_every_action_of_every_actor(dataset):
    data = AvaData.load(dataset[0], "train")
    model = build_action_model(tiny_config())
    indices = data.key_frames_of(["vid0002"])
    rows = predict_key_frames(model, data, indices, batch_size=3)
    actors = sum(len(data.key_frames[k].boxes) for k in indices)
    assert len(rows) == actors * len(ACTIONS)
    assert {r.video_id for r in rows} == {"vid0002"} and all(0 < r.score < 1 for r in rows)
    metrics = evaluate_action_model(model, data, ["vid0002"])
    assert 0.0 <= metrics["frame_map"] <= 1.0
    present = {ACTIONS[a] for a in {r.action_id for r in data.ground_truth(indices)}}
    assert {k for k in metrics if k.startswith("ap_")} == {f"ap_{n}" for n in present}


# ---- the job ---------------------------------------------------------------------------------
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
    return ActionTrainConfig(**{**values, **overrides})


def test_train_publish_reload_resume(dataset, tmp_path):
    root, meta = dataset
    folder = train_action(train_config(root, tmp_path))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["family"] == "action" and folder.parent.name == "slowfast-acrn"
    assert manifest["dataset_fingerprint"] == meta["fingerprint"]
    assert manifest["class_names"] == ["still", "walk", "jump", "spin"]
    assert manifest["architecture"]["num_classes"] == 5
    assert manifest["architecture"]["clip_len"] == TINY["clip_len"]
    metrics = manifest["metrics"]
    assert 0.0 <= metrics["frame_map"] <= 1.0
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    training = manifest["training"]
    assert training["iters"] == 3 and training["train_videos"] == 2
    assert training["validation_videos"] == 1 and training["fps"] == WORLD.fps

    loaded = load_checkpoint(folder)  # built by the registered family, probed
    data = AvaData.load(root, "train")
    # The published weights score the held-out video as the validation did.
    assert evaluate_action_model(loaded.model, data, ["vid0002"]) == metrics

    resumed = train_action(
        train_config(root, tmp_path, iters=5, resume=True, store=tmp_path / "store2")
    )
    training = json.loads((resumed / "manifest.json").read_text())["training"]
    assert training["resumed_from_step"] == 3 and training["iters"] == 5
    losses = (tmp_path / "work" / "losses.tsv").read_text().splitlines()
    assert [int(line.split("\t")[0]) for line in losses] == [0, 1, 2, 3, 4]


def test_init_starts_from_a_published_checkpoint(dataset, tmp_path):
    """--init: the run starts from the checkpoint's weights and architecture (not the small
    config's, given no overrides), with a fresh schedule; a checkpoint of another family or
    of other actions is refused before training."""
    root, _ = dataset
    first = train_action(train_config(root, tmp_path, iters=1))
    start = load_checkpoint(first).model.state_dict()
    tuned = train_action(
        train_config(
            root,
            tmp_path,
            iters=1,
            lr=0.0,
            init=first,
            model_overrides={},
            work_dir=tmp_path / "work2",
            store=tmp_path / "store2",
        )
    )
    manifest = json.loads((tuned / "manifest.json").read_text())
    assert manifest["architecture"]["clip_len"] == TINY["clip_len"]  # the checkpoint's
    assert manifest["training"]["resumed_from_step"] == 0
    after = load_checkpoint(tuned).model.state_dict()
    # At lr 0 only the batch norms' running statistics move.
    moved = {k for k in start if not torch.equal(start[k], after[k])}
    assert moved and all("bn." in k or k.endswith("num_batches_tracked") for k in moved)

    other = tmp_path / "other"
    shutil.copytree(first, other)
    text = (other / "manifest.json").read_text().replace('"family": "action"', '"family": "vis"')
    (other / "manifest.json").write_text(text)
    with pytest.raises(CheckpointError, match="family is 'vis'"):
        train_action(train_config(root, tmp_path, init=other, work_dir=tmp_path / "work3"))


# ---- the feature bank's head -----------------------------------------------------------------
def test_lfb_head_starts_as_its_checkpoint_and_reads_past_features_of_its_own_actor(
    dataset, tmp_path
):
    root, _ = dataset
    base_folder = train_action(train_config(root, tmp_path, iters=1))
    base = load_checkpoint(base_folder).model
    lfb_cfg = ActionLfbTrainConfig(
        data=root,
        store=tmp_path / "lfb-store",
        work_dir=tmp_path / "lfb-work",
        init=base_folder,
        lfb="avg",
        lfb_window_s=3.0,
        iters=4,
        batch_size=2,
        val_videos=1,
        show_progress=False,
    )
    model = start_from(base, bank_config(base.config, lfb_cfg)).eval()
    data = AvaData.load(root, "train")
    indices = data.key_frames_of(data.videos())
    features = actor_features(model, data, indices)
    cached = with_banks(data, features, model.config)
    # Banks: an actor's earlier key frames of its video, its own features, never the present.
    seen = 0
    for k in indices:
        key = data.key_frames[k]
        for actor, bank in zip(key.actor_ids, cached[k].banks, strict=True):
            earlier = [
                features[j][data.key_frames[j].actor_ids.index(actor)]
                for j in indices
                if data.key_frames[j].video == key.video
                and data.key_frames[j].timestamp < key.timestamp
                and actor in data.key_frames[j].actor_ids
            ]
            assert len(bank) == len(earlier)
            assert all(torch.equal(a, b) for a, b in zip(bank, earlier, strict=True))
            seen += len(bank)
    assert seen > 0
    # Step 0 is the checkpoint: the bank's classifier columns start at zero.
    with torch.inference_mode():
        sample = cached[indices[-1]]
        actors, banks, _ = head_inputs([sample], model.config.feature_channels, "cpu")
        clip = ActionClips(data, base.config, train=False)[indices[-1]]
        assert torch.allclose(
            model.scores_from_features(actors, banks),
            base.action_scores(*prepare_inputs([clip], base.config)),
            atol=1e-5,
        )

    folder = train_action_lfb(lfb_cfg)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["architecture"]["lfb"] == "avg"
    assert manifest["architecture"]["lfb_window_s"] == 3.0
    assert manifest["training"]["init_version"] == base_folder.name
    assert 0.0 <= manifest["metrics"]["frame_map"] <= 1.0
    tuned = load_checkpoint(folder).model
    # Only the head moved: the backbone and ACRN are the checkpoint's.
    for name, value in base.state_dict().items():
        if not name.startswith("roi_head.bbox_head."):
            assert torch.equal(value, tuned.state_dict()[name]), name

    # The control (no bank) reads the features the first run kept in the work dir.
    assert len(list((tmp_path / "lfb-work").glob("features-train-*.pt"))) == 1
    control = train_action_lfb(replace(lfb_cfg, lfb="none", name="control"))
    control_model = load_checkpoint(control).model
    assert control_model.config.lfb == "none"
    assert control_model.roi_head.bbox_head.fc_cls.in_features == base.config.feature_channels


def test_train_action_takes_slowonly_and_refuses_an_unknown_backbone(dataset, tmp_path):
    root, _ = dataset
    overrides = {**TINY, **SMALL_BACKBONES["slowonly"], "clip_len": 4, "frame_interval": 1}
    folder = train_action(train_config(root, tmp_path, iters=1, model_overrides=overrides))
    architecture = json.loads((folder / "manifest.json").read_text())["architecture"]
    assert architecture["backbone"] == "slowonly" and architecture["acrn"] is False
    assert load_checkpoint(folder).model.config.backbone == "slowonly"

    args = ["train", "action", "--data", str(root), "--out", str(tmp_path / "store")]
    result = CliRunner().invoke(app, [*args, "--backbone", "resnet"])
    assert result.exit_code == 2
    assert "unknown backbone 'resnet'" in result.output and "slowonly" in result.output
    published = tmp_path / "store" / "action" / "slowfast-acrn"
    assert len(list(published.iterdir())) == 1  # the slowonly run's; the refused run published none
