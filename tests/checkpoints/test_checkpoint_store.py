"""The checkpoint store: <root>/<family>/<name>/<version>/, newest version, atomic publish."""

import pytest
import torch
from torch import nn

from models.checkpoints import (
    WEIGHTS_FILE,
    CheckpointError,
    CheckpointStore,
    register_family,
    save_checkpoint,
)
from models.checkpoints.store import natural_key


class Tiny(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.linear = nn.Linear(width, 1)


register_family("tiny", lambda architecture: Tiny(**architecture))


def publish(store, version, name="demo", width=3):
    model = Tiny(width)
    return store.publish(
        model,
        family="tiny",
        name=name,
        version=version,
        architecture={"width": width},
        class_names=["thing"],
        metrics={"ap": 0.1},
        dataset_fingerprint="fp",
        training={"seed": 1},
    )


def test_versions_sort_naturally_and_latest_is_the_greatest(tmp_path):
    store = CheckpointStore(tmp_path)
    for version in ("v2", "v10", "v1"):
        publish(store, version)
    assert store.versions("tiny", "demo") == ["v1", "v2", "v10"]
    assert store.latest_version("tiny", "demo") == "v10"
    assert store.latest("tiny", "demo") == tmp_path / "tiny" / "demo" / "v10"
    assert sorted(["1.10.0", "1.9.0", "1.9.1"], key=natural_key) == ["1.9.0", "1.9.1", "1.10.0"]


def test_published_checkpoints_load_and_are_immutable(tmp_path):
    store = CheckpointStore(tmp_path)
    path = publish(store, "20250101T000000Z")
    assert (path / WEIGHTS_FILE).is_file()
    loaded = store.load("tiny", "demo")
    assert loaded.manifest.version == "20250101T000000Z" and loaded.path == path
    with pytest.raises(FileExistsError):
        publish(store, "20250101T000000Z")
    with pytest.raises(CheckpointError, match="no published version"):
        store.load("tiny", "other")


def test_unfinished_writes_are_invisible(tmp_path):
    store = CheckpointStore(tmp_path)
    publish(store, "1")
    demo = tmp_path / "tiny" / "demo"
    (demo / ".2.tmp-0123").mkdir()  # a publish in progress
    (demo / "3").mkdir()  # a folder without a manifest is not a checkpoint
    assert store.versions("tiny", "demo") == ["1"]
    assert store.snapshot() == {("tiny", "demo"): "1"}


def test_snapshot_shows_what_changed(tmp_path):
    store = CheckpointStore(tmp_path)
    assert store.snapshot() == {}
    publish(store, "1")
    publish(store, "1", name="other")
    before = store.snapshot()
    publish(store, "2")
    after = store.snapshot()
    changed = {key: version for key, version in after.items() if before.get(key) != version}
    assert changed == {("tiny", "demo"): "2"}
    assert store.families() == ["tiny"] and store.names("tiny") == ["demo", "other"]


def test_add_copies_a_verified_checkpoint(tmp_path):
    source = tmp_path / "made-elsewhere"
    model = Tiny(2)
    save_checkpoint(
        model, source, family="tiny", architecture={"width": 2}, class_names=[], version="7"
    )
    store = CheckpointStore(tmp_path / "store")
    target = store.add(source, "imported")
    assert target == tmp_path / "store" / "tiny" / "imported" / "7"
    assert torch.equal(store.load("tiny", "imported").model.linear.weight, model.linear.weight)


def test_add_refuses_a_corrupt_checkpoint_and_leaves_nothing(tmp_path):
    source = tmp_path / "bad"
    save_checkpoint(
        Tiny(2), source, family="tiny", architecture={"width": 2}, class_names=[], version="7"
    )
    data = bytearray((source / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 0x01
    (source / WEIGHTS_FILE).write_bytes(bytes(data))
    store = CheckpointStore(tmp_path / "store")
    with pytest.raises(CheckpointError, match="sha256"):
        store.add(source, "imported")
    assert list((tmp_path / "store" / "tiny" / "imported").iterdir()) == []


def test_names_and_versions_must_be_single_path_components(tmp_path):
    store = CheckpointStore(tmp_path)
    for bad in ("../escape", "a/b", ".hidden", "", "x" * 200):
        with pytest.raises(ValueError):
            store.path("tiny", "demo", bad)
        with pytest.raises(ValueError):
            publish(store, "1", name=bad)
    assert list(tmp_path.iterdir()) == []
