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
from models.train.vis_data import read_rgb

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
