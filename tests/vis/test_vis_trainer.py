"""The VIS training job end to end: dataset -> training -> published checkpoint -> reload."""

import json
import subprocess
import sys

import numpy as np
import pytest

from models.checkpoints.checkpoint import load_checkpoint
from models.data.synthetic.export import generate_dataset
from models.data.synthetic.world import WorldConfig
from models.train.vis import VisTrainConfig, train_vis
from models.train.vis_data import collate_pairs, read_rgb

WORLD = WorldConfig(width=128, height=96, frames=6, fps=4, max_objects=2)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("vis-data") / "data"
    meta = generate_dataset(root, WORLD, 4, seed=5, split="train")
    return root, meta


def config(root, tmp_path, **overrides):
    values = dict(
        data=root,
        store=tmp_path / "store",
        iters=4,
        batch_size=2,
        val_videos=1,
        work_dir=tmp_path / "work",
        show_progress=False,
    )
    return VisTrainConfig(**{**values, **overrides})


def test_train_publish_reload_resume(dataset, tmp_path):
    root, meta = dataset
    folder = train_vis(config(root, tmp_path))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["family"] == "vis" and manifest["dataset_fingerprint"] == meta["fingerprint"]
    assert manifest["class_names"] == ["disc", "square", "triangle", "star", "cross", "ring"]
    assert set(manifest["metrics"]) >= {"AP", "AP50", "AR10"}
    assert manifest["training"]["iters"] == 4 and manifest["training"]["train_videos"] == 3

    frame = read_rgb(root / "ytvis" / "JPEGImages" / "vid0000" / "00000.jpg")
    first, second = (
        load_checkpoint(folder).model.detect([frame], min_score=0.0)[0] for _ in range(2)
    )
    np.testing.assert_array_equal(first.scores.numpy(), second.scores.numpy())
    np.testing.assert_array_equal(first.boxes.numpy(), second.boxes.numpy())

    resumed = train_vis(config(root, tmp_path, iters=6, resume=True, store=tmp_path / "store2"))
    training = json.loads((resumed / "manifest.json").read_text())["training"]
    assert training["resumed_from_step"] == 4 and training["iters"] == 6


