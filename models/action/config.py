"""The action detector's configuration: the `architecture` dict of an "action" checkpoint.

Defaults are MMAction2's release slowfast-acrn_kinetics400-pretrained-r50_8xb8-8x8x1-cosine-10e_
ava21-rgb (v1.2.0): a SlowFast R50 whose slow pathway sees every 4th frame of the 32-frame clip
(resample rate tau 4) and whose fast pathway sees all of them (speed ratio alpha 4) with an 8th of
the channels (channel ratio beta_inv 8), fused slow <- fast after the stem and after res2..res4 by
lateral (7,1,1) convolutions of stride alpha; res5 keeps stride 1, so the maps are at 1/16. On
them: RoIAlign 8x8 (aligned, every box on the key frame) after an average over time, the ACRN
head (the actor's feature tiled over the frame, concatenated with the context, a 1x1x1 and a
(1,3,3) conv), and the AVA box head (average over time, max over space, dropout 0.5, one Linear to
81 logits: row 0 is the "background" slot, never scored; rows 1..80 are AVA action ids, sigmoid,
multi-label). Clips: 32 frames at interval 2 around the key frame, test short side 256, the
ImageNet mean and std (the release's [123.675, 116.28, 103.53] / [58.395, 57.12, 57.375] on 0..255
values, ours on 0..1).

`ActionConfig.slowonly_r50()` is the release slowonly_kinetics400-pretrained-r50_8xb16-4x16x1-
20e_ava21-rgb (4 frames at interval 16, one pathway, no ACRN head); `ActionConfig.small()` is
the same architecture, module names included, sized for CPU training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from models.action.feature_bank import OPERATORS, fbo_channels
from models.common.config import ManifestConfig, require
from models.common.image import IMAGENET_MEAN, IMAGENET_STD

BACKBONES = ("slowfast", "slowonly")
POOL_MODES = ("avg", "max")
# Bottleneck blocks per stage for each depth. 50 and 101 are the ResNet-3D depths MMAction2
# builds with bottlenecks; 26 and 14 are the same bottleneck stages with 2 and 1 blocks each
# (ResNet-26/14 in timm's naming), for a model that trains on the CPU with the same names.
STAGE_BLOCKS = {14: (1, 1, 1, 1), 26: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
STEM_STRIDE = 4  # the stem's conv (stride 2) and max pool (stride 2)
AVA_CLASSES = 81  # background slot + AVA's 80 action ids
# `vidserve train action --backbone`: overrides of the small configuration. SlowOnly as its
# release (one pathway, no laterals, no ACRN) with 4 frames 4 apart: a 13-frame span, about the
# SlowFast clip's 16 at the synthetic world's 8 fps.
SMALL_BACKBONES: dict[str, dict[str, Any]] = {
    "slowfast": {},
    "slowonly": dict(backbone="slowonly", lateral=False, acrn=False, clip_len=4, frame_interval=4),
}


@dataclass(frozen=True)
class ActionConfig(ManifestConfig):
    backbone: str = "slowfast"  # "slowfast" (two pathways, lateral fusion) or "slowonly"
    depth: int = 50
    base_channels: int = 64  # the slow (or only) pathway's stem width; stages x2 each, x4 out

    # SlowFast: the slow pathway reads every resample_rate-th frame, the fast one every
    # (resample_rate // speed_ratio)-th, with base_channels // channel_ratio channels.
    resample_rate: int = 4  # tau
    speed_ratio: int = 4  # alpha
    channel_ratio: int = 8  # beta_inv
    lateral: bool = True  # fast -> slow fusion after the stem and res2..res4
    lateral_kernel: int = 7  # temporal kernel of the lateral convs (stride speed_ratio)

    # Which stages' bottlenecks have a temporal (3,1,1) first conv: 1 = inflated.
    slow_inflate: tuple[int, ...] = (0, 0, 1, 1)
    fast_inflate: tuple[int, ...] = (1, 1, 1, 1)
    slow_stem_kernel: tuple[int, ...] = (1, 7, 7)
    fast_stem_kernel: tuple[int, ...] = (5, 7, 7)
    spatial_strides: tuple[int, ...] = (1, 2, 2, 1)  # res5 at stride 1: features at 1/16

    # The clip around a key frame: clip_len frames, frame_interval apart.
    clip_len: int = 32
    frame_interval: int = 2

    # RoI features: each pathway averaged (or max-pooled) over time, concatenated, RoIAlign.
    roi_output_size: int = 8
    roi_sampling_ratio: int = 0  # 0: adaptive, ceil(bin size) samples per bin (mmcv's default)
    roi_aligned: bool = True
    temporal_pool: str = "avg"

    acrn: bool = True  # the ACRN shared head between the RoI features and the box head

    # AVA box head: row 0 of the classifier is the background slot, dropped when scoring.
    num_classes: int = AVA_CLASSES
    head_temporal_pool: str = "avg"
    head_spatial_pool: str = "max"
    dropout: float = 0.5

    # The online long-term feature bank (models.action.feature_bank): the operator reading an
    # actor's past features ("none": no bank, as the releases), the past seconds it reads, the
    # features kept a second, and the non-local operator's width.
    lfb: str = "none"
    lfb_window_s: float = 4.0
    lfb_per_second: float = 1.0
    lfb_latent: int = 128

    # Test-time input: resize to this short side (keep ratio), then normalise.
    test_short_side: int = 256
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        require(self.backbone in BACKBONES, f"backbone must be one of {BACKBONES}")
        require(self.depth in STAGE_BLOCKS, f"depth must be one of {sorted(STAGE_BLOCKS)}")
        require(self.base_channels >= 1, "base_channels must be >= 1")
        require(len(self.spatial_strides) == 4, "spatial_strides: one per stage (4)")
        require(all(s in (1, 2) for s in self.spatial_strides), "spatial strides are 1 or 2")
        require(len(self.slow_inflate) == 4, "slow_inflate: one flag per stage (4)")
        require(all(f in (0, 1) for f in self.slow_inflate), "slow_inflate flags are 0 or 1")
        require(len(self.slow_stem_kernel) == 3, "slow_stem_kernel is (t, h, w)")
        require(all(k % 2 == 1 for k in self.slow_stem_kernel), "stem kernels are odd")
        require(self.clip_len >= 1 and self.frame_interval >= 1, "clip_len, frame_interval >= 1")
        if self.backbone == "slowfast":
            self._check_slowfast()
        require(self.roi_output_size >= 1, "roi_output_size must be >= 1")
        require(self.roi_sampling_ratio >= 0, "roi_sampling_ratio must be >= 0")
        require(self.temporal_pool in POOL_MODES, f"temporal_pool must be one of {POOL_MODES}")
        require(self.head_temporal_pool in POOL_MODES, "head_temporal_pool: avg or max")
        require(self.head_spatial_pool in POOL_MODES, "head_spatial_pool: avg or max")
        require(self.num_classes >= 2, "num_classes counts the background slot: >= 2")
        require(0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)")
        require(self.lfb in OPERATORS, f"lfb must be one of {OPERATORS}")
        require(self.lfb_window_s > 0, "lfb_window_s must be > 0")
        require(self.lfb_per_second > 0, "lfb_per_second must be > 0")
        require(self.lfb_latent >= 1, "lfb_latent must be >= 1")
        require(self.test_short_side >= self.feature_stride, "test_short_side below the stride")
        require(len(self.image_mean) == 3 and len(self.image_std) == 3, "mean/std: 3 channels")
        require(all(s > 0 for s in self.image_std), "image_std must be > 0")

    def _check_slowfast(self) -> None:
        require(self.resample_rate >= 1 and self.speed_ratio >= 1, "tau, alpha must be >= 1")
        require(
            self.resample_rate % self.speed_ratio == 0,
            "resample_rate must be a multiple of speed_ratio (the fast pathway's frame step)",
        )
        require(self.channel_ratio >= 1, "channel_ratio must be >= 1")
        require(
            self.base_channels % self.channel_ratio == 0,
            "base_channels must divide by channel_ratio (the fast pathway's width)",
        )
        require(self.lateral_kernel % 2 == 1, "lateral_kernel must be odd")
        require(len(self.fast_inflate) == 4, "fast_inflate: one flag per stage (4)")
        require(all(f in (0, 1) for f in self.fast_inflate), "fast_inflate flags are 0 or 1")
        require(len(self.fast_stem_kernel) == 3, "fast_stem_kernel is (t, h, w)")
        require(all(k % 2 == 1 for k in self.fast_stem_kernel), "stem kernels are odd")
        require(
            self.clip_len % self.resample_rate == 0,
            "clip_len must be a multiple of resample_rate (whole slow frames)",
        )

    # ---- derived sizes ----------------------------------------------------------------------
    @property
    def stage_blocks(self) -> tuple[int, ...]:
        return STAGE_BLOCKS[self.depth]

    @property
    def fast_base_channels(self) -> int:
        return self.base_channels // self.channel_ratio

    @property
    def pathway_out_channels(self) -> tuple[int, ...]:
        """Channels of res5 per pathway: (slow, fast) or (only,); bottlenecks expand by 4."""
        top = 4 * 8  # res5 is 8x the stem width, times the bottleneck expansion
        if self.backbone == "slowfast":
            return (self.base_channels * top, self.fast_base_channels * top)
        return (self.base_channels * top,)

    @property
    def feature_channels(self) -> int:
        """Channels of the RoI features: the pathways' res5 concatenated."""
        return sum(self.pathway_out_channels)

    @property
    def head_in_channels(self) -> int:
        """The classifier's input: the actor's feature (ACRN maps 2C, actor tiled + context,
        back to C) and what the feature-bank operator adds."""
        return self.feature_channels + fbo_channels(
            self.lfb, self.feature_channels, self.lfb_latent
        )

    @property
    def feature_stride(self) -> int:
        return STEM_STRIDE * math.prod(self.spatial_strides)

    @property
    def num_actions(self) -> int:
        """Scored classes: the classifier's rows less the background slot."""
        return self.num_classes - 1

    @property
    def clip_span(self) -> int:
        """Frames from the clip's first to its last sampled frame, inclusive."""
        return (self.clip_len - 1) * self.frame_interval + 1

    # ---- the releases and the CPU model ----------------------------------------------------
    @classmethod
    def slowfast_acrn_r50(cls, **overrides: Any) -> ActionConfig:
        """MMAction2's SlowFast-ACRN R50 8x8x1 AVA v2.1 release (the defaults)."""
        return cls(**overrides)

    @classmethod
    def slowonly_r50(cls, **overrides: Any) -> ActionConfig:
        """MMAction2's SlowOnly R50 4x16x1 AVA v2.1 release: one pathway (module names
        `backbone.*`, no slow_path/fast_path), no laterals, no ACRN; 4 frames at interval 16."""
        settings: dict[str, Any] = dict(
            backbone="slowonly", lateral=False, acrn=False, clip_len=4, frame_interval=16
        )
        settings.update(overrides)
        return cls(**settings)

    @classmethod
    def small(cls, num_classes: int = AVA_CLASSES, **overrides: Any) -> ActionConfig:
        """SlowFast-ACRN as the release, sized for the CPU: 2 bottlenecks a stage (depth 26),
        a quarter of the width (slow stem 16 channels, fast 2, res5 512 + 64), 16-frame clips at
        interval 1 (slow pathway 4 frames), test short side 240 (the synthetic world's frames).
        `num_classes` counts the background slot, as the release's 81."""
        settings: dict[str, Any] = dict(
            depth=26,
            base_channels=16,
            clip_len=16,
            frame_interval=1,
            num_classes=num_classes,
            test_short_side=240,
        )
        settings.update(overrides)
        return cls(**settings)
