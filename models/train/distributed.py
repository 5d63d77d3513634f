"""Training under `torchrun`: DistributedDataParallel, as the reference repositories train.

Run plainly, a trainer is one process and nothing here changes it. Started by `torchrun
--nproc-per-node N`, each process reads its rank from the environment (RANK, WORLD_SIZE,
LOCAL_RANK), joins the process group (NCCL on GPUs, gloo on CPUs), and trains its shard of every
global batch: the batch the single-process run draws for that step, split in N contiguous parts.
DDP averages the gradients, so N processes take the step one process takes on the whole batch.

What makes the two runs agree step for step:
- the global batch of step s is a function of (seed, s) alone (`GlobalBatches`), and each
  sample's augmentation draws are seeded by its place in the stream (`SeededDraws`), not by
  how many samples this process happened to load before it;
- batch norms in training mode take their statistics over the whole global batch
  (`sync_batchnorm`), not over a rank's shard;
- only rank 0 shows progress, writes the resumable state, validates and publishes; the others
  wait for it at a barrier (`on_main_rank`).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

# Ranks other than 0 wait at a barrier while rank 0 validates and publishes; on a real dataset
# validation takes long, far past the 10-30 minutes that the backends time out after by default.
GROUP_TIMEOUT = datetime.timedelta(hours=4)


@dataclass(frozen=True)
class Ranks:
    """Where this process stands: rank 0 of 1 when run plainly."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def torchrun_ranks(environ: dict[str, str] | None = None) -> Ranks:
    """The ranks torchrun put in the environment; one process without them."""
    environ = os.environ if environ is None else environ
    if "RANK" not in environ or "WORLD_SIZE" not in environ:
        return Ranks()
    return Ranks(
        rank=int(environ["RANK"]),
        world=int(environ["WORLD_SIZE"]),
        local_rank=int(environ.get("LOCAL_RANK", 0)),
    )


def current_ranks() -> Ranks:
    """The ranks of the process group this process is in (one process when none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Ranks()
    return (
        torchrun_ranks() if "RANK" in os.environ else Ranks(dist.get_rank(), dist.get_world_size())
    )


def training_device(ranks: Ranks) -> torch.device | None:
    """The GPU of this rank under torchrun when there are GPUs; None: leave the model where it
    is (a plain run trains where it always did)."""
    if ranks.distributed and torch.cuda.is_available():
        return torch.device("cuda", ranks.local_rank)
    return None


@contextlib.contextmanager
def process_group() -> Iterator[Ranks]:
    """Join torchrun's process group for a training job (NCCL on GPUs, gloo on CPUs) and leave
    it afterwards. Plainly run, or inside a group someone else started, it only says the ranks."""
    ranks = torchrun_ranks()
    if not ranks.distributed or dist.is_initialized():
        yield current_ranks()
        return
    device = training_device(ranks)
    if device is not None:
        torch.cuda.set_device(device)
    backend = "nccl" if device is not None else "gloo"
    dist.init_process_group(backend, timeout=GROUP_TIMEOUT, device_id=device)
    try:
        yield ranks
    finally:
        dist.destroy_process_group()


def on_main_rank(work: Callable[[], Any]) -> Any:
    """Run `work` (validate, publish, announce) on rank 0 only; every rank then meets at a
    barrier, so that no process leaves the group while rank 0 still needs it. Returns what
    `work` returned on rank 0, None on the others."""
    ranks = current_ranks()
    result = work() if ranks.is_main else None
    if ranks.distributed:
        dist.barrier()
    return result


def check_batch_splits(batch_size: int, ranks: Ranks) -> None:
    if batch_size % ranks.world:
        raise ValueError(
            f"the global batch of {batch_size} does not split evenly over {ranks.world} "
            "processes: pass a --batch-size that is a multiple of the process count"
        )


class GlobalBatches:
    """The batches of a run, step by step, as (draw, index) keys: draw is the sample's place in
    the run's stream of samples (step x batch + position), index the dataset item.

    Epoch e visits the items in the order of a permutation seeded by (seed, e), in batches of
    `batch_size` (the rest of the epoch is dropped; a dataset smaller than a batch gives batches
    of all its items). Step s's batch depends on (seed, s) alone: a resumed run draws the batches
    the uninterrupted one would have, and each rank takes its contiguous shard of the same batch.
    Usable as a DataLoader's batch_sampler; it never ends.
    """

    def __init__(self, items: int, batch_size: int, seed: int, ranks: Ranks, start_step: int = 0):
        if items < 1:
            raise ValueError("nothing to train on")
        self.items = items
        self.batch_size = min(batch_size, items)
        check_batch_splits(self.batch_size, ranks)
        self.seed = seed
        self.ranks = ranks
        self.start_step = start_step

    def global_batch(self, step: int) -> list[tuple[int, int]]:
        per_epoch = self.items // self.batch_size
        epoch, position = divmod(step, per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.items)
        first = position * self.batch_size
        indices = order[first : first + self.batch_size]
        return [(step * self.batch_size + k, int(i)) for k, i in enumerate(indices)]

    def shard(self, step: int) -> list[tuple[int, int]]:
        """This rank's part of step's global batch."""
        keys = self.global_batch(step)
        size = len(keys) // self.ranks.world
        return keys[self.ranks.rank * size : (self.ranks.rank + 1) * size]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while True:
            yield self.shard(step)
            step += 1


@dataclass
class Drawn:
    """A collated batch and the draw number of each of its samples."""

    draws: list[int]
    batch: Any


class SeededDraws(Dataset):
    """A dataset whose samples draw their augmentation from `rng_owner.rng` (a numpy Generator),
    read by (draw, index) keys: each sample's generator is seeded by (seed, draw), so a sample
    is the same whichever process loads it and whatever that process loaded before."""

    def __init__(self, dataset: Dataset, seed: int, rng_owner: Any = None):
        self.dataset = dataset
        self.seed = seed
        self.rng_owner = dataset if rng_owner is None else rng_owner

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[int, Any]:
        draw, index = key
        self.rng_owner.rng = np.random.default_rng([self.seed, draw])
        return draw, self.dataset[index]


def collate_draws(collate: Callable[[list], Any]) -> Callable[[list[tuple[int, Any]]], Drawn]:
    def collated(samples: list[tuple[int, Any]]) -> Drawn:
        return Drawn([draw for draw, _ in samples], collate([sample for _, sample in samples]))

    return collated


def sample_seed(seed: int, draw: int) -> int:
    """A torch seed for the random choices a model makes for one sample (e.g. which anchors a
    detector samples), the same in every process that trains that sample."""
    return int(np.random.default_rng([seed, draw, 1]).integers(2**62))


class _SumOverRanks(torch.autograd.Function):
    """The sum of a tensor over the ranks; its gradient is the sum of the ranks' gradients (each
    rank's loss depends on every rank's input through the sum)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    return _SumOverRanks.apply(tensor)


class SyncedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the whole global batch: sums over
    every rank's shard (all-reduced with autograd, so the gradient flows to each rank's inputs
    as it would in one process). torch's SyncBatchNorm needs a GPU; this also runs on gloo.
    Outside a process group, or in eval mode, it is a plain BatchNorm2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not (dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        dims = [0, 2, 3]
        count = torch.tensor(float(x.numel() // x.shape[1]), device=x.device)
        count = sum_over_ranks(count)  # shards are equal today; counted all the same
        mean = sum_over_ranks(x.sum(dims)) / count
        centred = x - mean.view(1, -1, 1, 1)
        # Two passes (mean, then squared deviations), as torch's batch norm: E[x^2] - E[x]^2
        # loses digits when activations sit far from zero.
        var = sum_over_ranks(centred.square().sum(dims)) / count
        self._update_running_stats(mean.detach(), var.detach(), count)
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight
        out = centred * scale.view(1, -1, 1, 1)
        return out + self.bias.view(1, -1, 1, 1) if self.affine else out

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor):
        if not self.track_running_stats:
            return
        self.num_batches_tracked += 1
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * count / (count - 1).clamp(min=1)
        self.running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
        self.running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)


def sync_batchnorm(model: nn.Module) -> int:
    """Make the model's BatchNorm2d layers take global-batch statistics under DDP; returns how
    many. The layers change class in place, keeping their parameters and buffers (the optimiser
    already holds them) and their names (checkpoints read as before)."""
    layers = [m for m in model.modules() if type(m) is nn.BatchNorm2d]
    for layer in layers:
        layer.__class__ = SyncedBatchNorm2d
    return len(layers)


class TrainingStep(nn.Module):
    """A model and its loss as one module, so that DDP's forward (which prepares the gradient
    averaging) is the loss computation, whichever method of the model that calls."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[Any], dict[str, torch.Tensor]]):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        return self.loss_fn(batch)


def training_step(
    model: nn.Module, loss_fn: Callable[[Any], dict[str, torch.Tensor]]
) -> Callable[[Any], dict[str, torch.Tensor]]:
    """The loss function to train with: itself in one process, under DDP across ranks."""
    ranks = current_ranks()
    if not ranks.distributed:
        return loss_fn
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    device_ids = [device.index] if device.type == "cuda" else None
    # Some parameters get no gradient on some steps (a head with no sampled positives).
    return DistributedDataParallel(
        TrainingStep(model, loss_fn), device_ids=device_ids, find_unused_parameters=True
    )


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a (detached) scalar over the ranks: each rank's loss is the mean of its equal
    shard, so this is the loss of the global batch."""
    ranks = current_ranks()
    if not ranks.distributed:
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total / ranks.world


def prepare_model(model: nn.Module, *, synced_batchnorm: bool) -> nn.Module:
    """Under torchrun: the model on this rank's device, with global-batch batch norms if asked.
    A plain run gets the model back unchanged."""
    ranks = current_ranks()
    if not ranks.distributed:
        return model
    device = training_device(ranks)
    if device is not None:
        model = model.to(device)
    if synced_batchnorm:
        sync_batchnorm(model)
    return model
