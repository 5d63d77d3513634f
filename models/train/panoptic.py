"""`vidserve train panoptic`: MaskFormer on a COCO panoptic dataset (ours or the real one).

Every image with its segments, things and stuff, as classes (things first, then stuff, each in
category-id order, as PanopticConfig numbers them) and full-resolution masks; flipped at random;
resized and padded as inference prepares frames (models.panoptic.inference), the masks brought to
the padded input size, to which MaskFormerLoss upsamples the mask logits (as MMDetection's
MaskFormerHead does). Validation is PQ (models.eval.panoptic) of panoptic inference on held-out
videos, which also picks the object-mask threshold the checkpoint is published with; the
checkpoint is published and announced as the other families' are.

The release trains AdamW at lr 1e-4, the backbone at x0.1, gradients clipped at 0.01; the small
model trains from scratch, trunk included, so one rate for every parameter, a higher one, and a
looser clip (PanopticConfig.small has no transformer dropout); defaults from short trials on the
synthetic world (lr 2e-3 learnt far faster than 1e-3).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from models.checkpoints.checkpoint import load_part_into, read_manifest
from models.common.image import resize_masks
from models.data.coco_panoptic import PanopticDataset, PanopticImage, load_coco_panoptic
from models.eval.panoptic import PqCounts, Segments, count_image, pq_metrics
from models.panoptic.config import PanopticConfig
from models.panoptic.inference import (
    InferenceSettings,
    PanopticPrediction,
    frame_logits,
    panoptic_inference,
    prepare_frames,
)
from models.panoptic.loss import MaskFormerLoss, PanopticTarget
from models.panoptic.model import FAMILY, MaskFormer, build_maskformer
from models.train.distributed import Drawn, on_main_rank, prepare_model, process_group
from models.train.loop import (
    TrainRun,
    batch_stream,
    prepare_run,
    run_loop,
    seed_everything,
    source_record,
    start_from_init,
)
from models.train.vis import validate_and_publish
from models.train.vis_data import read_rgb

log = logging.getLogger(__name__)

TRUNK_PREFIX = "backbone.body."  # where the detection families keep the trunk of their FPN


@dataclass(kw_only=True)
class PanopticTrainConfig(TrainRun):
    name: str = "maskformer"
    work_dir: Path = Path("runs/panoptic")
    lr: float = 2e-3
    grad_clip: float = 1.0
    loader_workers: int = 1  # processes decoding JPEGs and PNGs beside the training step
    # Object-mask thresholds the validation tries (evaluate_panoptic_model); the best is
    # published in the architecture. Empty: keep the configured one (the release's 0.8).
    object_mask_thresholds: tuple[float, ...] = (0.8, 0.7, 0.6, 0.5, 0.4, 0.3)
    # A published checkpoint whose `backbone.body` is this model's trunk (masktrack's small
    # trunk): the release starts from an ImageNet-pretrained R50, the small model from a trunk
    # trained on the same world. None: the trunk starts from scratch.
    trunk_init: Path | None = None


@dataclass
class PanopticSample:
    image: np.ndarray  # RGB uint8 H x W x 3
    target: PanopticTarget  # masks (G, H, W) bool at the image's own size


@dataclass
class PanopticData:
    """A COCO panoptic dataset, its images' folder, and its categories as the model's classes."""

    dataset: PanopticDataset
    image_root: Path
    category_ids: list[int]  # the category of each class: things by id, then stuff by id
    num_things: int

    @classmethod
    def load(cls, root: Path, split: str) -> PanopticData:
        ann, image_root = locate_panoptic(root, split)
        dataset = load_coco_panoptic(ann)
        things = sorted(c for c, cat in dataset.categories.items() if cat.isthing)
        stuff = sorted(c for c, cat in dataset.categories.items() if not cat.isthing)
        return cls(dataset, image_root, things + stuff, len(things))

    @property
    def class_names(self) -> list[str]:
        return [self.dataset.categories[c].name for c in self.category_ids]

    @property
    def num_stuff(self) -> int:
        return len(self.category_ids) - self.num_things

    def videos(self) -> list[str]:
        """The videos, in the order of their first image (COCO's images are one-frame videos)."""
        return list(dict.fromkeys(video_of(image) for image in self.dataset.images))

    def images_of(self, videos: list[str]) -> list[int]:
        """Indices of the images of the given videos."""
        chosen = set(videos)
        return [k for k, im in enumerate(self.dataset.images) if video_of(im) in chosen]

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(RGB frame, segment-id map) of an image."""
        image = self.dataset.images[index]
        frame = read_rgb(self.image_root / image.file_name)
        ids = image.load_ids()
        if frame.shape[:2] != ids.shape:
            raise ValueError(f"{image.file_name}: frame {frame.shape[:2]} != its PNG {ids.shape}")
        return frame, ids

    def target(self, index: int, ids: np.ndarray) -> PanopticTarget:
        """Every segment but crowd regions (left out, as unlabelled pixels) as class and mask."""
        class_of = {c: k for k, c in enumerate(self.category_ids)}
        segments = [s for s in self.dataset.images[index].segments if not s.iscrowd]
        labels = torch.tensor([class_of[s.category_id] for s in segments], dtype=torch.long)
        masks = np.stack([ids == s.id for s in segments]) if segments else None
        if masks is None:
            return PanopticTarget(labels, torch.zeros((0, *ids.shape), dtype=torch.bool))
        return PanopticTarget(labels, torch.from_numpy(masks))


def video_of(image: PanopticImage) -> str:
    """The video an image is a frame of: its folder (ours: <video>/00000.jpg), else itself."""
    folder = Path(image.file_name).parent.as_posix()
    return image.file_name if folder == "." else folder


def locate_panoptic(root: Path, split: str) -> tuple[Path, Path]:
    """(panoptic JSON, image root) of a dataset folder: ours (`<root>/panoptic/panoptic_<split>
    .json`, images in `panoptic/images/`) or COCO's (`<root>/annotations/panoptic_<split>.json`,
    images in `<root>/<split>/`, e.g. split train2017). A JSON may also be given directly, its
    images in `images/` beside it."""
    root = Path(root)
    if root.is_file():
        return root, root.parent / "images"
    ours = root / "panoptic" / f"panoptic_{split}.json"
    if ours.is_file():
        return ours, root / "panoptic" / "images"
    coco = root / "annotations" / f"panoptic_{split}.json"
    if coco.is_file():
        return coco, root / split
    raise FileNotFoundError(f"{root}: neither {ours} nor {coco}")


class PanopticFrames(Dataset):
    """The images of a panoptic dataset with their targets, flipped left-right at random."""

    def __init__(self, data: PanopticData, flip: bool = True):
        self.data = data
        self.flip = flip
        self.rng = np.random.default_rng(0)  # replaced per draw (SeededDraws)

    def __len__(self) -> int:
        return len(self.data.dataset.images)

    def __getitem__(self, index: int) -> PanopticSample:
        frame, ids = self.data.read(index)
        if self.flip and self.rng.uniform() < 0.5:
            frame, ids = frame[:, ::-1].copy(), ids[:, ::-1].copy()
        return PanopticSample(frame, self.data.target(index, ids))


def collate_samples(samples: list[PanopticSample]) -> list[PanopticSample]:
    return samples


def fit_target(
    target: PanopticTarget, size: tuple[int, int], padded: tuple[int, int]
) -> PanopticTarget:
    """A target's masks resized (nearest) to its image's input size, zero-padded to the batch's."""
    masks = resize_masks(target.masks, size).bool()
    fitted = masks.new_zeros((masks.shape[0], *padded))
    fitted[:, : size[0], : size[1]] = masks
    return PanopticTarget(target.labels, fitted)


