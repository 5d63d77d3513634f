"""Runners adapt a model family to the worker's interface; `load_runner` picks one by family."""

from pathlib import Path

import torch

from service.worker.runner import ModelRunner


def load_runners(
    checkpoint: Path | str, name: str, device: str | torch.device = "cpu"
) -> list[ModelRunner]:
    """Load a checkpoint folder (verified: sha256, architecture) as the runners of its family:
    the model `name`, and for some families a second view of the same weights."""
    from models.checkpoints.checkpoint import load_checkpoint

    loaded = load_checkpoint(checkpoint, device)
    family = loaded.manifest.family
    if family == "vis":
        from service.worker.runners.vis import FrameDetectorRunner, VisRunner

        return [
            VisRunner(loaded.model, loaded.manifest, name),
            FrameDetectorRunner(loaded.model, loaded.manifest, f"{name}-instance"),
        ]
    if family == "vos":
        from service.worker.runners.vos import VosRunner

        return [VosRunner(loaded.model, loaded.manifest, name)]
    raise ValueError(f"{checkpoint}: no runner serves the family '{family}' yet")


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
