"""manifest.json: what a checkpoint is, where it came from, and the hash of its weights."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models.checkpoints.errors import CheckpointError

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class Manifest:
    family: str  # registry name: "vis", ...
    architecture: dict[str, Any]  # the family's config dict; rebuilds the model
    class_names: list[str]  # class_names[label - 1] names label (1-based, 0 = background)
    version: str
    created_at: str  # UTC, ISO 8601
    metrics: dict[str, Any]  # on the validation set
    dataset_fingerprint: str
    weights_sha256: str
    weights_size: int  # bytes; tells a truncated file apart from a tampered one
    training: dict[str, Any] = field(default_factory=dict)  # command, seed, duration, ...
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        # allow_nan=False: NaN / inf are not JSON; better to fail at save than at load.
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str, path: Path | str = MANIFEST_FILE) -> Manifest:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise CheckpointError(path, f"manifest is not valid JSON: {error}") from None
        if not isinstance(data, dict):
            raise CheckpointError(path, "manifest must be a JSON object")
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: Path | str = MANIFEST_FILE) -> Manifest:
        format_version = data.get("format_version")
        if format_version != FORMAT_VERSION:
            raise CheckpointError(
                path, f"manifest format_version {format_version!r} is not {FORMAT_VERSION}"
            )
        fields = {f.name: f for f in dataclasses.fields(cls)}
        missing = sorted(name for name, f in fields.items() if name not in data and _required(f))
        if missing:
            raise CheckpointError(path, f"manifest lacks {', '.join(missing)}")
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise CheckpointError(path, f"manifest has unknown fields {', '.join(unknown)}")
        for name, expected in _FIELD_TYPES.items():
            if name in data and not _is_type(data[name], expected):
                raise CheckpointError(path, f"manifest field {name} must be {expected.__name__}")
        if not all(isinstance(name, str) for name in data["class_names"]):
            raise CheckpointError(path, "manifest class_names must be strings")
        return cls(**data)


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


_FIELD_TYPES: dict[str, type] = {
    "family": str,
    "architecture": dict,
    "class_names": list,
    "version": str,
    "created_at": str,
    "metrics": dict,
    "dataset_fingerprint": str,
    "weights_sha256": str,
    "weights_size": int,
    "training": dict,
    "format_version": int,
}


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _is_type(value: Any, expected: type) -> bool:
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)
