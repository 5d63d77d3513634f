"""Save and load checkpoints: a folder with model.safetensors and manifest.json.

Saving is atomic: both files are written and fsynced in a hidden temporary folder beside the
target, which is then renamed into place, so a reader sees a whole checkpoint or none.
Loading reads the weights once, checks their size and sha256 against the manifest, parses them
(safetensors only: never pickle), checks that every weight is finite, rebuilds the model from the
manifest's family + architecture, checks every name and shape before loading, and runs the
family's probe (one forward pass on a probe frame, every output finite: models.checkpoints.probe).
Any problem is a CheckpointError naming the file.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor, nn

from models.checkpoints.errors import CheckpointError
from models.checkpoints.manifest import MANIFEST_FILE, WEIGHTS_FILE, Manifest, utc_now_iso
from models.checkpoints.probe import check_finite_weights, probe_model
from models.checkpoints.registry import build_model

_MAX_LISTED = 5  # names shown per kind of mismatch; the rest are counted


@dataclass
class LoadedCheckpoint:
    model: nn.Module  # in eval mode, on the requested device
    manifest: Manifest
    path: Path


def save_checkpoint(
    model: nn.Module,
    path: Path | str,
    *,
    family: str,
    architecture: dict[str, Any],
    class_names: list[str],
    version: str,
    metrics: dict[str, Any] | None = None,
    dataset_fingerprint: str = "",
    training: dict[str, Any] | None = None,
    created_at: str | None = None,
) -> Manifest:
    """Write `model`'s weights and manifest to the folder `path` atomically.

    The weights are checked against the model that family + architecture builds before anything
    is written, so a checkpoint that could not be loaded is never published. The folder must not
    exist yet (FileExistsError): published checkpoints are immutable.
    """
    target = Path(path)
    if target.exists():
        raise FileExistsError(f"{target}: already exists; checkpoints are never overwritten")
    state = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    _check_matches_architecture(state, family, architecture, target / WEIGHTS_FILE)
    weights = safetensors.torch.save(state, metadata={"family": family, "version": version})
    manifest = Manifest(
        family=family,
        architecture=architecture,
        class_names=list(class_names),
        version=version,
        created_at=created_at or utc_now_iso(),
        metrics=dict(metrics or {}),
        dataset_fingerprint=dataset_fingerprint,
        weights_sha256=hashlib.sha256(weights).hexdigest(),
        weights_size=len(weights),
        training=dict(training or {}),
    )
    manifest_text = manifest.to_json()  # raises on NaN before any write
    write_folder_atomically(
        target, {WEIGHTS_FILE: weights, MANIFEST_FILE: manifest_text.encode("utf-8")}
    )
    return Manifest.from_json(manifest_text)  # exactly what a reader will get (lists, not tuples)


def load_checkpoint(
    path: Path | str,
    device: torch.device | str = "cpu",
    *,
    family: str | None = None,
    probe: bool = True,
) -> LoadedCheckpoint:
    """The verified model (eval mode, on `device`) and manifest of the checkpoint at `path`.
    probe=False skips the probe forward pass (the weights are still checked to be finite)."""
    folder = Path(path)
    manifest, state = _read_checked(folder, family)
    model = _build(manifest, folder / MANIFEST_FILE)
    _load_exactly(model, state, folder)
    model = model.to(device).eval()
    if probe:
        probe_model(model, manifest.family, folder / WEIGHTS_FILE)
    return LoadedCheckpoint(model, manifest, folder)


def load_weights_into(model: nn.Module, path: Path | str, family: str) -> Manifest:
    """Start `model` from a published checkpoint's weights (a fine-tuning run's --init): the
    checkpoint verified as load_checkpoint verifies it, its names and shapes exactly the model's.
    Returns its manifest."""
    folder = Path(path)
    manifest, state = _read_checked(folder, family)
    _load_exactly(model, state, folder)
    return manifest


def load_part_into(module: nn.Module, path: Path | str, prefix: str) -> Manifest:
    """Start `module` from the weights under `prefix` of a published checkpoint of any family
    (e.g. a trunk pretrained inside another model, `backbone.body.`): verified as
    load_checkpoint verifies them, the prefix stripped, names and shapes exactly the module's.
    Returns the checkpoint's manifest."""
    folder = Path(path)
    manifest, state = _read_checked(folder, None)
    part = {name[len(prefix) :]: value for name, value in state.items() if name.startswith(prefix)}
    if not part:
        raise CheckpointError(folder / WEIGHTS_FILE, f"holds no weights under {prefix!r}")
    problems = describe_mismatch(_shapes(part), _shapes(module.state_dict()))
    if problems:
        raise CheckpointError(
            folder / WEIGHTS_FILE, f"its weights under {prefix!r} do not fit: {problems}"
        )
    module.load_state_dict(part, strict=True)
    return manifest


def _read_checked(folder: Path, family: str | None) -> tuple[Manifest, dict[str, Tensor]]:
    """The manifest (of `family`, when given) and its verified, finite weights."""
    manifest = read_manifest(folder)
    if family is not None and manifest.family != family:
        raise CheckpointError(
            folder / MANIFEST_FILE, f"family is {manifest.family!r}, expected {family!r}"
        )
    state = read_verified_weights(folder, manifest)
    check_finite_weights(state, folder / WEIGHTS_FILE)
    return manifest, state


