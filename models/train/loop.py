"""The training loop every family's trainer shares: steps, progress, resumable state.

A trainer supplies the model, the optimiser and a function that turns one batch into a dict of
losses; the loop sums them, steps, shows progress (loss, it/s, ETA) and saves its state every few
steps so that `--resume` continues where a run stopped. The state file is read back with
`weights_only=True`: it holds tensors and numbers only, never pickled objects.
"""

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

log = logging.getLogger(__name__)

LossFn = Callable[[object], dict[str, torch.Tensor]]


@dataclass
class LoopConfig:
    steps: int
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    grad_clip: float = 10.0
    save_every: int = 200
    state_path: Path | None = None  # where the resumable state goes; None: not saved
    show_progress: bool = True
    log_every: int = 50  # also log loss and speed (for logs that are not a terminal)


@dataclass
class LoopResult:
    steps_done: int
    seconds: float
    loss_history: list[float] = field(default_factory=list)  # total loss per step of this run


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to 5% of the base rate."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: torch.nn.Module, cfg: LoopConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def save_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, tmp
    )
    tmp.replace(path)  # atomic: a crash mid-save keeps the previous state


def load_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Restore model and optimiser from a state file; returns the step to continue from."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])


def run_loop(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator,
    loss_fn: LossFn,
    cfg: LoopConfig,
    start_step: int = 0,
    description: str = "training",
) -> LoopResult:
    """Train from `start_step` to `cfg.steps`, drawing one batch per step from `batches`."""
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    model.train()
    result = LoopResult(steps_done=start_step, seconds=0.0)
    started = time.monotonic()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}  {task.fields[rate]:.2f} it/s"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not cfg.show_progress) as progress:
        task = progress.add_task(
            description, total=cfg.steps, completed=start_step, loss=float("nan"), rate=0.0
        )
        for step in range(start_step, cfg.steps):
            factor = cosine_with_warmup(step, cfg.steps, cfg.warmup_steps)
            for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = base * factor
            losses = loss_fn(next(batches))
            total = sum(losses.values())
            if not torch.isfinite(total):
                raise FloatingPointError(f"step {step}: loss is {total.item()} ({_fmt(losses)})")
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            result.loss_history.append(float(total.detach()))
            result.steps_done = step + 1
            elapsed = time.monotonic() - started
            progress.update(
                task,
                advance=1,
                loss=result.loss_history[-1],
                rate=(step + 1 - start_step) / max(elapsed, 1e-9),
            )
            if cfg.log_every and (step + 1) % cfg.log_every == 0:
                log.info(
                    "%s step %d/%d loss %.4f (%s) %.2f it/s",
                    description,
                    step + 1,
                    cfg.steps,
                    result.loss_history[-1],
                    _fmt(losses),
                    (step + 1 - start_step) / max(elapsed, 1e-9),
                )
            if cfg.state_path and (step + 1) % cfg.save_every == 0:
                save_state(cfg.state_path, model, optimizer, step + 1)
    result.seconds = time.monotonic() - started
    if cfg.state_path:
        save_state(cfg.state_path, model, optimizer, result.steps_done)
    for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
        group["lr"] = base
    return result


def forever(loader) -> Iterator:
    """Cycle through a DataLoader epoch after epoch (a new shuffle each time)."""
    while True:
        yield from loader


def _fmt(losses: dict[str, torch.Tensor]) -> str:
    return ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
