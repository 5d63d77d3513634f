"""`vidserve train vos`: STCN on a DAVIS-format dataset (ours from `vidserve synth`, or a real
DAVIS 2017 / YouTube-VOS root in the DAVIS layout).

Trains on 3-frame clips (models.train.vos_data) with STCN's bootstrapped cross-entropy, through
the shared loop (progress, resumable state); evaluates DAVIS J&F on held-out videos with their
first-frame masks given; publishes the checkpoint (family "vos") and, with a Redis URL, announces
it to running workers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from models.checkpoints.checkpoint import read_manifest
from models.checkpoints.store import CheckpointStore
from models.data.davis import DavisDataset, DavisVideo, load_davis, read_palette_png
from models.data.synthetic.export import stored_fingerprint
from models.eval.davis import evaluate_davis
from models.train.distributed import (
    Drawn,
    current_ranks,
    on_main_rank,
    prepare_model,
    process_group,
)
from models.train.loop import (
    LoopResult,
    TrainRun,
    batch_stream,
    prepare_run,
    publish_run,
    republish,
    run_loop,
    seed_everything,
    source_record,
    start_from_init,
    training_record,
)
from models.train.vis_data import read_rgb
from models.train.vos_data import Clip, ClipSettings, VosClipDataset, collate_clips
from models.vos import STCN, VosConfig, masks_from_label_map, prepare_for_inference
from models.vos.video import segment_video

log = logging.getLogger(__name__)

FAMILY = "vos"


@dataclass(kw_only=True)
class VosTrainConfig(TrainRun):
    name: str = "stcn"
    work_dir: Path = Path("runs/vos")
    crop: tuple[int, int] = (224, 224)  # (height, width) of the training clips
    max_gap: int = 5
    mem_every: int = 5  # inference setting stored in the config; validation uses it


@dataclass(frozen=True)
class Bootstrap:
    """STCN's bootstrapped cross-entropy: all pixels until `start`, then the hardest share of
    them, shrinking linearly to `top_p` at `end` (fractions of the run)."""

    start: float = 0.1
    end: float = 0.4
    top_p: float = 0.15

    def share(self, step: int, total: int) -> float:
        progress = step / max(1, total)
        if progress < self.start:
            return 1.0
        ramp = min(1.0, (progress - self.start) / max(1e-9, self.end - self.start))
        return 1.0 - (1.0 - self.top_p) * ramp


def bootstrapped_ce(logits: torch.Tensor, labels: torch.Tensor, share: float) -> torch.Tensor:
    """Mean cross-entropy of the `share` of pixels with the highest loss (all when 1.0).

    Under torchrun the pixels are those of the global batch: the mean over ranks of what each
    rank returns (and so DDP's averaged gradient) is that of the hardest pixels of all ranks'
    shards together, as one process computes it. Pixels tied at the cut share its remainder."""
    if share >= 1.0:
        return F.cross_entropy(logits, labels)  # shards are equal: the mean of means
    losses = F.cross_entropy(logits, labels, reduction="none").flatten()
    world = current_ranks().world
    count = max(1, int(losses.numel() * world * share))
    cut = _kth_largest(losses.detach(), count, world)
    above, tied = losses > cut, losses == cut
    counts = torch.stack([above.sum(), tied.sum()]).to(losses.dtype)
    if world > 1:
        dist.all_reduce(counts)
    tied_weight = (count - counts[0]) / counts[1].clamp(min=1)
    hardest_sum = losses[above].sum() + tied_weight * losses[tied].sum()
    return hardest_sum * world / count


def _kth_largest(losses: torch.Tensor, k: int, world: int) -> torch.Tensor:
    """The k-th largest of the losses of every rank (each rank's own k largest hold them all)."""
    local, _ = torch.topk(losses, min(k, losses.numel()), sorted=False)
    if world > 1:
        gathered = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(gathered, local)
        local = torch.cat(gathered)
    return torch.topk(local, k, sorted=False).values.min()


def locate_davis(root: Path, split: str) -> Path:
    """The DAVIS root of `root`: ours (`<root>/davis`) or a DAVIS root itself."""
    root = Path(root)
    for base in (root / "davis", root):
        if (base / "ImageSets" / "2017" / f"{split}.txt").is_file():
            return base
    raise FileNotFoundError(
        f"{root}: no ImageSets/2017/{split}.txt here or in {root / 'davis'} (a DAVIS layout)"
    )


def davis_fingerprint(root: Path, dataset: DavisDataset) -> str:
    """meta.json's fingerprint for our data; otherwise a hash of the listed annotation files'
    names and sizes (cheap, and changes when the annotations do)."""
    stored = stored_fingerprint(root, dataset.root.parent)
    if stored is not None:
        return stored
    digest = hashlib.sha256()
    for video in dataset.videos:
        for path in video.annotation_paths:
            digest.update(f"{video.name}/{path.name}:{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def train_vos(cfg: VosTrainConfig) -> Path | None:
    """Train, evaluate and publish; returns the published checkpoint folder (None on the ranks
    other than 0 under torchrun: rank 0 validates and publishes)."""
    with process_group():
        return _train_vos(cfg)


def _train_vos(cfg: VosTrainConfig) -> Path | None:
    seed_everything(cfg.seed)
    data, fingerprint = load_training_videos(cfg)
    train_videos, val_videos = _split(cfg, data)
    model_config = initial_vos_config(cfg)
    network = STCN(model_config)
    start_from_init(network, cfg, FAMILY)
    # Channels-last: on a CPU the convolutions and pooling of a training step run about a fifth
    # faster; checkpoints store contiguous copies.
    # The encoders' batch norms train: under DDP their statistics are the global batch's.
    model = prepare_model(network.to(memory_format=torch.channels_last), synced_batchnorm=True)
    clips = VosClipDataset(train_videos, _clip_settings(cfg, model_config), cfg.seed)
    loop_cfg, optimizer, start = prepare_run(model, cfg)
    batches = batch_stream(clips, collate_clips, cfg, start)
    log.info(
        "training %s on %d videos (%d held out), %d steps, %d torch threads",
        cfg.name,
        len(clips),
        len(val_videos),
        cfg.iters,
        torch.get_num_threads(),
    )
    loss_fn = ClipLoss(model, cfg.iters, start)
    result = run_loop(model, optimizer, batches, loss_fn, loop_cfg, start, description="train vos")
    return on_main_rank(
        lambda: _validate_and_publish(
            cfg, model, model_config, fingerprint, val_videos, result, start, len(clips)
        )
    )


def load_training_videos(cfg: VosTrainConfig) -> tuple[DavisDataset, str]:
    """--data and every --data after it as one dataset of videos (those with no object in any
    frame left out: they give no clip to follow), and the fingerprint (the dataset's own, or
    with several the sha256 of theirs in order)."""
    parts, fingerprints = [], []
    for root in (cfg.data, *cfg.also_data):
        part = load_davis(locate_davis(root, cfg.split), cfg.split)
        parts.append(part)
        fingerprints.append(davis_fingerprint(root, part))
    videos = [video for part in parts for video in part.videos]
    if cfg.also_data or cfg.init is not None:  # a plain run trains as it always did
        videos = [video for video in videos if not _without_objects(video)]
    if len(parts) == 1:
        return dataclasses.replace(parts[0], videos=videos), fingerprints[0]
    joined = hashlib.sha256(" ".join(fingerprints).encode()).hexdigest()
    return dataclasses.replace(parts[0], videos=videos), joined


def _without_objects(video: DavisVideo) -> bool:
    """Every annotation of the video is background (a negative video of the wide world)."""
    return len(video.annotation_paths) > 0 and all(
        not read_palette_png(path).any() for path in video.annotation_paths
    )


def initial_vos_config(cfg: VosTrainConfig) -> VosConfig:
    """The small configuration (with --mem-every), or with --init the starting checkpoint's
    architecture."""
    if cfg.init is None:
        return VosConfig.small(**{"mem_every": cfg.mem_every, **cfg.model_overrides})
    architecture = read_manifest(cfg.init).architecture
    return VosConfig.from_dict({**architecture, "mem_every": cfg.mem_every, **cfg.model_overrides})


def _validate_and_publish(
    cfg: VosTrainConfig,
    model: STCN,
    model_config: VosConfig,
    fingerprint: str,
    val_videos: list[DavisVideo],
    result: LoopResult,
    start: int,
    train_videos: int,
) -> Path:
    started = time.monotonic()
    metrics = evaluate_vos_model(prepare_for_inference(model), val_videos) if val_videos else {}
    log.info("validation on %d videos: %s", len(val_videos), metrics)
    return publish_run(
        cfg.store,
        cfg.redis_url,
        model,
        FAMILY,
        cfg.name,
        architecture=model_config.to_dict(),
        class_names=[],  # class-agnostic: the prompt says what to follow
        metrics={**metrics, "val_videos": len(val_videos)},
        dataset_fingerprint=fingerprint,
        training=training_record(
            result,
            start,
            model,
            cfg,
            crop=list(cfg.crop),
            max_gap=cfg.max_gap,
            mem_every=model_config.mem_every,
            validation_seconds=round(time.monotonic() - started, 1),
            train_videos=train_videos,
            **source_record(cfg),
        ),
    )


# What a retune may change: settings inference reads and training never does (the working
# resolution does reach training's crops, but a retune keeps the weights as they were trained).
RETUNABLE = ("mem_every", "short_edge", "upscale")


def retune_vos(
    store: Path,
    name: str,
    changes: dict,
    val: Path,
    val_split: str = "val",
    version: str | None = None,
    redis_url: str | None = None,
) -> Path:
    """Publish a checkpoint's weights again with other inference settings (`changes`, of
    RETUNABLE: mem_every, short_edge, upscale), re-measured on held-out videos, as a new
    version.

    Those settings decide which frames inference memorises and at what size it works, so the
    weights are those of the version they come from; the new manifest keeps how they were
    trained and records the change, the version it was made from and that version's metrics.
    """
    unknown = sorted(set(changes) - set(RETUNABLE))
    if unknown or not changes:
        raise ValueError(
            f"a retune changes some of {', '.join(RETUNABLE)}; got {unknown or 'none'}"
        )
    source = CheckpointStore(store).load(FAMILY, name, version)
    config = VosConfig.from_dict({**source.manifest.architecture, **changes})
    model = STCN(config)
    model.load_state_dict(source.model.state_dict())
    videos = load_davis(locate_davis(val, val_split), val_split).videos
    metrics = evaluate_vos_model(prepare_for_inference(model), videos)
    log.info("%s on %d videos: %s", changes, len(videos), metrics)
    was = source.model.config  # the manifest's architecture, defaults filled in
    return republish(
        store,
        redis_url,
        source,
        model,
        config.to_dict(),
        "retuned",
        {key: [getattr(was, key), value] for key, value in changes.items()},
        metrics={**metrics, "val_videos": len(videos)},
        metrics_before=source.manifest.metrics,
    )


class ClipLoss:
    """The loss of one batch of clips: bootstrapped CE on every frame after the first. Counts
    its calls (one a step) for the bootstrap schedule, starting where a resumed run left off."""

    def __init__(self, model: STCN, total_steps: int, start_step: int = 0, bootstrap=None):
        self.model = model
        self.total_steps = total_steps
        self.step = start_step
        self.bootstrap = bootstrap or Bootstrap()

    def __call__(self, drawn: Drawn | Clip) -> dict[str, torch.Tensor]:
        clip = drawn.batch if isinstance(drawn, Drawn) else drawn
        clip = self._on_model_device(clip)
        share = self.bootstrap.share(self.step, self.total_steps)
        self.step += 1
        logits, _ = self.model(clip.frames, clip.first_masks, clip.selector)
        frames_after_first = logits.shape[1]
        return {
            f"ce_frame{t + 1}": bootstrapped_ce(logits[:, t], clip.labels[:, t + 1], share)
            for t in range(frames_after_first)
        }

    def _on_model_device(self, clip: Clip) -> Clip:
        device = next(self.model.parameters()).device
        if clip.frames.device == device:
            return clip
        fields = (getattr(clip, field.name) for field in dataclasses.fields(clip))
        return Clip(*(tensor.to(device, non_blocking=True) for tensor in fields))


def evaluate_vos_model(model: STCN, videos: list[DavisVideo]) -> dict[str, float]:
    """DAVIS J&F of `model` (in eval mode) on `videos`, the masks of each first frame given."""
    sequences = []
    for video in videos:
        gt = video.load_masks()
        if len(gt) != len(video.frame_paths):
            raise ValueError(f"video '{video.name}': J&F here needs every frame annotated")
        frames = (read_rgb(path) for path in video.frame_paths)
        pred = np.stack(list(segment_video(model, frames, masks_from_label_map(gt[0]))))
        sequences.append((video.name, gt, pred))
    return {name: round(value, 4) for name, value in evaluate_davis(sequences).metrics.items()}


def _clip_settings(cfg: VosTrainConfig, model_config: VosConfig) -> ClipSettings:
    return ClipSettings(
        crop=tuple(cfg.crop),
        max_gap=cfg.max_gap,
        short_edge=model_config.short_edge,
        upscale=model_config.upscale,
    )


def _split(cfg: VosTrainConfig, data: DavisDataset) -> tuple[list[DavisVideo], list[DavisVideo]]:
    """(training videos, validation videos)."""
    if cfg.val is not None:
        val_root = locate_davis(cfg.val, cfg.val_split)
        return data.videos, load_davis(val_root, cfg.val_split).videos
    return cfg.hold_out(data.videos)
