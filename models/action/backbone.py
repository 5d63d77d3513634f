"""The two backbones of the releases: SlowFast (`backbone.slow_path` + `backbone.fast_path`) and
SlowOnly (a single pathway, `backbone.*`). Both return a tuple of res5 maps, one per pathway,
(B, C, T', H/16, W/16), for the RoI extractor.

SlowFast, as MMAction2's ResNet3dSlowFast: the clip (B, 3, T, H, W) is subsampled in time by
nearest interpolation, every resample_rate-th frame for the slow pathway (T / tau frames) and
every (resample_rate / speed_ratio)-th for the fast one (T frames in the release). After each
pathway's stem and after each of res2..res4, the fast maps go through that stage's lateral conv
(stride alpha in time, so they match the slow pathway's length) and are appended to the slow
maps' channels. res5's outputs are not fused.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from models.action.config import ActionConfig
from models.action.resnet3d import ResNet3dPathway, fuse_lateral


def subsample_frames(clip: Tensor, step: int) -> Tensor:
    """Every step-th frame of (B, C, T, H, W), as MMAction2 takes it: nearest interpolation by
    a scale factor of 1 / step (frames 0, step, 2 step, ...)."""
    if step == 1:
        return clip
    return F.interpolate(clip, mode="nearest", scale_factor=(1.0 / step, 1.0, 1.0))


class SlowFast(nn.Module):
    def __init__(self, config: ActionConfig):
        super().__init__()
        self.resample_rate = config.resample_rate
        self.fast_step = config.resample_rate // config.speed_ratio
        self.lateral = config.lateral
        self.slow_path = ResNet3dPathway(
            config.base_channels,
            config.stage_blocks,
            config.slow_stem_kernel,
            config.spatial_strides,
            config.slow_inflate,
            lateral_from=config.fast_base_channels if config.lateral else None,
            lateral_kernel=config.lateral_kernel,
            speed_ratio=config.speed_ratio,
        )
        self.fast_path = ResNet3dPathway(
            config.fast_base_channels,
            config.stage_blocks,
            config.fast_stem_kernel,
            config.spatial_strides,
            config.fast_inflate,
        )

    def forward(self, clip: Tensor) -> tuple[Tensor, Tensor]:
        slow = self.slow_path.stem(subsample_frames(clip, self.resample_rate))
        fast = self.fast_path.stem(subsample_frames(clip, self.fast_step))
        laterals = [getattr(self.slow_path, name) for name in self.slow_path.lateral_names]
        if self.lateral:
            slow = fuse_lateral(slow, fast, laterals[0])
        stages = zip(self.slow_path.stages, self.fast_path.stages, strict=True)
        for index, (slow_stage, fast_stage) in enumerate(stages):
            slow, fast = slow_stage(slow), fast_stage(fast)
            if self.lateral and index + 1 < len(laterals):
                slow = fuse_lateral(slow, fast, laterals[index + 1])
        return slow, fast


class SlowOnly(ResNet3dPathway):
    """MMAction2's ResNet3dSlowOnly: one pathway on the clip as sampled (no temporal
    subsampling, no second max pool), its modules at the top of `backbone`."""

    def __init__(self, config: ActionConfig):
        super().__init__(
            config.base_channels,
            config.stage_blocks,
            config.slow_stem_kernel,
            config.spatial_strides,
            config.slow_inflate,
        )

    def forward(self, clip: Tensor) -> tuple[Tensor]:  # type: ignore[override]
        return (super().forward(clip),)


def build_backbone(config: ActionConfig) -> nn.Module:
    return SlowFast(config) if config.backbone == "slowfast" else SlowOnly(config)
