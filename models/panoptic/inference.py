"""Panoptic inference as MMDetection's MaskFormerFusionHead does it (panoptic_postprocess).

1. Each query's class: the argmax of softmax(class logits) over all classes and "no object";
   its score, that probability. Queries whose class is "no object", or whose score is not over
   object_mask_threshold (0.8), are dropped.
2. Each pixel goes to the kept query with the largest score x sigmoid(mask logit).
3. A query whose won pixels are fewer than overlap_threshold (0.8) x its own mask's pixels
   (sigmoid >= 0.5), or that wins no pixel or has an empty mask, is dropped: its pixels stay void.
4. Things: one segment per query. Stuff: the queries of one class share one segment (MMDetection
   writes the class itself into its map, so they merge); its score is the largest of theirs.

The output is a segment-id map (0 = void, segments 1..N) and the segments, so segments can never
overlap: each pixel holds one id. The masks are first brought to the frame's size as the
release does: upsampled to the padded batch, cropped to the image, resized to the frame.

Each segment may carry its query's feature (the last decoder layer's output, L2-normalised) as an
appearance embedding: video panoptic feeds it to the VIS tracker (service/worker/runners/panoptic).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from models.common.image import Frame, ImageBatch, prepare_batch
from models.panoptic.config import PanopticConfig
from models.panoptic.model import MaskFormer, MaskFormerOutput

VOID = 0


@dataclass(frozen=True)
class PanopticSegment:
    id: int  # its value in the id map
    category: int  # 0-based class: things first, then stuff
    isthing: bool
    score: float
    area: int  # pixels
    # (D,) unit-length feature of its query (of a merged stuff segment: its first query's);
    # None when inference was given no query features. Not compared: segments are equal by what
    # they answer.
    embedding: Tensor | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class PanopticPrediction:
    ids: Tensor  # (H, W) int32 segment ids, 0 = void
    segments: list[PanopticSegment]


@dataclass(frozen=True)
class InferenceSettings:
    num_things: int
    object_mask_threshold: float = 0.8
    overlap_threshold: float = 0.8
    mask_threshold: float = 0.5

    @classmethod
    def from_config(cls, config: PanopticConfig) -> InferenceSettings:
        return cls(
            num_things=config.num_things,
            object_mask_threshold=config.object_mask_threshold,
            overlap_threshold=config.overlap_threshold,
            mask_threshold=config.mask_threshold,
        )


def panoptic_inference(
    class_logits: Tensor,
    mask_logits: Tensor,
    settings: InferenceSettings,
    query_features: Tensor | None = None,
) -> PanopticPrediction:
    """One image: class_logits (Q, C + 1), "no object" last; mask_logits (Q, H, W) at the size
    the answer should have; query_features (Q, D), if given, become the segments' embeddings."""
    no_object = class_logits.shape[-1] - 1
    scores, classes = class_logits.float().softmax(-1).max(-1)
    keep = (classes != no_object) & (scores > settings.object_mask_threshold)
    scores, classes = scores[keep], classes[keep]
    masks = mask_logits.float()[keep].sigmoid()
    embeddings = None
    if query_features is not None:
        embeddings = F.normalize(query_features.detach().float()[keep], dim=-1).cpu()
    ids = torch.full(mask_logits.shape[-2:], VOID, dtype=torch.int32, device=mask_logits.device)
    if masks.shape[0] == 0:
        return PanopticPrediction(ids, [])
    winner = (scores[:, None, None] * masks).argmax(0)
    segments: dict[int, PanopticSegment] = {}  # by id
    stuff_ids: dict[int, int] = {}  # stuff class -> its segment's id
    for query in range(len(classes)):
        won = winner == query
        won_area = int(won.sum())
        own_area = int((masks[query] >= settings.mask_threshold).sum())
        if won_area == 0 or own_area == 0 or won_area < settings.overlap_threshold * own_area:
            continue  # mostly hidden behind other queries: not a segment of its own
        category, score = int(classes[query]), float(scores[query])
        isthing = category < settings.num_things
        segment_id = len(segments) + 1 if isthing else stuff_ids.get(category, len(segments) + 1)
        ids[won] = segment_id
        earlier = segments.get(segment_id)
        if earlier is not None:  # another query of a stuff class already seen: merge
            score, won_area = max(score, earlier.score), won_area + earlier.area
        elif not isthing:
            stuff_ids[category] = segment_id
        embedding = earlier.embedding if earlier is not None else None
        if embedding is None and embeddings is not None:
            embedding = embeddings[query]
        segments[segment_id] = PanopticSegment(
            segment_id, category, isthing, score, won_area, embedding
        )
    return PanopticPrediction(ids, list(segments.values()))


