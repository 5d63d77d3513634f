"""`vidserve train vis`: MaskTrack R-CNN on a YouTube-VIS dataset (ours or the real one).

Reads the dataset, trains on (key frame, reference frame) pairs with progress and resumable state,
evaluates YouTube-VIS AP on held-out videos, then publishes the checkpoint to the store (and, with
a Redis URL, announces it so that running workers load it).
"""

import hashlib
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Subset

from models.checkpoints.checkpoint import read_manifest
from models.data.synthetic.export import stored_fingerprint
from models.data.ytvis import YtvisDataset, load_ytvis, merge_ytvis
from models.train.distributed import Drawn, on_main_rank, prepare_model, process_group, sample_seed
from models.train.loop import (
    LoopResult,
    TrainRun,
    batch_stream,
    prepare_run,
    publish_run,
    run_loop,
    seed_everything,
    source_record,
    start_from_init,
    training_record,
)
from models.train.vis_data import VisPairDataset, collate_pairs, read_rgb
from models.vis.config import VisConfig
from models.vis.model import MaskTrackRCNN, build_masktrack_rcnn
from models.vis.targets import prepare_training_batch
from models.vis.video_inference import segment_video, ytvis_results

log = logging.getLogger(__name__)

VAL_SCORE_THRESHOLD = 0.1  # low, as AP rewards recall; serving defaults to 0.5


@dataclass(kw_only=True)
class VisTrainConfig(TrainRun):
    name: str = "masktrack"
    work_dir: Path = Path("runs/vis")
    val_split: str = "train"
    loader_workers: int = 1  # processes decoding JPEGs beside the training step
    empty_frames: bool = False  # frames with no instance are key frames too (negatives)


def locate_ytvis(root: Path, split: str) -> tuple[Path, Path]:
    """(annotation JSON, image root) of a YouTube-VIS dataset folder, in either layout:
    ours (`<root>/ytvis/<split>.json`, `JPEGImages/`) or the official one (`<root>/<split>.json`
    and `<root>/<split>/JPEGImages/`). A JSON file may also be given directly."""
    root = Path(root)
    if root.is_file():
        return root, root.parent / "JPEGImages"
    for base in (root / "ytvis", root):
        ann = base / f"{split}.json"
        if ann.is_file():
            images = base / "JPEGImages"
            return ann, images if images.is_dir() else base / split / "JPEGImages"
    raise FileNotFoundError(f"{root}: no {split}.json here or in {root / 'ytvis'}")


def dataset_fingerprint(root: Path, ann_file: Path) -> str:
    """meta.json's fingerprint for our data; otherwise the annotation file's sha256."""
    return stored_fingerprint(root) or hashlib.sha256(ann_file.read_bytes()).hexdigest()


def load_training_data(cfg: VisTrainConfig) -> tuple[YtvisDataset, Path, str]:
    """--data and every --data after it as one dataset; (dataset, first annotation file,
    fingerprint: the dataset's own, or with several the sha256 of theirs in order)."""
    parts, fingerprints, first_ann = [], [], None
    for root in (cfg.data, *cfg.also_data):
        ann, images = locate_ytvis(root, cfg.split)
        parts.append(load_ytvis(ann, images, check_files=True))
        fingerprints.append(dataset_fingerprint(root, ann))
        first_ann = first_ann or ann
    if len(parts) == 1:
        return parts[0], first_ann, fingerprints[0]
    joined = hashlib.sha256(" ".join(fingerprints).encode()).hexdigest()
    return merge_ytvis(parts), first_ann, joined


def train_vis(cfg: VisTrainConfig) -> Path | None:
    """Train, evaluate and publish; returns the published checkpoint folder (None on the ranks
    other than 0 under torchrun: rank 0 validates and publishes)."""
    with process_group():
        return _train_vis(cfg)


def _train_vis(cfg: VisTrainConfig) -> Path | None:
    seed_everything(cfg.seed)
    data, ann, fingerprint = load_training_data(cfg)
    category_ids = sorted(data.categories)
    class_names = [data.categories[c] for c in category_ids]
    train_ids, val_set = split_videos(cfg, data)
    network = build_masktrack_rcnn(initial_vis_config(cfg, len(class_names)))
    start_from_init(network, cfg, "vis", class_names)
    # The trunk's batch norms train: under DDP their statistics are the global batch's.
    model = prepare_model(network, synced_batchnorm=True)
    label_of = {c: k + 1 for k, c in enumerate(category_ids)}
    pairs = VisPairDataset(data, label_of=label_of, seed=cfg.seed, empty_frames=cfg.empty_frames)
    keys = [k for k, (video_id, _) in enumerate(pairs.keys) if video_id in train_ids]
    loop_cfg, optimizer, start = prepare_run(model, cfg)
    # loader_workers processes decode JPEGs while the model trains.
    batches = batch_stream(
        Subset(pairs, keys),
        collate_pairs,
        cfg,
        start,
        rng_owner=pairs,
        loader_workers=cfg.loader_workers,
    )
    log.info(
        "training %s on %d key frames of %d videos, %d steps",
        cfg.name,
        len(keys),
        len(train_ids),
        cfg.iters,
    )
    loss_fn = PairLosses(model, cfg.seed)
    result = run_loop(model, optimizer, batches, loss_fn, loop_cfg, start, description="train vis")

    def evaluate(model, data, video_ids):
        return evaluate_vis_model(model, data, video_ids, class_names)

    return on_main_rank(
        lambda: validate_and_publish(
            cfg,
            model,
            "vis",
            evaluate,
            ann,
            class_names,
            val_set,
            result,
            start,
            len(train_ids),
            fingerprint=fingerprint,
            **run_settings(cfg),
        )
    )


