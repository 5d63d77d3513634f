"""Import a published checkpoint file into a store: `vidserve checkpoints import FILE`.

1. Read it: `.safetensors` directly; `.pth` / `.pt` (anything else) with torch.load
   weights_only=True, which rebuilds only tensors and plain containers. A file that needs other
   pickled objects is refused (PickleRequiredError) unless the caller allows pickle: unpickling
   runs whatever code the file names.
2. Recognise its format by its entry names (models.checkpoints.public_formats): the format
   sharing the most names; too few shared is an UnknownLayoutError naming the nearest format
   and some missing and unexpected entries.
3. Convert it to our layout and write a store entry (safetensors + manifest, atomically, through
   CheckpointStore.publish), then verify the entry as a loader would (size, sha256, finite
   weights, names and shapes against the manifest's architecture).
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor, nn

from models.checkpoints.checkpoint import verify_checkpoint
from models.checkpoints.convert import load_error_reason, tensors_only, unwrap_state_dict
from models.checkpoints.errors import CheckpointError
from models.checkpoints.manifest import Manifest
from models.checkpoints.public_formats import FORMATS, Converted, PublicFormat
from models.checkpoints.registry import build_model
from models.checkpoints.store import CheckpointStore

SAFETENSORS_SUFFIX = ".safetensors"
# Share of a format's entry names a file must hold to be taken for that format (below it, the
# file is an unknown layout; at or above it, the converter lists what differs).
RECOGNISED_SHARE = 0.5
_CHUNK = 8 * 1024 * 1024
_LISTED = 5

PhaseCallback = Callable[[str], None]
BytesCallback = Callable[[int, int], None]  # (bytes read so far, total)


class PickleRequiredError(CheckpointError):
    """The file holds pickled objects other than tensors; loading it runs arbitrary code."""


class UnknownLayoutError(CheckpointError):
    """The file's entries are no format we know."""


@dataclass
class WeightsFile:
    state: dict[str, Tensor]
    meta: Mapping[str, Any]  # an mmcv checkpoint's 'meta' (plain data), else {}
    sha256: str
    size: int


@dataclass
class ImportResult:
    format: PublicFormat
    manifest: Manifest
    path: Path
    name: str
    parameters: int
    source_sha256: str


def import_checkpoint(
    source: Path | str,
    store: Path | str,
    *,
    name: str | None = None,
    version: str | None = None,
    allow_pickle: bool = False,
    on_phase: PhaseCallback | None = None,
    on_bytes: BytesCallback | None = None,
) -> ImportResult:
    """Read `source`, recognise and convert it, and publish it as <family>/<name>/<version> in
    `store` (name: the format's default; version: the UTC time, e.g. 20261202T153000Z)."""
    source = Path(source)
    phase = on_phase or (lambda _text: None)
    if source.is_file():
        phase(f"reading {source.name} ({source.stat().st_size / 1e6:.1f} MB)")
    weights = read_weights_file(source, allow_pickle=allow_pickle, on_bytes=on_bytes)
    found = detect_format(weights.state, source)
    phase(f"recognised {found.title}; converting")
    converted = found.convert(weights.state, weights.meta, source)
    model = _model_with(found.family, converted, source)
    name = name or found.default_name
    version = version or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    phase(f"writing {found.family}/{name}/{version}")
    path = CheckpointStore(store).publish(
        model,
        family=found.family,
        name=name,
        version=version,
        architecture=converted.architecture,
        class_names=converted.class_names,
        dataset_fingerprint=found.dataset_fingerprint,
        training={
            "imported_from": source.name,
            "source_sha256": weights.sha256,
            "format": found.key,
            "source": found.title,
            **converted.notes,
        },
    )
    phase("verifying the written entry")
    manifest = verify_checkpoint(path)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    return ImportResult(found, manifest, path, name, parameters, weights.sha256)


