"""Architecture configs as manifest dicts: the to_dict/from_dict that every family's config shares.

A family's config is a frozen dataclass of plain fields (numbers, strings, booleans, tuples of
them, optionals). Its manifest form is JSON: tuples become lists. Reading one back is strict, as a
wrong or unknown key would silently build another architecture: unknown keys and values of the
wrong type are errors; missing keys take their defaults, so that manifests written before a field
was added keep loading.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Self


class ManifestConfig:
    """Mixin for a frozen dataclass config: to_dict() and from_dict()."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        return {
            field.name: list(value) if isinstance(value, tuple) else value
            for field in dataclasses.fields(self)
            for value in [getattr(self, field.name)]
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """The inverse of to_dict()."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys: {', '.join(unknown)}")
        hints = typing.get_type_hints(cls)
        return cls(**{name: coerce(name, value, hints[name]) for name, value in data.items()})


def coerce(name: str, value: Any, hint: Any) -> Any:
    """A JSON value as the field's type: lists become tuples, an int may stand for a float, a bool
    is never taken for a number."""
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{name} must be a list, got {type(value).__name__}")
        return tuple(coerce(name, item, typing.get_args(hint)[0]) for item in value)
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    allowed = typing.get_args(hint) if is_union else (hint,)  # `int | None` -> (int, NoneType)
    if value is None and type(None) in allowed:
        return None
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and bool not in allowed:
        raise ValueError(f"{name} must be {_type_name(hint)}, got bool")
    if not isinstance(value, tuple(t for t in allowed if isinstance(t, type))):
        raise ValueError(f"{name} must be {_type_name(hint)}, got {type(value).__name__}")
    return value


def require(condition: bool, message: str) -> None:
    """A config check: ValueError(message) unless condition holds."""
    if not condition:
        raise ValueError(message)


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint)
