"""Runners adapt a model family to the worker's interface; one registry says which serves which.

A family's module here (`service/worker/runners/<family>.py`) is imported on first use and
registers the function that turns a loaded checkpoint into the runners it serves. Adding a family
adds a module and one `register_runners` call: no chain of ifs to extend.
"""

import importlib
from collections.abc import Callable
from pathlib import Path

import torch

from service.worker.runner import ModelRunner

RunnerFactory = Callable[[object, str], list[ModelRunner]]  # (LoadedCheckpoint, name) -> runners

_FACTORIES: dict[str, RunnerFactory] = {}


def register_runners(family: str, factory: RunnerFactory) -> None:
    _FACTORIES[family] = factory


def runner_factory(family: str) -> RunnerFactory:
    if family not in _FACTORIES and family.isidentifier():
        try:
            importlib.import_module(f"{__name__}.{family}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{family}":
                raise
    if family not in _FACTORIES:
        known = ", ".join(sorted(_FACTORIES)) or "none"
        raise ValueError(f"no runner serves the family '{family}' yet (served: {known})")
    return _FACTORIES[family]


def load_runners(
    checkpoint: Path | str, name: str, device: str | torch.device = "cpu"
) -> list[ModelRunner]:
    """Load a checkpoint folder (verified: sha256, architecture) as the runners of its family:
    the model `name`, for some families more views of the same weights, and the registered
    pipelines that start with one of them."""
    from models.checkpoints.checkpoint import load_checkpoint
    from service.worker.pipeline import pipelines_over

    loaded = load_checkpoint(checkpoint, device)
    try:
        factory = runner_factory(loaded.manifest.family)
    except ValueError as error:
        raise ValueError(f"{checkpoint}: {error}") from None
    runners = factory(loaded, name)
    return runners + pipelines_over(runners)


def load_runner_from_store(
    store: Path | str, name: str, device: str | torch.device = "auto"
) -> ModelRunner:
    """The newest version of model `name` in the store (whatever its family)."""
    from models.checkpoints.store import CheckpointStore
    from service.settings import resolve_device

    found = CheckpointStore(store)
    for family in found.families():
        for stored in found.names(family):
            if name == stored or name.startswith(f"{stored}-"):
                runners = load_runners(
                    found.latest(family, stored), stored, resolve_device(str(device))
                )
                for runner in runners:
                    if runner.info.name == name:
                        return runner
    raise LookupError(f"no model '{name}' in the checkpoint store {store}")