def read_weights_file(
    path: Path | str, *, allow_pickle: bool = False, on_bytes: BytesCallback | None = None
) -> WeightsFile:
    """The tensors of a .safetensors or PyTorch file (a state dict, or one inside a common
    wrapper such as mmcv's {'meta', 'state_dict'}), on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such file")
    digest, size = _sha256(path, on_bytes)
    if path.suffix == SAFETENSORS_SUFFIX:
        return WeightsFile(_load_safetensors(path), {}, digest, size)
    loaded = _torch_load(path, allow_pickle)
    state = tensors_only(unwrap_state_dict(loaded, path), path)
    meta = loaded.get("meta") if isinstance(loaded, Mapping) else None
    return WeightsFile(state, meta if isinstance(meta, Mapping) else {}, digest, size)


def detect_format(state: Mapping[str, Tensor], path: Path | str = "<state dict>") -> PublicFormat:
    """The format whose entry names the file shares most; UnknownLayoutError when it shares
    less than RECOGNISED_SHARE of them."""
    if not state:
        raise UnknownLayoutError(path, "no tensors in the file")
    scored = [(_share(fmt, state), fmt) for fmt in FORMATS]
    share, nearest = max(scored, key=lambda scored_format: scored_format[0])
    if share >= RECOGNISED_SHARE:
        return nearest
    raise UnknownLayoutError(path, _unknown_layout_message(nearest, share, state))


def _share(fmt: PublicFormat, state: Mapping[str, Tensor]) -> float:
    expected = fmt.expected_keys()
    names = {fmt.normalise(name) for name in state}
    return len(names & expected) / len(expected)


def _unknown_layout_message(
    nearest: PublicFormat, share: float, state: Mapping[str, Tensor]
) -> str:
    expected = nearest.expected_keys()
    names = {nearest.normalise(name) for name in state}
    missing = sorted(name for name in expected - names if not nearest.optional(name))
    unexpected = sorted(names - expected)
    known = ", ".join(fmt.key for fmt in FORMATS)
    return (
        f"unknown key layout ({len(state)} entries): it is none of the formats read here "
        f"({known}). Nearest: {nearest.title}, sharing {share:.0%} of its entry names; "
        f"{_listing('missing', missing)}; {_listing('unexpected', unexpected)}"
    )


def _listing(label: str, names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED]) or "none"
    more = f" and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
    return f"{label} {len(names)}: {shown}{more}"


def _model_with(family: str, converted: Converted, path: Path) -> nn.Module:
    """The family's model holding the converted tensors themselves (built on the meta device and
    given them: no initialisation to throw away), key for key; the submodules the file has no
    weights for are initialised as a new model's are."""
    with torch.device("meta"):
        model = build_model(family, converted.architecture)
    result = model.load_state_dict(converted.state, strict=False, assign=True)
    not_initialised = [
        name
        for name in result.missing_keys
        if not any(name.startswith(f"{prefix}.") for prefix in converted.initialised)
    ]
    if not_initialised or result.unexpected_keys:
        raise CheckpointError(
            path,
            f"converted weights do not fit: {_listing('missing', not_initialised)}; "
            f"{_listing('unexpected', result.unexpected_keys)}",
        )
    for prefix in converted.initialised:
        _initialise(model.get_submodule(prefix))
    return model.eval()


def _initialise(module: nn.Module) -> None:
    module.to_empty(device="cpu")
    for layer in module.modules():
        reset = getattr(layer, "reset_parameters", None)
        if callable(reset):
            reset()


def _sha256(path: Path, on_bytes: BytesCallback | None) -> tuple[str, int]:
    total = path.stat().st_size
    digest = hashlib.sha256()
    done = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if on_bytes is not None:
                on_bytes(done, total)
    return digest.hexdigest(), total


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return safetensors.torch.load_file(path, device="cpu")
    except Exception as error:  # safetensors raises its own error types for bad headers
        raise CheckpointError(path, f"not a readable safetensors file: {error}") from None


def _torch_load(path: Path, allow_pickle: bool) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = load_error_reason(error)
        if "Unsupported global" not in reason:
            raise CheckpointError(path, f"not a readable PyTorch file: {reason}") from None
        if not allow_pickle:
            raise PickleRequiredError(path, _pickle_refusal(reason)) from None
    except Exception as error:  # a damaged file fails in the zip reader or the unpickler
        raise CheckpointError(
            path, f"not a readable PyTorch file (corrupt or truncated?): {load_error_reason(error)}"
        ) from None
    return _torch_load_with_pickle(path)


def _pickle_refusal(reason: str) -> str:
    refused = reason.split("Unsupported global:", 1)[-1].split(" was not", 1)[0].strip()
    return (
        f"refused: the file holds pickled Python objects besides tensors ({refused}), which "
        "torch.load(weights_only=True) will not build. Loading them means unpickling, and "
        "unpickling runs whatever code the file names: only for a file from a source you trust, "
        "import it again with --allow-pickle"
    )


def _torch_load_with_pickle(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as error:
        raise CheckpointError(
            path, f"unpickling needs the Python module {error.name!r}, not installed here"
        ) from None
    except Exception as error:
        raise CheckpointError(path, f"cannot be unpickled: {load_error_reason(error)}") from None