def initial_vis_config(cfg: VisTrainConfig, num_classes: int) -> VisConfig:
    """The small configuration, or with --init the starting checkpoint's architecture."""
    if cfg.init is None:
        return VisConfig.small(num_classes=num_classes, **cfg.model_overrides)
    return VisConfig.from_dict({**read_manifest(cfg.init).architecture, **cfg.model_overrides})


def run_settings(cfg: VisTrainConfig) -> dict:
    """The training record's additions for a run that mixes datasets, fine-tunes or keeps
    empty frames."""
    return {**source_record(cfg), **({"empty_frames": True} if cfg.empty_frames else {})}


def validate_and_publish(
    cfg: TrainRun,
    model,
    family: str,
    evaluate,
    ann: Path,
    class_names: list[str],
    val_set: tuple,
    result: LoopResult,
    start: int,
    train_videos: int,
    fingerprint: str | None = None,
    **settings,
) -> Path:
    """What the video-trained families do after the loop (rank 0): `evaluate(model, dataset,
    videos)` on the held-out videos (val_set: the dataset and those videos), then publish with
    the run's record (and a family's own `settings` in it). `ann`: the annotation file whose
    hash is the fingerprint of a dataset that is not ours, unless `fingerprint` is given."""
    model.eval()
    eval_started = time.monotonic()
    metrics = evaluate(model, *val_set) if val_set[1] else {}
    eval_seconds = time.monotonic() - eval_started
    log.info("validation: %s", metrics)
    return publish_run(
        cfg.store,
        cfg.redis_url,
        model,
        family,
        cfg.name,
        architecture=model.architecture(),
        class_names=class_names,
        metrics=metrics,
        dataset_fingerprint=fingerprint or dataset_fingerprint(cfg.data, ann),
        training=training_record(
            result,
            start,
            model,
            cfg,
            validation_seconds=round(eval_seconds, 1),
            validation_videos=len(val_set[1]),
            train_videos=train_videos,
            **settings,
        ),
    )


def split_videos(cfg: VisTrainConfig, data: YtvisDataset) -> tuple[set[int], tuple]:
    """Training video ids, and (validation dataset, its video ids)."""
    if cfg.val is not None:
        ann, images = locate_ytvis(cfg.val, cfg.val_split)
        val = load_ytvis(ann, images, check_files=True)
        if set(val.categories.items()) != set(data.categories.items()):
            raise ValueError(f"{ann}: categories differ from the training set's")
        return set(data.videos), (val, list(val.videos))
    train_ids, held = cfg.hold_out(sorted(data.videos))
    return set(train_ids), (data, held)


class PairLosses:
    """The loss of a batch: the mean over its (key, reference) pairs of each pair's own Mask
    R-CNN + track losses, as the reference trains (one image a GPU, the losses normalised per
    GPU, the gradients averaged), so that a batch's loss is the same whether one process
    computes it or several split it (torchrun): batch-wide normalisers (the mask loss over all
    positive RoIs of the batch) and one random stream through all pairs could not be split.

    The backbone runs once over all key and reference frames (batch-norm statistics of the
    batch, synced across ranks under DDP); the heads run pair by pair, each pair's anchor and
    RoI sampling drawing from a generator seeded by the pair's draw number. The heads are
    MaskTrackRCNN.heads_losses, which training_losses also runs."""

    def __init__(self, model: MaskTrackRCNN, seed: int):
        self.model = model
        self.seed = seed

    def __call__(self, drawn: Drawn) -> dict[str, torch.Tensor]:
        key_images, key_targets, ref_images, ref_targets = drawn.batch
        model, count = self.model, len(key_images)
        batch, targets = prepare_training_batch(
            list(key_images) + list(ref_images),
            list(key_targets) + list(ref_targets),
            model.config,
            model.device,
        )
        features = model.backbone(batch.tensor)
        devices = [model.device] if model.device.type == "cuda" else []
        per_pair = []
        for k, draw in enumerate(drawn.draws):
            key, ref = slice(k, k + 1), slice(count + k, count + k + 1)
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(sample_seed(self.seed, draw))
                per_pair.append(model.heads_losses(batch, features, targets, key, ref))
        return {name: torch.stack([p[name] for p in per_pair]).mean() for name in per_pair[0]}


def evaluate_vis_model(
    model: MaskTrackRCNN,
    data: YtvisDataset,
    video_ids: list[int],
    class_names: list[str],
    score_threshold: float = VAL_SCORE_THRESHOLD,
    batch_size: int = 4,
) -> dict[str, float]:
    """YouTube-VIS AP of `model` on the given videos of `data` (its ground truth)."""
    from models.eval.vis import evaluate_vis_files

    category_ids = {data.categories[c]: c for c in sorted(data.categories)}
    results = []
    for video_id in video_ids:
        video = data.videos[video_id]
        frames = (read_rgb(data.frame_path(video_id, t)) for t in range(video.length))
        per_frame = list(
            segment_video(model, frames, tuple(class_names), score_threshold, batch_size)
        )
        results += ytvis_results(per_frame, video_id, category_ids)
    with tempfile.TemporaryDirectory() as tmp:
        gt_file, results_file = Path(tmp) / "gt.json", Path(tmp) / "results.json"
        _write_gt_subset(data, video_ids, gt_file)
        results_file.write_text(json.dumps(results))
        return dict(evaluate_vis_files(gt_file, results_file).metrics)


def _write_gt_subset(data: YtvisDataset, video_ids: list[int], path: Path) -> None:
    from models.data.ytvis import write_ytvis

    tracks = [t for v in video_ids for t in data.tracks_of(v)]
    write_ytvis(path, [data.videos[v] for v in video_ids], tracks, data.categories)
