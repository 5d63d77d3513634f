"""MaskTrack R-CNN's track head: an embedding per box, and its matching loss.

Reference: MMTracking RoITrackHead + RoIEmbedHead (num_fcs=2, fc_out_channels=1024) and its
train_cfg (MaxIoUAssigner pos 0.5 / neg 0.5 with low-quality matches, RandomSampler 128 RoIs,
25% positive, ground truth added as proposals).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, Matcher
from torchvision.ops import box_iou

from models.common.roi_align import FEATURE_LEVELS, multiscale_roi_align


class TrackEmbedHead(nn.Module):
    """RoIAlign 7x7 on the FPN levels -> fc -> ReLU -> fc -> ReLU: one embedding per box.

    With cosine_scale > 0 the last ReLU is left out and each embedding is L2-normalised and
    multiplied by sqrt(cosine_scale): dot products, which the loss and the tracker use as they
    are, become cosine_scale * cosine similarity, bounded on both sides.
    """

    def __init__(
        self,
        in_channels: int,
        embed_dim: int = 1024,
        roi_size: int = 7,
        rois_per_image: int = 128,
        positive_fraction: float = 0.25,
        iou_thresh: float = 0.5,
        cosine_scale: float = 0.0,
        sampling_ratio: int = 2,
        aligned: bool = False,
    ):
        super().__init__()
        self.embed_dim = embed_dim
        self.cosine_scale = cosine_scale
        self.roi_pool = multiscale_roi_align(roi_size, sampling_ratio, aligned)
        roi_features = in_channels * roi_size * roi_size
        self.fcs = nn.ModuleList(
            [nn.Linear(roi_features, embed_dim), nn.Linear(embed_dim, embed_dim)]
        )
        # A key RoI counts as an instance at IoU >= 0.5; each instance keeps its best RoI even
        # below that (MMDetection's match_low_quality=True).
        self.matcher = Matcher(iou_thresh, iou_thresh, allow_low_quality_matches=True)
        self.sampler = BalancedPositiveNegativeSampler(rois_per_image, positive_fraction)

    def forward(
        self, features: dict[str, Tensor], boxes: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> Tensor:
        """Embeddings (sum of boxes, embed_dim) for boxes given per image in network pixels."""
        if sum(len(image_boxes) for image_boxes in boxes) == 0:
            return features[FEATURE_LEVELS[0]].new_zeros((0, self.embed_dim))
        x = self.roi_pool(features, boxes, image_sizes).flatten(1)
        x = self.fcs[1](F.relu(self.fcs[0](x)))
        if self.cosine_scale > 0:
            return F.normalize(x, dim=1) * math.sqrt(self.cosine_scale)
        return F.relu(x)

    def loss(
        self,
        key_features: dict[str, Tensor],
        proposals: list[Tensor],
        key_targets: list[dict[str, Tensor]],
        key_sizes: list[tuple[int, int]],
        ref_features: dict[str, Tensor],
        ref_targets: list[dict[str, Tensor]],
        ref_sizes: list[tuple[int, int]],
    ) -> Tensor:
        """Cross-entropy of sampled key-frame RoIs against the reference frame's instances.

        Only positive RoIs are weighted (MMTracking gives negatives weight 0), so only they are
        embedded. A positive whose instance is absent from the reference frame has target 0,
        "new object". Each image's loss is divided by its number of targets > 0 (at least 1);
        the result is the mean over images.
        """
        roi_boxes, matched_gt = self.sample_positive_rois(proposals, key_targets)
        key_embeddings = self(key_features, roi_boxes, key_sizes)
        ref_boxes = [target["boxes"] for target in ref_targets]
        ref_embeddings = self(ref_features, ref_boxes, ref_sizes)
        key_split = key_embeddings.split([len(b) for b in roi_boxes])
        ref_split = ref_embeddings.split([len(b) for b in ref_boxes])
        losses = []
        for key_emb, ref_emb, gt_index, key_t, ref_t in zip(
            key_split, ref_split, matched_gt, key_targets, ref_targets, strict=True
        ):
            targets = match_targets(key_t["instance_ids"][gt_index], ref_t["instance_ids"])
            logits = similarity_logits(key_emb, ref_emb)
            normaliser = (targets > 0).sum().clamp(min=1)
            losses.append(F.cross_entropy(logits, targets, reduction="sum") / normaliser)
        return torch.stack(losses).mean()

    def sample_positive_rois(
        self, proposals: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Per image: positive RoI boxes (at most rois_per_image * positive_fraction, drawn at
        random) and the index of the ground-truth instance each one matched."""
        boxes, matched = [], []
        for image_proposals, target in zip(proposals, targets, strict=True):
            gt_boxes = target["boxes"].to(image_proposals.dtype)
            candidates = torch.cat([image_proposals.detach(), gt_boxes])
            if len(gt_boxes) == 0:
                boxes.append(candidates[:0])
                matched.append(torch.zeros(0, dtype=torch.int64, device=candidates.device))
                continue
            match = self.matcher(box_iou(gt_boxes, candidates))
            (positive_mask,), _ = self.sampler([(match >= 0).to(torch.int64)])
            keep = torch.where(positive_mask.bool())[0]
            boxes.append(candidates[keep])
            matched.append(match[keep])
        return boxes, matched


def similarity_logits(embeddings: Tensor, reference_embeddings: Tensor) -> Tensor:
    """(N, 1 + M) logits: column 0 is a constant 0 for "new object", then raw dot products."""
    dots = embeddings @ reference_embeddings.T
    new_object = dots.new_zeros((dots.shape[0], 1))
    return torch.cat([new_object, dots], dim=1)


def match_targets(key_instance_ids: Tensor, ref_instance_ids: Tensor) -> Tensor:
    """For each key RoI's instance id: 1 + its index among the reference instances, else 0."""
    if ref_instance_ids.numel() == 0:
        return torch.zeros_like(key_instance_ids)
    same = key_instance_ids[:, None] == ref_instance_ids[None, :]
    found = same.any(dim=1)
    first_index = same.to(torch.int64).argmax(dim=1)
    return torch.where(found, first_index + 1, torch.zeros_like(first_index))