def masks_at_frame_size(
    mask_logits: Tensor,
    padded_size: tuple[int, int],
    image_size: tuple[int, int],
    frame_size: tuple[int, int],
) -> Tensor:
    """(Q, h, w) logits on the padded batch's stride-4 grid -> (Q, H, W) at the frame's size:
    upsampled to the padded batch, cropped to the image inside it, resized to the frame
    (bilinear, as the release)."""
    upsampled = F.interpolate(
        mask_logits[None], size=padded_size, mode="bilinear", align_corners=False
    )
    cropped = upsampled[:, :, : image_size[0], : image_size[1]]
    return F.interpolate(cropped, size=frame_size, mode="bilinear", align_corners=False)[0]


@torch.inference_mode()
def segment_frames(model: MaskFormer, frames: list[Frame]) -> list[PanopticPrediction]:
    """One forward pass over frames of any sizes; per frame, its panoptic map at its own size.

    frames: RGB uint8 H x W x 3 (numpy or tensor), or float 3 x H x W tensors in [0, 1]."""
    settings = InferenceSettings.from_config(model.config)
    return [
        panoptic_inference(class_logits, mask_logits, settings, features)
        for class_logits, mask_logits, features in frame_logits(model, frames)
    ]


@torch.inference_mode()
def frame_logits(model: MaskFormer, frames: list[Frame]) -> list[tuple[Tensor, Tensor, Tensor]]:
    """One forward pass over frames; per frame, what panoptic_inference takes: the last layer's
    class logits (Q, C + 1), its mask logits at the frame's size (Q, H, W), and the query
    features (Q, D). Apart from segment_frames so that a calibration can try many settings on
    one pass (models.train.panoptic)."""
    if model.training:
        raise RuntimeError("panoptic inference needs eval mode; call model.eval() first")
    if not frames:
        return []
    batch = prepare_frames(model, frames)
    output = model(batch.tensor, batch.image_sizes)
    padded_size = tuple(batch.tensor.shape[-2:])
    return [
        (
            class_logits,
            masks_at_frame_size(mask_logits, padded_size, image_size, frame_size),
            features,
        )
        for class_logits, mask_logits, features, image_size, frame_size in zip(
            output.class_logits,
            output.mask_logits,
            output.query_features,
            batch.image_sizes,
            batch.input_sizes,
            strict=True,
        )
    ]


def probe_maskformer(model: MaskFormer) -> MaskFormerOutput:
    """The family's load-time probe (models.checkpoints.probe): the network on a noise frame of
    the model's input size, then panoptic inference on its answer; returns the network's output
    (every layer's logits) for the finiteness check."""
    from models.checkpoints.probe import probe_frame

    config = model.config
    frame = probe_frame(config.image_short_edge, config.image_long_edge).to(model.device)
    batch = prepare_frames(model, [frame])
    output = model(batch.tensor, batch.image_sizes)
    panoptic_inference(
        output.class_logits[0], output.mask_logits[0], InferenceSettings.from_config(config)
    )
    return output


def prepare_frames(model: MaskFormer, frames: list[Frame]) -> ImageBatch:
    config = model.config
    return prepare_batch(
        frames,
        long_edge=config.image_long_edge,
        short_edge=config.image_short_edge,
        mean=config.image_mean,
        std=config.image_std,
        size_divisible=config.size_divisible,
        device=model.device,
    )
