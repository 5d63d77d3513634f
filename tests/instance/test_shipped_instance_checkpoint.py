"""The shipped Cascade Mask R-CNN Swin checkpoint, re-evaluated on held-out synthetic videos."""

import json

import pytest

from models.checkpoints.store import CheckpointStore
from models.data.synthetic.export import generate_dataset
from models.data.synthetic.world import WorldConfig
from models.data.ytvis import load_ytvis
from models.train.instance import evaluate_instance_model
from service.settings import SHIPPED_CHECKPOINTS

HELD_OUT_SEED = 940  # training used seed 100, its validation set 200, the quality benchmark 930
# The target is AP 0.6 from the service's answers (benchmarks/instance_quality.py); this
# smaller set, scored on the model directly, guards against a checkpoint that lost it.
AP_FLOOR = 0.55


@pytest.fixture(scope="module")
def shipped():
    store = CheckpointStore(SHIPPED_CHECKPOINTS)
    folder = store.latest("instance", "cascade-swin")
    assert folder is not None, "the project ships a Cascade Swin checkpoint"
    return store.load("instance", "cascade-swin"), folder


def test_shipped_checkpoint_keeps_its_ap_on_held_out_videos(shipped, tmp_path):
    loaded, _ = shipped
    root = tmp_path / "held-out"
    generate_dataset(root, WorldConfig(frames=16), 6, HELD_OUT_SEED, split="val")
    data = load_ytvis(root / "ytvis" / "val.json", root / "ytvis" / "JPEGImages")
    metrics = evaluate_instance_model(loaded.model, data, list(data.videos))
    assert metrics["AP"] >= AP_FLOOR, metrics


def test_manifest_records_how_it_was_made(shipped):
    loaded, folder = shipped
    manifest = json.loads((folder / "manifest.json").read_text())
    training = manifest["training"]
    assert training["command"].startswith("vidserve train instance")
    assert manifest["architecture"]["backbone"] == "swin_small"
    assert manifest["metrics"]["AP"] >= AP_FLOOR
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size <= 50 * 1024 * 1024
