"""ResNet-3D pathways as MMAction2 builds them (ResNet3d / ResNet3dPathway), named as its state
dicts are: every conv is a ConvModule-like `conv` (+ `bn`) pair, so `layer1.0.conv1.conv.weight`,
`layer1.0.conv1.bn.running_mean`, `layer1.0.downsample.conv.weight`, `conv1_lateral.conv.weight`.

- Stem `conv1`: conv (kT, 7, 7), stride (1, 2, 2), padding half the kernel, BN, ReLU; then a
  (1, 3, 3) max pool of stride (1, 2, 2) (`maxpool`, no parameters).
- Stages `layer1..layer4` of Bottleneck3d blocks, widths 1x, 2x, 4x, 8x the stem's, expansion 4,
  'pytorch' style (the spatial stride on the (1,3,3) conv2). An inflated block's conv1 is (3,1,1)
  (MMAction2's '3x1x1' inflate style), else 1x1x1. The first block of a stage has a 1x1x1
  `downsample` conv + BN when its stride or width changes. No temporal strides anywhere.
- A slow pathway with lateral fusion also owns the fast -> slow lateral convs (`conv1_lateral`,
  `layer1_lateral`..`layer3_lateral`: conv only, kernel (k,1,1), stride (alpha,1,1), from C_fast
  to 2 C_fast channels), and its stages take the concatenated width (e.g. layer1 in 64 + 16).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

EXPANSION = 4  # a bottleneck's output is 4x its width
LATERAL_WIDENING = 2  # a lateral conv doubles the fast pathway's channels


class ConvBN3d(nn.Module):
    """Conv3d (no bias) -> BatchNorm3d -> optional ReLU, named `conv` and `bn` as mmcv's
    ConvModule; with_bn=False keeps the conv alone (the lateral convs)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: Sequence[int],
        stride: Sequence[int] = (1, 1, 1),
        padding: Sequence[int] = (0, 0, 0),
        relu: bool = True,
        with_bn: bool = True,
    ):
        super().__init__()
        self.conv = nn.Conv3d(
            in_channels, out_channels, tuple(kernel), tuple(stride), tuple(padding), bias=False
        )
        self.bn = nn.BatchNorm3d(out_channels) if with_bn else None
        self.relu = nn.ReLU(inplace=True) if relu else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.relu is not None:
            x = self.relu(x)
        return x


class Bottleneck3d(nn.Module):
    """1x1x1 (or (3,1,1) when inflated) -> (1,3,3) with the spatial stride -> 1x1x1 to 4x the
    width; the shortcut is `downsample` when given; ReLU after the sum."""

    def __init__(
        self,
        in_channels: int,
        width: int,
        spatial_stride: int = 1,
        inflate: bool = False,
        downsample: nn.Module | None = None,
    ):
        super().__init__()
        kernel_t = 3 if inflate else 1
        self.conv1 = ConvBN3d(in_channels, width, (kernel_t, 1, 1), padding=(kernel_t // 2, 0, 0))
        self.conv2 = ConvBN3d(
            width, width, (1, 3, 3), stride=(1, spatial_stride, spatial_stride), padding=(0, 1, 1)
        )
        self.conv3 = ConvBN3d(width, width * EXPANSION, (1, 1, 1), relu=False)
        self.downsample = downsample
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.conv3(self.conv2(self.conv1(x)))
        return self.relu(out + shortcut)


def make_stage(
    in_channels: int, width: int, blocks: int, spatial_stride: int, inflate: bool
) -> nn.Sequential:
    """One residual stage (`layerN`): its first block downsamples when the stride or the width
    changes; every block of the stage is inflated alike (MMAction2's per-stage flag)."""
    out_channels = width * EXPANSION
    downsample = None
    if spatial_stride != 1 or in_channels != out_channels:
        downsample = ConvBN3d(
            in_channels,
            out_channels,
            (1, 1, 1),
            stride=(1, spatial_stride, spatial_stride),
            relu=False,
        )
    layers = [Bottleneck3d(in_channels, width, spatial_stride, inflate, downsample)]
    layers += [Bottleneck3d(out_channels, width, 1, inflate) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class ResNet3dPathway(nn.Module):
    """One pathway: stem `conv1` + `maxpool`, `layer1..layer4`; with `lateral_from` (the fast
    pathway's stem width) also the lateral convs that bring the fast pathway's maps in, and
    stages widened to take them. `forward` runs the pathway alone (SlowOnly); SlowFast drives
    the stages of both pathways itself (models.action.backbone)."""

    def __init__(
        self,
        base_channels: int,
        stage_blocks: Sequence[int],
        stem_kernel: Sequence[int],
        spatial_strides: Sequence[int],
        inflate: Sequence[int],
        lateral_from: int | None = None,
        lateral_kernel: int = 7,
        speed_ratio: int = 4,
    ):
        super().__init__()
        self.conv1 = ConvBN3d(
            3,
            base_channels,
            stem_kernel,
            stride=(1, 2, 2),
            padding=tuple(k // 2 for k in stem_kernel),
        )
        self.maxpool = nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        self.stage_names = [f"layer{i + 1}" for i in range(len(stage_blocks))]
        self.lateral_names: list[str] = []
        if lateral_from is not None:
            self._add_lateral("conv1_lateral", lateral_from, lateral_kernel, speed_ratio)
        in_channels = base_channels
        for index, blocks in enumerate(stage_blocks):
            width = base_channels * 2**index
            extra = self._lateral_channels(lateral_from, index)
            stage = make_stage(
                in_channels + extra, width, blocks, spatial_strides[index], bool(inflate[index])
            )
            self.add_module(self.stage_names[index], stage)
            in_channels = width * EXPANSION
            is_last = index == len(stage_blocks) - 1
            if lateral_from is not None and not is_last:  # the last stage fuses nothing
                fast_channels = lateral_from * 2**index * EXPANSION
                name = f"layer{index + 1}_lateral"
                self._add_lateral(name, fast_channels, lateral_kernel, speed_ratio)

    def _add_lateral(self, name: str, fast_channels: int, kernel: int, speed_ratio: int) -> None:
        conv = ConvBN3d(
            fast_channels,
            fast_channels * LATERAL_WIDENING,
            (kernel, 1, 1),
            stride=(speed_ratio, 1, 1),
            padding=(kernel // 2, 0, 0),
            relu=False,
            with_bn=False,
        )
        self.add_module(name, conv)
        self.lateral_names.append(name)

    @staticmethod
    def _lateral_channels(lateral_from: int | None, stage: int) -> int:
        """Channels the lateral conv before `stage` adds: twice the fast pathway's width
        there (its stem's for stage 0, its previous stage's output after that)."""
        if lateral_from is None:
            return 0
        fast_channels = lateral_from if stage == 0 else lateral_from * 2 ** (stage - 1) * EXPANSION
        return fast_channels * LATERAL_WIDENING

    @property
    def stages(self) -> list[nn.Module]:
        return [getattr(self, name) for name in self.stage_names]

    def stem(self, x: Tensor) -> Tensor:
        return self.maxpool(self.conv1(x))

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x


def fuse_lateral(slow: Tensor, fast: Tensor, lateral: nn.Module) -> Tensor:
    """The slow maps with the fast maps' lateral conv appended along the channels."""
    return torch.cat((slow, lateral(fast)), dim=1)
