"""From backbone maps and actor boxes to class logits: MMAction2's AVARoIHead with its
SingleRoIExtractor3D, ACRNHead (`roi_head.shared_head`) and BBoxHeadAVA (`roi_head.bbox_head`).

Boxes are RoIs (N, 5): [batch index, x1, y1, x2, y2] in the clip's input pixels, all on the key
frame (the clip's centre), as mmdet's bbox2roi writes them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from models.action.config import ActionConfig
from models.action.feature_bank import BankBatch, build_fbo
from models.action.resnet3d import ConvBN3d


def pool_time(feature: Tensor, mode: str, length: int) -> Tensor:
    """(B, C, T, H, W) -> (B, C, 1, H, W). MMAction2 first resamples every pathway to the longest
    one's length (nearest) and then pools; when that length is a whole multiple of T, the
    resampling repeats each frame equally often, which changes neither the mean nor the max, so
    it is skipped (no copy of the slow pathway's 2048 channels at 4x its length)."""
    if feature.shape[2] != length and length % feature.shape[2] != 0:
        size = (length, *feature.shape[3:])
        feature = F.interpolate(feature, size=size, mode="nearest")
    if mode == "avg":
        return feature.mean(dim=2, keepdim=True)
    return feature.amax(dim=2, keepdim=True)


class RoIExtractor3D(nn.Module):
    """Each pathway pooled over time, concatenated along the channels, then RoIAlign (aligned,
    average of adaptive samples per bin) on that single frame of features. Returns the RoI
    features (N, C, 1, S, S) and the pooled whole-clip features (B, C, 1, H, W) (ACRN's
    context)."""

    def __init__(self, config: ActionConfig):
        super().__init__()
        self.output_size = config.roi_output_size
        self.spatial_scale = 1.0 / config.feature_stride
        self.sampling_ratio = config.roi_sampling_ratio
        self.aligned = config.roi_aligned
        self.temporal_pool = config.temporal_pool

    def forward(self, features: tuple[Tensor, ...], rois: Tensor) -> tuple[Tensor, Tensor]:
        length = max(feature.shape[2] for feature in features)
        pooled = [pool_time(feature, self.temporal_pool, length) for feature in features]
        context = torch.cat(pooled, dim=1)
        frame = context[:, :, 0]
        roi_features = roi_align(
            frame,
            rois.to(frame.dtype),
            self.output_size,
            self.spatial_scale,
            self.sampling_ratio,
            aligned=self.aligned,
        )
        return roi_features.unsqueeze(2), context


class ACRNHead(nn.Module):
    """Actor-Centric Relation Network (arXiv 1807.10982) as MMAction2's ACRNHead with one 3x3
    conv: the actor's RoI feature max-pooled to a vector, tiled over its clip's feature map,
    concatenated with that map (2C channels), `conv1` 1x1x1 to C + BN + ReLU, `conv2` (1,3,3)
    + BN + ReLU. Returns (N, C, 1, H, W): one relation map per actor."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = ConvBN3d(2 * channels, channels, (1, 1, 1))
        self.conv2 = ConvBN3d(channels, channels, (1, 3, 3), padding=(0, 1, 1))

    def forward(self, roi_features: Tensor, context: Tensor, rois: Tensor) -> Tensor:
        actor = roi_features.amax(dim=(2, 3, 4), keepdim=True)
        actor_context = context[rois[:, 0].long()]
        tiled = actor.expand(-1, -1, *actor_context.shape[2:])
        relation = torch.cat((tiled, actor_context), dim=1)
        return self.conv2(self.conv1(relation))


class AVABoxHead(nn.Module):
    """BBoxHeadAVA: dropout (before pooling), pool over time then over space, `fc_cls` to
    num_classes logits. Row 0 is the background slot: trained as nothing, dropped when
    scoring; the rest are independent (sigmoid) action scores.

    With a feature bank (config.lfb), the pooled actor feature is concatenated with what the
    bank operator `fbo` reads from the actor's bank, and the dropout moves after that (as
    MMAction2's LFB head has it): `classify` takes the pooled features, so a trainer may cache
    them."""

    def __init__(self, config: ActionConfig):
        super().__init__()
        self.temporal_pool = config.head_temporal_pool
        self.spatial_pool = config.head_spatial_pool
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else None
        self.fbo = build_fbo(config.lfb, config.feature_channels, config.lfb_latent)
        self.fc_cls = nn.Linear(config.head_in_channels, config.num_classes)

    def pool(self, x: Tensor) -> Tensor:
        """(N, C, T, H, W) -> the actor features (N, C)."""
        x = x.mean(dim=2) if self.temporal_pool == "avg" else x.amax(dim=2)
        return x.mean(dim=(2, 3)) if self.spatial_pool == "avg" else x.amax(dim=(2, 3))

    def forward(self, x: Tensor, bank: BankBatch | None = None) -> Tensor:
        if self.fbo is None:
            if self.dropout is not None:
                x = self.dropout(x)
            return self.fc_cls(self.pool(x))
        return self.classify(self.pool(x), bank)

    def classify(self, actors: Tensor, bank: BankBatch | None = None) -> Tensor:
        """Logits from pooled actor features (N, C) and, with a bank operator, their banks
        (none given: empty banks)."""
        if self.fbo is not None:
            if bank is None:
                bank = BankBatch.empty(len(actors), actors.shape[1], actors.device)
            actors = torch.cat([actors, self.fbo(actors, bank)], dim=1)
        if self.dropout is not None:
            actors = self.dropout(actors)
        return self.fc_cls(actors)


class ActionRoIHead(nn.Module):
    """`roi_head`: RoI extractor (no parameters) -> ACRN shared head (when on) -> box head."""

    def __init__(self, config: ActionConfig):
        super().__init__()
        self.bbox_roi_extractor = RoIExtractor3D(config)
        self.shared_head = ACRNHead(config.feature_channels) if config.acrn else None
        self.bbox_head = AVABoxHead(config)

    def actor_maps(self, features: tuple[Tensor, ...], rois: Tensor) -> Tensor:
        """Each actor's map (N, C, 1, S or H, S or W): its RoI features, or ACRN's relations."""
        roi_features, context = self.bbox_roi_extractor(features, rois)
        if self.shared_head is not None:
            roi_features = self.shared_head(roi_features, context, rois)
        return roi_features

    def forward(
        self, features: tuple[Tensor, ...], rois: Tensor, bank: BankBatch | None = None
    ) -> Tensor:
        return self.bbox_head(self.actor_maps(features, rois), bank)
