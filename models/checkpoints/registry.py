"""Family name -> builder(architecture dict) -> nn.Module, so that loading stays family-agnostic.

A family registers itself when its package is imported (models/vis/__init__.py registers "vis").
get_builder() imports `models.<family>` on first use, so a loader needs nothing but the name
written in the manifest.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from torch import nn

Builder = Callable[[dict[str, Any]], nn.Module]
# A probe runs one forward pass of a loaded model (eval mode) on a probe frame of its input size
# and returns what it computed; loading checks that everything computed is finite
# (models.checkpoints.probe).
Probe = Callable[[nn.Module], Any]

_BUILDERS: dict[str, Builder] = {}
_PROBES: dict[str, Probe] = {}


def register_family(name: str, builder: Builder, probe: Probe | None = None) -> None:
    """Register (or replace) the builder of a family, and the probe that checks a loaded model
    of it computes finite numbers (none: its weights are checked only)."""
    if not name.isidentifier():
        raise ValueError(f"family names are identifiers (the package models/<name>), got {name!r}")
    _BUILDERS[name] = builder
    if probe is None:
        _PROBES.pop(name, None)
    else:
        _PROBES[name] = probe


def get_builder(name: str) -> Builder:
    if name not in _BUILDERS and name.isidentifier():
        try:
            importlib.import_module(f"models.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"models.{name}":
                raise  # the family's package exists but is itself broken: show that
    if name not in _BUILDERS:
        known = ", ".join(sorted(_BUILDERS)) or "none"
        raise KeyError(f"no builder for family {name!r} (registered: {known})")
    return _BUILDERS[name]


def get_probe(name: str) -> Probe | None:
    get_builder(name)  # imports the family's package, which registers its probe
    return _PROBES.get(name)


def build_model(family: str, architecture: dict[str, Any]) -> nn.Module:
    return get_builder(family)(architecture)


def registered_families() -> list[str]:
    return sorted(_BUILDERS)