class PanopticLosses:
    """A batch's MaskFormer losses: frames prepared as for inference, targets brought to the
    padded input size."""

    def __init__(self, model: MaskFormer):
        self.model = model
        self.loss = MaskFormerLoss(model.config)

    def __call__(self, drawn: Drawn) -> dict[str, torch.Tensor]:
        samples: list[PanopticSample] = drawn.batch
        device = self.model.device
        batch = prepare_frames(self.model, [s.image for s in samples])
        padded = tuple(batch.tensor.shape[-2:])
        targets = [
            fit_target(s.target, size, padded)
            for s, size in zip(samples, batch.image_sizes, strict=True)
        ]
        targets = [PanopticTarget(t.labels.to(device), t.masks.to(device)) for t in targets]
        return self.loss(self.model(batch.tensor, batch.image_sizes), targets)


def train_panoptic(cfg: PanopticTrainConfig) -> Path | None:
    """Train, evaluate and publish; returns the published checkpoint folder (None on the ranks
    other than 0 under torchrun)."""
    with process_group():
        return _train_panoptic(cfg)


def _train_panoptic(cfg: PanopticTrainConfig) -> Path | None:
    seed_everything(cfg.seed)
    data = PanopticData.load(cfg.data, cfg.split)
    train_videos, val_set = split_panoptic(cfg, data)
    network = build_maskformer(initial_config(cfg, data))
    start_from_init(network, cfg, FAMILY, data.class_names)
    trunk_from = start_trunk(network, cfg.trunk_init)
    model = prepare_model(network, synced_batchnorm=True)
    frames = PanopticFrames(data)
    keys = data.images_of(train_videos)
    loop_cfg, optimizer, start = prepare_run(model, cfg)
    loop_cfg.grad_clip = cfg.grad_clip
    batches = batch_stream(
        Subset(frames, keys),
        collate_samples,
        cfg,
        start,
        rng_owner=frames,
        loader_workers=cfg.loader_workers,
    )
    log.info("training %s on %d images of %d videos", cfg.name, len(keys), len(train_videos))
    losses = PanopticLosses(model)
    result = run_loop(model, optimizer, batches, losses, loop_cfg, start, "train panoptic")
    ann, _ = locate_panoptic(cfg.data, cfg.split)
    return on_main_rank(
        lambda: validate_and_publish(
            cfg,
            model,
            FAMILY,
            partial(evaluate_panoptic_model, thresholds=cfg.object_mask_thresholds),
            ann,
            data.class_names,
            val_set,
            result,
            start,
            len(train_videos),
            grad_clip=cfg.grad_clip,
            **source_record(cfg),
            **trunk_from,
        )
    )


