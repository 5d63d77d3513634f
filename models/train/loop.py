"""The training loop every family's trainer shares: steps, progress, resumable state.

A trainer supplies the model, the optimiser and a function that turns one batch into a dict of
losses; the loop sums them, steps, shows progress (loss, it/s, ETA) and saves its state every few
steps so that `--resume` continues where a run stopped. The state file is read back with
`weights_only=True`: it holds tensors and numbers only, never pickled objects.
"""

import logging
import math
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from models.checkpoints.checkpoint import load_weights_into
from models.train.distributed import current_ranks, mean_over_ranks, training_step

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
    loss_log: Path | None = None  # "step<TAB>loss" a line, full precision; None: not written
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


@dataclass(kw_only=True)
class TrainRun:
    """What every family's training job is told: its data, where to publish, how to validate,
    how long and how fast to train, and whether to resume. A family's config adds its own."""

    data: Path
    store: Path
    name: str  # the model's name in the store
    work_dir: Path  # resumable state
    split: str = "train"
    val: Path | None = None  # a held-out dataset; None: hold out val_videos of `data`
    val_split: str = "val"
    val_videos: int = 4
    iters: int = 3000
    batch_size: int = 4
    lr: float = 2e-3
    seed: int = 0
    resume: bool = False
    init: Path | None = None  # a published checkpoint whose weights the run starts from
    also_data: tuple[Path, ...] = ()  # more datasets of the same kind trained on with `data`
    redis_url: str | None = None  # announce the published checkpoint to running workers
    model_overrides: dict = field(default_factory=dict)  # fields of the family's small config
    show_progress: bool = True

    def hold_out(self, videos: list) -> tuple[list, list]:
        """(training, validation) videos when no --val set is given: the last val_videos,
        or none when that would leave nothing to train on."""
        held = self.val_videos if len(videos) > self.val_videos else 0
        cut = len(videos) - held
        return videos[:cut], videos[cut:]


def start_from_init(
    network: torch.nn.Module, run: TrainRun, family: str, class_names: list[str] | None = None
) -> None:
    """Load run.init's weights into `network` (fine-tuning; nothing without --init), refusing a
    checkpoint whose classes are not the data's (`class_names`; None: not checked)."""
    if run.init is None:
        return
    manifest = load_weights_into(network, run.init, family)
    if class_names is not None and manifest.class_names != class_names:
        raise ValueError(
            f"{run.init}: categories {manifest.class_names} differ from the data's {class_names}"
        )
    log.info("starting from the weights of %s", run.init)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_run(
    model: torch.nn.Module, run: TrainRun
) -> tuple[LoopConfig, torch.optim.Optimizer, int]:
    """What every trainer starts with: the loop's settings (warm-up over a tenth of the run, at
    most 200 steps; state in work_dir/train_state.pt), the optimiser, and the step to start from,
    which is the saved one when resuming from a state that exists, else 0."""
    cfg = LoopConfig(
        steps=run.iters,
        lr=run.lr,
        warmup_steps=min(200, run.iters // 10 + 1),
        state_path=Path(run.work_dir) / "train_state.pt",
        loss_log=Path(run.work_dir) / "losses.tsv",
        show_progress=run.show_progress,
    )
    optimizer = make_optimizer(model, cfg)
    start = 0
    if run.resume and cfg.state_path.is_file():
        start = load_state(cfg.state_path, model, optimizer)
        log.info("resuming from step %d of %s", start, cfg.state_path)
    return cfg, optimizer, start


def command_line() -> str:
    """The vidserve command this process runs, as a manifest records it."""
    return " ".join(["vidserve", *sys.argv[1:]]) if sys.argv else ""


def training_record(
    result: LoopResult, start: int, model: torch.nn.Module, run: TrainRun, **settings
) -> dict:
    """The manifest's `training` entry: the command line, the run's seed, steps, batch and
    learning rate, a family's own `settings`, and what every family records of the run (its
    seconds, where it resumed, its final loss, device, threads)."""
    return {
        "command": command_line(),
        "seed": run.seed,
        "iters": run.iters,
        "batch_size": run.batch_size,
        "lr": run.lr,
        **settings,
        "seconds_this_run": round(result.seconds, 1),
        "resumed_from_step": start,
        "final_loss": mean_tail(result.loss_history),
        "device": str(next(model.parameters()).device),
        "torch_threads": torch.get_num_threads(),
    }


def source_record(run: TrainRun) -> dict:
    """What the training record adds for a run that mixes datasets or fine-tunes (nothing
    for a plain run, whose record stays as it was)."""
    record: dict = {}
    if run.also_data:
        record["data"] = [str(p) for p in (run.data, *run.also_data)]
    if run.init is not None:
        record["init"] = str(run.init)
    return record


def republish(
    store: Path,
    redis_url: str | None,
    source,
    model: torch.nn.Module,
    architecture: dict,
    note: str,
    changed: dict,
    metrics: dict | None = None,
    **record,
) -> Path:
    """Publish the weights of a loaded checkpoint (`source`) again, under a changed inference
    setting, as a new version of the same name: the manifest keeps how they were trained and
    adds, under `note`, the command, the version they come from, what `changed` (name ->
    [before, after]) and `record`. `metrics`: re-measured ones (default: the source's)."""
    manifest = source.manifest
    return publish_run(
        store,
        redis_url,
        model,
        manifest.family,
        Path(source.path).parent.name,
        architecture=architecture,
        class_names=manifest.class_names,
        metrics=manifest.metrics if metrics is None else metrics,
        dataset_fingerprint=manifest.dataset_fingerprint,
        training={
            **manifest.training,
            note: {
                "command": command_line(),
                "from_version": manifest.version,
                "changed": changed,
                **record,
            },
        },
    )


def publish_run(
    store: Path, redis_url: str | None, model: torch.nn.Module, family: str, name: str, **manifest
) -> Path:
    """What every trainer ends with: publish the model as a new version (now, UTC) to the
    store and, with a Redis URL, announce it to running workers. Returns the version folder."""
    from models.checkpoints.store import CheckpointStore
    from models.train.announce import announce_checkpoint

    checkpoints = CheckpointStore(store)
    version = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    # Two runs published within one second (a retune right after its training) would share a
    # version: wait for the next second, so versions stay timestamps that grow.
    while checkpoints.path(family, name, version).exists():
        time.sleep(0.1)
        version = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    folder = checkpoints.publish(model, family=family, name=name, version=version, **manifest)
    if redis_url:
        announce_checkpoint(redis_url, family, name, version, folder)
    return folder


def mean_tail(history: list[float], n: int = 50) -> float | None:
    """The mean of the last n losses (None for no steps)."""
    return round(float(np.mean(history[-n:])), 4) if history else None


def save_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, tmp
    )
    tmp.replace(path)  # atomic: a crash mid-save keeps the previous state


