"""The shipped SlowFast-ACRN checkpoint, re-evaluated on held-out synthetic videos: with the
ground-truth boxes (as its validation), and served behind masktrack as `vidserve segment` runs it
(the tracked boxes), its answers scored by the evaluator from the AVA rows the service writes."""

import json

import pytest

from models.checkpoints.store import CheckpointStore
from models.data.ava import load_ava_csv
from models.data.synthetic.export import generate_dataset
from models.data.synthetic.world import ACTIONS, WorldConfig
from models.eval.action import METRIC_NAME, evaluate_actions
from models.train.action import evaluate_action_model
from models.train.action_data import AvaData
from service.local import segment_file
from service.settings import SHIPPED_CHECKPOINTS
from service.worker.runners import load_runner_from_store
from service.writers.ava import ava_rows

HELD_OUT_SEED = 965  # training used seed 100, its validation 200, the quality benchmark 960
# The target is frame-mAP 0.6 from the service's answers on 8 videos of 48 frames
# (benchmarks/action_quality.py: the shipped checkpoint has 0.625 there, 0.821 with ground-truth
# boxes); on these smaller sets it has 0.93 served (2 videos) and 0.86 with ground-truth boxes
# (the feature-bank head 0.82), and the floors guard against a checkpoint that lost that.
GT_BOXES_FLOOR = 0.7
SERVED_FLOOR = 0.7


@pytest.fixture(scope="module")
def shipped():
    store = CheckpointStore(SHIPPED_CHECKPOINTS)
    folder = store.latest("action", "slowfast-acrn")
    assert folder is not None, "the project ships a SlowFast-ACRN checkpoint"
    return store.load("action", "slowfast-acrn"), folder


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    root = tmp_path_factory.mktemp("held-out")
    generate_dataset(root, WorldConfig(frames=24), 4, HELD_OUT_SEED, split="val")
    return root, AvaData.load(root, "val")


def test_with_ground_truth_boxes_it_keeps_its_map(shipped, held_out):
    loaded, _ = shipped
    _, data = held_out
    metrics = evaluate_action_model(loaded.model, data, data.videos())
    assert metrics["frame_map"] >= GT_BOXES_FLOOR, metrics


def test_served_on_tracked_boxes_it_keeps_its_map(held_out):
    root, data = held_out
    runner = load_runner_from_store(SHIPPED_CHECKPOINTS, "slowfast-acrn", "cpu")
    assert [name for name, _ in runner.info.stages] == ["masktrack", "slowfast-acrn"]
    # its actors are the tracker's objects at the head's own threshold, not masktrack's default
    assert runner.open_session({}).first.score_threshold == 0.5
    videos = data.videos()[:2]
    rows = []
    for video in videos:
        answer = segment_file(root / "videos" / f"{video}.mp4", runner, {})
        rows += ava_rows(answer, runner.info.actions, video)
    gt = [b for b in load_ava_csv(data.files.annotations) if b.video_id in videos]
    result = evaluate_actions(gt, rows, class_ids=list(ACTIONS))
    assert result.metrics[METRIC_NAME] >= SERVED_FLOOR, result.per_class


def test_manifest_records_how_it_was_made(shipped):
    _, folder = shipped
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["training"]["command"].startswith("vidserve train action")
    assert manifest["training"]["fps"] == 8.0
    assert manifest["class_names"] == list(ACTIONS.values())
    assert manifest["architecture"]["depth"] == 26
    assert manifest["metrics"]["frame_map"] >= GT_BOXES_FLOOR
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size <= 50 * 1024 * 1024


def test_the_feature_bank_checkpoint_reads_the_shipped_backbone(shipped, held_out):
    """`slowfast-acrn-lfb` was trained on the shipped checkpoint's frozen features: its backbone
    is that checkpoint's, weight for weight, and with its banks it keeps the floor."""
    loaded, folder = shipped
    store = CheckpointStore(SHIPPED_CHECKPOINTS)
    bank_folder = store.latest("action", "slowfast-acrn-lfb")
    assert bank_folder is not None, "the project ships the feature-bank head"
    manifest = json.loads((bank_folder / "manifest.json").read_text())
    assert manifest["training"]["init_version"] == folder.name
    assert manifest["architecture"]["lfb"] != "none"
    bank = store.load("action", "slowfast-acrn-lfb").model
    base_state, bank_state = loaded.model.state_dict(), bank.state_dict()
    frozen = [k for k in base_state if not k.startswith("roi_head.bbox_head.")]
    assert frozen and all(base_state[k].equal(bank_state[k]) for k in frozen)
    _, data = held_out
    metrics = evaluate_action_model(bank, data, data.videos())
    assert metrics["frame_map"] >= GT_BOXES_FLOOR, metrics