def initial_config(cfg: PanopticTrainConfig, data: PanopticData) -> PanopticConfig:
    """The small configuration for the data's classes, or --init's architecture; either with
    the run's overrides (e.g. decoder_memory)."""
    if cfg.init is None:
        return PanopticConfig.small(
            num_things=data.num_things, num_stuff=data.num_stuff, **cfg.model_overrides
        )
    return PanopticConfig.from_dict({**read_manifest(cfg.init).architecture, **cfg.model_overrides})


def start_trunk(model: MaskFormer, checkpoint: Path | None) -> dict[str, str]:
    """Load the trunk from `checkpoint`'s `backbone.body` (names and shapes exactly the trunk's,
    else a CheckpointError); what the manifest records of it."""
    if checkpoint is None:
        return {}
    source = load_part_into(model.backbone, checkpoint, TRUNK_PREFIX)
    origin = f"{source.family}/{Path(checkpoint).parent.name}/{source.version}"
    log.info("trunk from %s (%s)", checkpoint, origin)
    return {"trunk_init": origin}


def split_panoptic(cfg: PanopticTrainConfig, data: PanopticData) -> tuple[list[str], tuple]:
    """Training videos, and (validation data, its videos): --val's, or the last val_videos."""
    if cfg.val is not None:
        val = PanopticData.load(cfg.val, cfg.val_split)
        if val.class_names != data.class_names or val.num_things != data.num_things:
            raise ValueError(f"{cfg.val}: categories differ from the training set's")
        return data.videos(), (val, val.videos())
    train_videos, held = cfg.hold_out(data.videos())
    return train_videos, (data, held)


def evaluate_panoptic_model(
    model: MaskFormer,
    data: PanopticData,
    videos: list[str],
    batch_size: int = 4,
    thresholds: tuple[float, ...] = (),
) -> dict[str, float]:
    """PQ, SQ, RQ (all, things, stuff) of `model` on every image of the given videos, in the
    model's classes; crowd regions are marked as such in the ground truth.

    With `thresholds`, a calibration: every object-mask threshold is tried on the same forward
    passes, the model's config takes the one of the highest PQ (a tie to the higher), and the
    metrics are that one's, with `object_mask_threshold` and each tried one's `pq_at_<t>` and
    `pq_things_at_<t>`. The release's 0.8 suits its full model on COCO; a small model trained
    from scratch scores its right answers lower."""
    tried = thresholds or (model.config.object_mask_threshold,)
    counts = {t: PqCounts() for t in tried}
    categories = {k: k < data.num_things for k in range(len(data.category_ids))}
    base = InferenceSettings.from_config(model.config)
    indices = data.images_of(videos)
    for first in range(0, len(indices), batch_size):
        chunk = indices[first : first + batch_size]
        read = [data.read(k) for k in chunk]
        logits = frame_logits(model, [frame for frame, _ in read])
        for k, (_, ids), (class_logits, mask_logits, _) in zip(chunk, read, logits, strict=True):
            where = data.dataset.images[k].file_name
            truth = ground_truth(data, k, ids)
            for threshold in tried:
                settings = replace(base, object_mask_threshold=threshold)
                predicted = panoptic_inference(class_logits, mask_logits, settings)
                count_image(truth, as_segments(predicted), counts[threshold], categories, where)
    found = {t: pq_metrics(counts[t], categories) for t in tried}
    best = max(tried, key=lambda t: (found[t]["PQ"], t))
    metrics = {
        f"{metric.lower()}{suffix}": round(float(found[best][f"{metric}{key}"]), 4)
        for key, suffix in (("", ""), ("_th", "_things"), ("_st", "_stuff"))
        for metric in ("PQ", "SQ", "RQ")
    }
    if thresholds:
        model.config = replace(model.config, object_mask_threshold=best)
        metrics["object_mask_threshold"] = best
        for t in tried:
            metrics[f"pq_at_{t:g}"] = round(float(found[t]["PQ"]), 4)
            metrics[f"pq_things_at_{t:g}"] = round(float(found[t]["PQ_th"]), 4)
    return metrics


def ground_truth(data: PanopticData, index: int, ids: np.ndarray) -> Segments:
    """An image's ground truth in the model's classes, its crowd regions marked."""
    class_of = {c: k for k, c in enumerate(data.category_ids)}
    segments = data.dataset.images[index].segments
    return Segments(
        ids,
        {s.id: class_of[s.category_id] for s in segments},
        {s.id: bool(s.iscrowd) for s in segments},
    )


def as_segments(prediction: PanopticPrediction) -> Segments:
    return Segments(
        prediction.ids.cpu().numpy().astype(np.int64),
        {s.id: s.category for s in prediction.segments},
    )