def load_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Restore model and optimiser from a state file; returns the step to continue from.

    A saved optimiser holds the rate of the step it stopped at (base x schedule factor); the
    schedule's base is its groups' `initial_lr`. A state written before that was saved gets
    the optimiser's configured rate as its base, not the scheduled one (which would compound
    the schedule: a base of 1.0 resumed as 0.76)."""
    configured = [group["lr"] for group in optimizer.param_groups]
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    for group, lr in zip(optimizer.param_groups, configured, strict=True):
        group.setdefault("initial_lr", lr)
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
    """Train from `start_step` to `cfg.steps`, drawing one batch per step from `batches`.

    Step s runs at initial_lr x cosine_with_warmup(s): each group's `initial_lr` (set here from
    its rate when absent, as torch's schedulers do) is the base, saved with the optimiser, so a
    resumed run follows the same rates as one that never stopped.

    Under torchrun (models.train.distributed) each rank computes the loss of its shard through
    DDP, which averages the gradients; the loss shown, logged and returned is the global batch's
    (the mean over ranks), and only rank 0 shows progress and writes the state and loss log."""
    base_lrs = [g.setdefault("initial_lr", g["lr"]) for g in optimizer.param_groups]
    main = current_ranks().is_main
    compute_losses = training_step(model, loss_fn)
    loss_log = _open_loss_log(cfg.loss_log, start_step) if main else None
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
    with Progress(*columns, disable=not (cfg.show_progress and main)) as progress:
        task = progress.add_task(
            description, total=cfg.steps, completed=start_step, loss=float("nan"), rate=0.0
        )
        for step in range(start_step, cfg.steps):
            factor = cosine_with_warmup(step, cfg.steps, cfg.warmup_steps)
            for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = base * factor
            losses = compute_losses(next(batches))
            total = sum(losses.values())
            # Every rank checks the same global value, so all stop together.
            global_total = float(mean_over_ranks(total.detach()))
            if not math.isfinite(global_total):
                raise FloatingPointError(f"step {step}: loss is {global_total} ({_fmt(losses)})")
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            result.loss_history.append(global_total)
            if loss_log:
                loss_log.write(f"{step}\t{global_total!r}\n")
                loss_log.flush()
            result.steps_done = step + 1
            elapsed = time.monotonic() - started
            progress.update(
                task,
                advance=1,
                loss=result.loss_history[-1],
                rate=(step + 1 - start_step) / max(elapsed, 1e-9),
            )
            if main and cfg.log_every and (step + 1) % cfg.log_every == 0:
                log.info(
                    "%s step %d/%d loss %.4f (%s) %.2f it/s",
                    description,
                    step + 1,
                    cfg.steps,
                    result.loss_history[-1],
                    _fmt(losses),
                    (step + 1 - start_step) / max(elapsed, 1e-9),
                )
            if main and cfg.state_path and (step + 1) % cfg.save_every == 0:
                save_state(cfg.state_path, model, optimizer, step + 1)
    result.seconds = time.monotonic() - started
    if loss_log:
        loss_log.close()
    if main and cfg.state_path:
        save_state(cfg.state_path, model, optimizer, result.steps_done)
    for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
        group["lr"] = base
    return result


def _open_loss_log(path: Path | None, start_step: int):
    """The loss log opened for appending, its lines of steps from `start_step` on dropped (a
    resumed run writes them again); None for no log."""
    if path is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = []
    if start_step and path.is_file():
        kept = [
            line for line in path.read_text().splitlines() if int(line.split("\t")[0]) < start_step
        ]
    path.write_text("".join(f"{line}\n" for line in kept))
    return path.open("a")


def batch_stream(
    dataset,
    collate: Callable[[list], object],
    run: TrainRun,
    start_step: int,
    *,
    rng_owner=None,
    loader_workers: int = 0,
) -> Iterator:
    """This process's batches from `start_step` on, as `Drawn` (the collated batch and each
    sample's draw number): its shard of the run's global batches (the whole batch in one
    process), each sample's augmentation seeded by its draw (models.train.distributed).
    `rng_owner` is the object whose `rng` the samples draw from (default: the dataset)."""
    from torch.utils.data import DataLoader

    from models.train.distributed import GlobalBatches, SeededDraws, collate_draws

    batches = GlobalBatches(len(dataset), run.batch_size, run.seed, current_ranks(), start_step)
    loader = DataLoader(
        SeededDraws(dataset, run.seed, rng_owner),
        batch_sampler=batches,
        collate_fn=collate_draws(collate),
        num_workers=loader_workers,
    )
    return iter(loader)


def _fmt(losses: dict[str, torch.Tensor]) -> str:
    return ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