def _load_exactly(model: nn.Module, state: dict[str, Tensor], folder: Path) -> None:
    """Load a state whose names and shapes are exactly the model's (else a CheckpointError
    that lists the differences)."""
    _raise_on_mismatch(_shapes(state), _shapes(model.state_dict()), folder / WEIGHTS_FILE)
    model.load_state_dict(state, strict=True)


def verify_checkpoint(path: Path | str) -> Manifest:
    """Check a checkpoint without building the real model (cheap): the manifest, the weights'
    size and sha256, that they are finite, and that names and shapes match the architecture.
    Returns the manifest."""
    folder = Path(path)
    manifest = read_manifest(folder)
    state = read_verified_weights(folder, manifest)
    check_finite_weights(state, folder / WEIGHTS_FILE)
    _check_matches_architecture(
        state, manifest.family, manifest.architecture, folder / WEIGHTS_FILE
    )
    return manifest


def read_manifest(folder: Path | str) -> Manifest:
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(folder, "not a checkpoint folder (no such directory)")
    manifest_path = folder / MANIFEST_FILE
    try:
        text = manifest_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(manifest_path, "missing") from None
    except UnicodeDecodeError as error:
        raise CheckpointError(manifest_path, f"not UTF-8 text: {error}") from None
    return Manifest.from_json(text, manifest_path)


def read_verified_weights(folder: Path | str, manifest: Manifest) -> dict[str, Tensor]:
    """The weights as CPU tensors, after their size and sha256 matched the manifest's."""
    weights_path = Path(folder) / WEIGHTS_FILE
    try:
        data = weights_path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(weights_path, "missing") from None
    if len(data) != manifest.weights_size:
        raise CheckpointError(
            weights_path,
            f"file is {len(data)} bytes but the manifest says {manifest.weights_size}: "
            "truncated or replaced (sha256 cannot match)",
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.weights_sha256:
        raise CheckpointError(
            weights_path,
            f"sha256 mismatch: file has {digest}, manifest says {manifest.weights_sha256}: "
            "the weights were altered or corrupted",
        )
    try:
        return safetensors.torch.load(data)
    except Exception as error:  # safetensors raises its own error types for bad headers
        raise CheckpointError(weights_path, f"not a readable safetensors file: {error}") from None


def write_folder_atomically(
    target: Path,
    files: dict[str, bytes],
    check: Callable[[Path], object] | None = None,
) -> None:
    """Create the folder `target` holding `files`, all at once: written and fsynced in a hidden
    temporary folder in the same parent, checked by `check(folder)` if given, then renamed.
    On any failure nothing is left behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
    temporary.mkdir()
    try:
        for name, content in files.items():
            _write_synced(temporary / name, content)
        _fsync_directory(temporary)
        if check is not None:
            check(temporary)
        _rename_no_replace(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    _fsync_directory(target.parent)  # makes the rename itself durable


def _rename_no_replace(source: Path, target: Path) -> None:
    if target.exists():
        raise FileExistsError(f"{target}: already exists; checkpoints are never overwritten")
    try:
        os.rename(source, target)
    except OSError as error:
        # A concurrent writer won the race: rename() refuses a non-empty target folder.
        if error.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise FileExistsError(f"{target}: already exists") from error
        raise


def _write_synced(path: Path, content: bytes) -> None:
    with open(path, "xb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _build(manifest: Manifest, where: Path) -> nn.Module:
    try:
        return build_model(manifest.family, manifest.architecture)
    except (KeyError, ValueError, TypeError) as error:
        raise CheckpointError(
            where, f"cannot build family {manifest.family!r} from the manifest: {error}"
        ) from None


def _check_matches_architecture(
    state: dict[str, Tensor], family: str, architecture: dict[str, Any], where: Path
) -> None:
    """Compare names and shapes with the model family + architecture builds on the meta device
    (no memory, no initialisation cost)."""
    try:
        with torch.device("meta"):
            reference = build_model(family, architecture)
    except (KeyError, ValueError, TypeError) as error:
        raise CheckpointError(
            where, f"cannot build family {family!r} from the architecture: {error}"
        ) from None
    _raise_on_mismatch(_shapes(state), _shapes(reference.state_dict()), where)


def _shapes(state: dict[str, Tensor]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in state.items()}


def _raise_on_mismatch(
    found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], where: Path
) -> None:
    problems = describe_mismatch(found, expected)
    if problems:
        raise CheckpointError(where, "does not match the manifest's architecture: " + problems)


def describe_mismatch(
    found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]
) -> str:
    """'' when names and shapes agree, else a short account of the differences."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    reshaped = sorted(
        f"{name} {found[name]} != {expected[name]}"
        for name in set(found) & set(expected)
        if found[name] != expected[name]
    )
    parts = [
        _listing(label, items)
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", reshaped),
        )
        if items
    ]
    return "; ".join(parts)


def _listing(label: str, items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"{label} {len(items)}: {shown}{more}"
