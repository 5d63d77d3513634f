"""Checkpoint folders: save/load round trip, atomic writes, and every way a file can be bad."""

import hashlib
import json
from datetime import datetime

import numpy as np
import pytest
import torch
from torch import nn

import models.checkpoints.checkpoint as checkpoint_module
from models.checkpoints import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    load_checkpoint,
    load_pth_state_dict,
    read_manifest,
    register_family,
    save_checkpoint,
    verify_checkpoint,
)
from models.vis import VisConfig, build_masktrack_rcnn


class Toy(nn.Module):
    """A family of its own, to show that nothing in the checkpoint code is specific to "vis"."""

    def __init__(self, width: int):
        super().__init__()
        self.linear = nn.Linear(width, 2)
        self.register_buffer("steps", torch.tensor(3))


register_family("toy", lambda architecture: Toy(**architecture))


def save_toy(path, width=4, **fields):
    torch.manual_seed(0)
    settings = dict(
        family="toy",
        architecture={"width": width},
        class_names=["a", "b"],
        version="1",
        metrics={"ap": 0.5},
        dataset_fingerprint="sha256:abc",
        training={"command": "train toy", "seed": 0},
    )
    settings.update(fields)
    return save_checkpoint(Toy(width), path, **settings)


def test_vis_round_trip_gives_identical_outputs(tmp_path):
    config = VisConfig.small(num_classes=2, image_long_edge=96, image_short_edge=64)
    torch.manual_seed(0)
    model = build_masktrack_rcnn(config)
    manifest = save_checkpoint(
        model,
        tmp_path / "vis-1",
        family="vis",
        architecture=config.to_dict(),
        class_names=["square", "bar"],
        version="1",
    )
    loaded = load_checkpoint(tmp_path / "vis-1")
    assert loaded.manifest == manifest and loaded.model.config == config
    assert not loaded.model.training
    frame = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    before, after = model.detect([frame])[0], loaded.model.detect([frame])[0]
    for name in ("boxes", "labels", "scores", "masks", "embeddings"):
        assert torch.equal(getattr(before, name), getattr(after, name)), name


def test_manifest_records_what_the_checkpoint_is(tmp_path):
    manifest = save_toy(tmp_path / "c")
    on_disk = json.loads((tmp_path / "c" / MANIFEST_FILE).read_text())
    weights = (tmp_path / "c" / WEIGHTS_FILE).read_bytes()
    assert on_disk["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    assert on_disk["weights_size"] == len(weights)
    assert on_disk["family"] == "toy" and on_disk["architecture"] == {"width": 4}
    assert on_disk["class_names"] == ["a", "b"] and on_disk["metrics"] == {"ap": 0.5}
    assert on_disk["training"] == {"command": "train toy", "seed": 0}
    assert on_disk["dataset_fingerprint"] == "sha256:abc" and on_disk["format_version"] == 1
    assert datetime.fromisoformat(on_disk["created_at"]).utcoffset().total_seconds() == 0
    assert read_manifest(tmp_path / "c") == manifest
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [MANIFEST_FILE, WEIGHTS_FILE]


def test_a_failed_save_leaves_nothing_behind(tmp_path, monkeypatch):
    written = []

    def fail_on_second_file(path, content):
        if written:
            raise OSError("disk full")
        written.append(path)
        path.write_bytes(content)

    monkeypatch.setattr(checkpoint_module, "_write_synced", fail_on_second_file)
    with pytest.raises(OSError, match="disk full"):
        save_toy(tmp_path / "c")
    assert written and list(tmp_path.iterdir()) == []


def test_checkpoints_are_never_overwritten(tmp_path):
    save_toy(tmp_path / "c")
    with pytest.raises(FileExistsError):
        save_toy(tmp_path / "c")


def test_nan_metrics_are_refused_before_writing(tmp_path):
    with pytest.raises(ValueError):
        save_toy(tmp_path / "c", metrics={"ap": float("nan")})
    assert list(tmp_path.iterdir()) == []


def test_flipped_byte_fails_the_sha256_check(tmp_path):
    save_toy(tmp_path / "c")
    weights = tmp_path / "c" / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256") as caught:
        load_checkpoint(tmp_path / "c")
    assert caught.value.path == str(weights)


def test_truncated_weights_are_reported(tmp_path):
    save_toy(tmp_path / "c")
    weights = tmp_path / "c" / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="truncated") as caught:
        load_checkpoint(tmp_path / "c")
    assert WEIGHTS_FILE in str(caught.value)


