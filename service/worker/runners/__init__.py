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
    checkpoint: Path | str,
    name: str,
    device: str | torch.device = "cpu",
    served: Callable[[str], ModelRunner | None] = lambda name: None,
) -> list[ModelRunner]:
    """Load a checkpoint folder (verified: sha256, architecture) as the runners of its family:
    the model `name`, for some families more views of the same weights, and the registered
    pipelines that start with one of them.

    A checkpoint may instead be a later stage of a pipeline (an action head): its family
    registers the pipeline, which is built here over the first stage that `served(name)` gives
    (the worker's, or one loaded from the store); with none served yet it is built when the
    first stage loads."""
    from models.checkpoints.checkpoint import load_checkpoint
    from service.worker.pipeline import build_pipeline, pipelines_over, registered_pipelines

    loaded = load_checkpoint(checkpoint, device)
    try:
        factory = runner_factory(loaded.manifest.family)
    except ValueError as error:
        raise ValueError(f"{checkpoint}: {error}") from None
    before = registered_pipelines()
    runners = factory(loaded, name)
    pipelines = pipelines_over(runners)
    own = {r.info.name for r in runners}
    for spec in registered_pipelines().values():
        if before.get(spec.name) is spec or spec.first in own:
            continue  # not registered by this checkpoint, or already built above
        first = served(spec.first)
        if first is not None:
            pipelines.append(build_pipeline(spec, first))
    return runners + pipelines


def load_runner_from_store(
    store: Path | str, name: str, device: str | torch.device = "auto"
) -> ModelRunner:
    """The newest version of model `name` in the store (whatever its family; a pipeline's first
    stage is loaded from the store as well)."""
    from models.checkpoints.store import CheckpointStore
    from service.settings import resolve_device

    found = CheckpointStore(store)
    device = resolve_device(str(device))

    def first_stage(first: str) -> ModelRunner | None:
        try:
            return load_runner_from_store(store, first, device)
        except LookupError:
            return None

    for family in found.families():
        for stored in found.names(family):
            if name == stored or name.startswith(f"{stored}-"):
                runners = load_runners(found.latest(family, stored), stored, device, first_stage)
                for runner in runners:
                    if runner.info.name == name:
                        return runner
    raise LookupError(f"no model '{name}' in the checkpoint store {store}")