def test_cli_reports_a_missing_dataset(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "service.cli",
            "train",
            "vis",
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "store"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "no train.json" in result.stderr


@pytest.mark.parametrize(
    ("val_videos", "train", "held"),
    [
        (0, [1, 2, 3], []),
        (1, [1, 2], [3]),
        (2, [1], [2, 3]),
        (3, [1, 2, 3], []),
        (5, [1, 2, 3], []),
    ],
)
def test_hold_out_keeps_videos_to_train_on(tmp_path, val_videos, train, held):
    # --val-videos 0 once held out every video (ids[-0:] is the whole list).
    assert config(tmp_path, tmp_path, val_videos=val_videos).hold_out([1, 2, 3]) == (train, held)


@pytest.fixture(scope="module")
def negatives(tmp_path_factory):
    """Wide-world videos with no object of the categories: every frame is empty."""
    from models.data.synthetic.world import wide_world

    root = tmp_path_factory.mktemp("vis-negatives") / "data"
    world = wide_world(width=128, height=96, frames=6, fps=4, max_objects=2, negatives=1.0)
    generate_dataset(root, world, 2, seed=6, split="train")
    return root


def test_merged_datasets_keep_their_frames_and_tracks(dataset, negatives):
    from models.data.ytvis import load_ytvis, merge_ytvis
    from models.train.vis import locate_ytvis

    parts = [load_ytvis(*locate_ytvis(root, "train")) for root in (dataset[0], negatives)]
    merged = merge_ytvis(parts)
    assert len(merged.videos) == 6 and len(merged.tracks) == len(parts[0].tracks)
    assert len(set(merged.videos)) == 6  # the second part's ids follow the first's
    for old_id, new_id in [(min(parts[1].videos), max(parts[0].videos) + 1)]:
        np.testing.assert_array_equal(
            read_rgb(merged.frame_path(new_id, 2)), read_rgb(parts[1].frame_path(old_id, 2))
        )
    first = min(parts[0].videos)
    assert [t.id for t in merged.tracks_of(first)] == [t.id for t in parts[0].tracks_of(first)]

    renamed = load_ytvis(*locate_ytvis(negatives, "train"))
    renamed.categories = {**renamed.categories, 1: "plate"}
    with pytest.raises(ValueError, match="categories differ"):
        merge_ytvis([parts[0], renamed])


def test_empty_frames_are_key_frames_only_when_asked(dataset, negatives):
    from models.data.ytvis import load_ytvis, merge_ytvis
    from models.train.vis import locate_ytvis
    from models.train.vis_data import VisPairDataset

    merged = merge_ytvis(
        [load_ytvis(*locate_ytvis(root, "train")) for root in (dataset[0], negatives)]
    )
    plain = VisPairDataset(merged)
    with_empty = VisPairDataset(merged, empty_frames=True)
    assert len(with_empty) == 6 * 6 and len(plain) < 4 * 6 + 1
    empty = [k for k, (video, _) in enumerate(with_empty.keys) if video > 4]
    key, ref = with_empty[empty[0]]
    assert len(key.target["labels"]) == 0 and key.target["masks"].shape == (0, 96, 128)

    # A pair with no instance trains: the detector's background losses only, all finite.
    import torch

    from models.train.distributed import Drawn
    from models.train.vis import PairLosses
    from models.vis.config import VisConfig
    from models.vis.model import build_masktrack_rcnn

    torch.manual_seed(0)
    model = build_masktrack_rcnn(VisConfig.small(num_classes=6)).train()
    losses = PairLosses(model, seed=0)(Drawn([0], collate_pairs([(key, ref)])))
    assert losses and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_fine_tune_on_a_mix_with_negatives(dataset, negatives, tmp_path):
    import torch

    root, _ = dataset
    start = train_vis(config(root, tmp_path, iters=2))
    # lr 0: the published weights are the starting checkpoint's, so --init loaded them.
    folder = train_vis(
        config(
            root,
            tmp_path,
            iters=3,
            lr=0.0,
            also_data=(negatives,),
            empty_frames=True,
            init=start,
            store=tmp_path / "tuned",
            work_dir=tmp_path / "work2",
        )
    )
    training = json.loads((folder / "manifest.json").read_text())["training"]
    assert training["data"] == [str(root), str(negatives)]
    assert training["empty_frames"] is True and training["init"] == str(start)
    assert training["train_videos"] == 5  # 4 + 2 videos, the last of them held out
    before, after = load_checkpoint(start).model, load_checkpoint(folder).model
    for (name, a), (_, b) in zip(before.named_parameters(), after.named_parameters(), strict=True):
        assert torch.equal(a, b), name


def test_fine_tune_at_a_larger_input_keeps_the_weights_and_records_the_size(dataset, tmp_path):
    import torch

    root, _ = dataset
    start = train_vis(config(root, tmp_path, iters=2))
    larger = {"image_long_edge": 192, "image_short_edge": 144}
    folder = train_vis(
        config(
            root,
            tmp_path,
            iters=1,
            lr=0.0,
            init=start,
            model_overrides=larger,
            store=tmp_path / "larger",
            work_dir=tmp_path / "work-larger",
        )
    )
    architecture = json.loads((folder / "manifest.json").read_text())["architecture"]
    assert {k: architecture[k] for k in larger} == larger
    before, after = load_checkpoint(start).model, load_checkpoint(folder).model
    for (name, a), (_, b) in zip(before.named_parameters(), after.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    # The frames (128x96) are scaled up to the new input for the network, answered at theirs.
    from models.common.image import prepare_batch

    frame = read_rgb(root / "ytvis" / "JPEGImages" / "vid0000" / "00000.jpg")
    edges = {"long_edge": after.config.image_long_edge, "short_edge": after.config.image_short_edge}
    assert [tuple(s) for s in prepare_batch([frame], **edges).image_sizes] == [(144, 192)]
    assert after.config.image_long_edge == 192 and after.config.image_short_edge == 144
    assert after.eval().detect([frame], min_score=0.0)[0].image_size == (96, 128)


@pytest.mark.parametrize(
    ("size", "message"),
    [("480", "expected LONGxSHORT"), ("360x480", "long edge comes first"), ("16x12", "at least")],
)
def test_cli_rejects_a_bad_input_size(dataset, tmp_path, size, message):
    root, _ = dataset
    command = ["train", "vis", "--data", str(root), "--out", str(tmp_path), "--input-size", size]
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", *command],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and message in " ".join(result.stderr.split())
    assert not (tmp_path / "vis").exists()


def test_calibrate_publishes_the_threshold_the_negatives_allow(dataset, negatives, tmp_path):
    import torch

    from models.train.calibrate import CANDIDATES, calibrate_vis
    from service.worker.runners.vis import vis_runners

    root, _ = dataset
    start = train_vis(config(root, tmp_path, iters=2))
    store = tmp_path / "store"
    folder = calibrate_vis(store, "masktrack", negatives, root, 0.05, "train", show_progress=False)
    manifest = json.loads((folder / "manifest.json").read_text())
    calibrated = manifest["training"]["calibrated"]
    table = calibrated["thresholds"]
    assert list(table) == [f"{t:.2f}" for t in CANDIDATES]
    rates = [table[f"{t:.2f}"]["false_objects_per_frame"] for t in CANDIDATES]
    assert rates == sorted(rates, reverse=True)  # a higher threshold answers fewer objects
    within = [t for t in CANDIDATES if table[f"{t:.2f}"]["false_objects_per_frame"] <= 0.05]
    chosen = manifest["architecture"]["served_score_threshold"]
    assert chosen == (within[0] if within else CANDIDATES[-1])
    assert calibrated["from_version"] == start.name and calibrated["negative_videos"] == 2
    assert calibrated["changed"] == {"served_score_threshold": [0.5, chosen]}
    assert calibrated["negative_frames"] == 12 and calibrated["annotated_objects"] > 0

    before, after = load_checkpoint(start), load_checkpoint(folder)
    for (name, a), (_, b) in zip(
        before.model.state_dict().items(), after.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    # What the worker serves: the calibrated default, which a session's option still overrides.
    chosen_too = after.model.config.served_score_threshold
    for runner in vis_runners(after, "masktrack"):
        assert runner.open_session({}).score_threshold == chosen_too == chosen
        assert runner.open_session({"score_threshold": 0.2}).score_threshold == 0.2


def test_a_served_default_threshold_comes_from_the_checkpoint(tmp_path):
    from models.checkpoints.checkpoint import save_checkpoint
    from models.vis.config import VisConfig
    from models.vis.model import build_masktrack_rcnn
    from service.worker.runners.vis import DEFAULT_SCORE_THRESHOLD, vis_runners

    cases = [({}, DEFAULT_SCORE_THRESHOLD), ({"served_score_threshold": 0.8}, 0.8)]
    for k, (configured, served) in enumerate(cases):
        config = VisConfig.small(num_classes=2, **configured)
        folder = tmp_path / str(k)
        save_checkpoint(
            build_masktrack_rcnn(config),
            folder,
            family="vis",
            architecture=config.to_dict(),
            class_names=["a", "b"],
            version=str(k),
        )
        runners = vis_runners(load_checkpoint(folder), "m")
        assert {r.open_session({}).score_threshold for r in runners} == {served}