def test_architecture_mismatch_is_reported(tmp_path):
    save_toy(tmp_path / "c", width=4)
    manifest_path = tmp_path / "c" / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest["architecture"] = {"width": 5}  # the hash still matches: only the config lies
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"wrong shape 1: linear.weight \(2, 4\) != \(2, 5\)"):
        load_checkpoint(tmp_path / "c")
    with pytest.raises(CheckpointError, match="does not match"):
        verify_checkpoint(tmp_path / "c")


def test_saving_weights_that_do_not_fit_the_architecture_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="linear.weight"):
        save_checkpoint(
            Toy(4),
            tmp_path / "c",
            family="toy",
            architecture={"width": 6},
            class_names=[],
            version="1",
        )
    assert list(tmp_path.iterdir()) == []


def test_unknown_family_and_bad_config_are_reported(tmp_path):
    save_toy(tmp_path / "c")
    manifest_path = tmp_path / "c" / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps(dict(manifest, family="nonexistent_family")))
    with pytest.raises(CheckpointError, match="no builder for family 'nonexistent_family'"):
        load_checkpoint(tmp_path / "c")
    manifest_path.write_text(json.dumps(dict(manifest, architecture={"depth": 3})))
    with pytest.raises(CheckpointError, match="cannot build family 'toy'"):
        load_checkpoint(tmp_path / "c")
    with pytest.raises(CheckpointError, match="family is 'toy', expected 'vis'"):
        load_checkpoint(tmp_path / "c", family="vis")


def test_broken_manifests_are_reported(tmp_path):
    save_toy(tmp_path / "c")
    manifest_path = tmp_path / "c" / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON") as caught:
        load_checkpoint(tmp_path / "c")
    assert caught.value.path == str(manifest_path)
    manifest_path.write_text(json.dumps({k: v for k, v in manifest.items() if k != "version"}))
    with pytest.raises(CheckpointError, match="lacks version"):
        load_checkpoint(tmp_path / "c")
    manifest_path.write_text(json.dumps(dict(manifest, weights_size="12")))
    with pytest.raises(CheckpointError, match="weights_size must be int"):
        load_checkpoint(tmp_path / "c")
    manifest_path.unlink()
    with pytest.raises(CheckpointError, match="manifest.json: missing"):
        load_checkpoint(tmp_path / "c")
    with pytest.raises(CheckpointError, match="no such directory"):
        load_checkpoint(tmp_path / "elsewhere")


class Payload:
    """Not a tensor: a weights-only unpickler must refuse to rebuild it."""

    def __reduce__(self):
        return (print, ("this would run on load",))


def test_pth_reader_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "payload": Payload()}, path)
    with pytest.raises(CheckpointError, match="weights_only") as caught:
        load_pth_state_dict(path)
    assert "print" in str(caught.value)  # names the refused global


def test_pth_reader_reads_state_dicts_and_common_wrappers(tmp_path):
    state = {"linear.weight": torch.ones(2, 4), "linear.bias": torch.zeros(2)}
    torch.save(state, tmp_path / "plain.pth")
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "wrapped.pth")
    torch.save({"weights": state, "epoch": 3}, tmp_path / "odd.pth")
    for name in ("plain.pth", "wrapped.pth"):
        loaded = load_pth_state_dict(tmp_path / name)
        assert loaded.keys() == state.keys() and torch.equal(
            loaded["linear.weight"], state["linear.weight"]
        )
    with pytest.raises(CheckpointError, match="not tensors: weights, epoch"):
        load_pth_state_dict(tmp_path / "odd.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "plain.pth").read_bytes()[:30])
    with pytest.raises(CheckpointError, match="refused"):
        load_pth_state_dict(tmp_path / "cut.pth")
