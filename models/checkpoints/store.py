"""A checkpoint store: <root>/<family>/<name>/<version>/ holding one checkpoint each.

Trainers publish into it (atomically, see checkpoint.py); workers poll snapshot() and load what
changed. Only complete checkpoints are ever visible: a version folder appears by a rename, and
hidden (dot) folders, where writes are in progress, are never listed.

The newest version is the greatest in natural order ("v2" < "v10", "1.9.0" < "1.10.0"), so
version strings should grow: a UTC timestamp such as 20250101T120000Z, or a counter.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.checkpoints.checkpoint import (
    LoadedCheckpoint,
    load_checkpoint,
    read_manifest,
    save_checkpoint,
    verify_checkpoint,
    write_folder_atomically,
)
from models.checkpoints.errors import CheckpointError
from models.checkpoints.manifest import MANIFEST_FILE, WEIGHTS_FILE, Manifest

_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def check_component(kind: str, value: str) -> str:
    """A family, name or version must be one safe path component."""
    if not _COMPONENT.fullmatch(value) or ".." in value:
        raise ValueError(
            f"{kind} {value!r} must be letters, digits and . _ + - (not starting with one of "
            "those), at most 128 characters"
        )
    return value


def natural_key(version: str) -> tuple:
    """Sort key comparing digit runs as numbers: v2 < v10."""
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part)
        for part in re.findall(r"\d+|\D+", version)
    )


class CheckpointStore:
    def __init__(self, root: Path | str):
        self.root = Path(root)

    def path(self, family: str, name: str, version: str) -> Path:
        check_component("family", family)
        check_component("name", name)
        check_component("version", version)
        return self.root / family / name / version

    def families(self) -> list[str]:
        return _visible_folders(self.root)

    def names(self, family: str) -> list[str]:
        return _visible_folders(self.root / check_component("family", family))

    def versions(self, family: str, name: str) -> list[str]:
        """Complete versions (with a manifest), oldest first."""
        folder = self.root / check_component("family", family) / check_component("name", name)
        found = [v for v in _visible_folders(folder) if (folder / v / MANIFEST_FILE).is_file()]
        return sorted(found, key=natural_key)

    def latest_version(self, family: str, name: str) -> str | None:
        versions = self.versions(family, name)
        return versions[-1] if versions else None

    def latest(self, family: str, name: str) -> Path | None:
        version = self.latest_version(family, name)
        return None if version is None else self.path(family, name, version)

    def snapshot(self) -> dict[tuple[str, str], str]:
        """(family, name) -> newest version, for everything in the store. A watcher compares
        two snapshots to see what was published in between."""
        result = {}
        for family in self.families():
            for name in self.names(family):
                version = self.latest_version(family, name)
                if version is not None:
                    result[(family, name)] = version
        return result

    def publish(
        self,
        model: nn.Module,
        *,
        family: str,
        name: str,
        version: str,
        architecture: dict[str, Any],
        class_names: list[str],
        metrics: dict[str, Any] | None = None,
        dataset_fingerprint: str = "",
        training: dict[str, Any] | None = None,
    ) -> Path:
        """Save `model` as <family>/<name>/<version> (atomic; FileExistsError if present)."""
        target = self.path(family, name, version)
        save_checkpoint(
            model,
            target,
            family=family,
            architecture=architecture,
            class_names=class_names,
            version=version,
            metrics=metrics,
            dataset_fingerprint=dataset_fingerprint,
            training=training,
        )
        return target

    def add(self, checkpoint: Path | str, name: str) -> Path:
        """Copy an existing checkpoint folder into the store under its manifest's family and
        version. The copy is verified (hash and architecture) before it becomes visible."""
        source = Path(checkpoint)
        read_manifest(source)  # clear errors for a folder that is not a checkpoint at all
        files = {}
        for file_name in (WEIGHTS_FILE, MANIFEST_FILE):
            try:
                files[file_name] = (source / file_name).read_bytes()
            except FileNotFoundError:
                raise CheckpointError(source / file_name, "missing") from None
        manifest = Manifest.from_json(files[MANIFEST_FILE].decode("utf-8"), source / MANIFEST_FILE)
        target = self.path(manifest.family, name, manifest.version)
        write_folder_atomically(target, files, check=verify_checkpoint)
        return target

    def load(
        self,
        family: str,
        name: str,
        version: str | None = None,
        device: torch.device | str = "cpu",
    ) -> LoadedCheckpoint:
        """Load a version (default: the newest) of family/name."""
        version = version or self.latest_version(family, name)
        if version is None:
            raise CheckpointError(self.root / family / name, "no published version")
        return load_checkpoint(self.path(family, name, version), device, family=family)


def _visible_folders(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(
        entry.name
        for entry in folder.iterdir()
        if entry.is_dir() and not entry.name.startswith(".")
    )
