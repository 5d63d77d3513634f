"""Building blocks of STCN, with the reference's module names so that its checkpoint loads.

- ResNet trunks (`resnet_stem`, `resnet_stage`): torchvision's layout (v1.5: the stride sits on
  the 3x3 conv). The reference's key encoder is torchvision's ResNet-50 (convs without bias);
  its value encoder is a modified ResNet-18 whose convs all carry a bias: `bias` picks which.
- `ResBlock`, `UpsampleBlock`: pre-activation residual blocks of the decoder and fuser.
- `CBAM`: channel then spatial attention (Woo et al., ECCV 2018), as STCN's fuser uses it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class BasicBlock(nn.Module):
    """Two 3x3 convs with batch norm and a shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1, bias: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride, 1, bias=bias)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=bias)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(in_channels, planes, stride, bias)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand to 4x planes, with a shortcut (ResNet-50)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, bias: bool = False):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=bias)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=bias)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=bias)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(in_channels, out_channels, stride, bias)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
}


def _projection(in_channels: int, out_channels: int, stride: int, bias: bool) -> nn.Module | None:
    """The 1x1 conv + BN shortcut, only where the shape changes (named downsample.0 / .1)."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride, bias=bias), nn.BatchNorm2d(out_channels)
    )


def resnet_stage(
    block: str, in_channels: int, planes: int, count: int, stride: int, bias: bool
) -> nn.Sequential:
    """`count` blocks; the first one changes the stride and width."""
    block_type = BLOCKS[block]
    blocks = [block_type(in_channels, planes, stride, bias)]
    width = planes * block_type.expansion
    blocks += [block_type(width, planes, 1, bias) for _ in range(count - 1)]
    return nn.Sequential(*blocks)


def init_resnet(module: nn.Module) -> None:
    """He init of convs, unit batch norms: torchvision's ResNet init, for training from scratch.

    Skipped on the meta device (shape-only builds): there it would only cost time.
    """
    if any(parameter.is_meta for parameter in module.parameters()):
        return
    for child in module.modules():
        if isinstance(child, nn.Conv2d):
            nn.init.kaiming_normal_(child.weight, mode="fan_out", nonlinearity="relu")
            if child.bias is not None:
                nn.init.zeros_(child.bias)
        elif isinstance(child, nn.BatchNorm2d):
            nn.init.ones_(child.weight)
            nn.init.zeros_(child.bias)


class ResBlock(nn.Module):
    """x + conv(relu(conv(relu(x)))); a 3x3 conv on the shortcut where the width changes."""

    def __init__(self, in_channels: int, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or in_channels
        self.downsample = None
        if in_channels != out_channels:
            self.downsample = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        residual = self.conv2(F.relu(self.conv1(F.relu(x))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return shortcut + residual


class UpsampleBlock(nn.Module):
    """x2 bilinear upsampling of the coarse feature plus a 3x3 conv of the skip feature."""

    def __init__(self, skip_channels: int, up_channels: int, out_channels: int):
        super().__init__()
        self.skip_conv = nn.Conv2d(skip_channels, up_channels, 3, padding=1)
        self.out_conv = ResBlock(up_channels, out_channels)

    def forward(self, skip: Tensor, coarse: Tensor, frame_of: Tensor | None = None) -> Tensor:
        """skip (1 or K, ...) for a coarse (K, ...), or skip (B, ...) of B frames with frame_of
        (K,) giving each coarse row's frame: the skip conv runs once a frame either way."""
        skip = self.skip_conv(skip)
        if frame_of is not None:
            skip = skip[frame_of]
        # Upsample to the skip's size rather than by x2: both are equal for padded inputs, and
        # this stays correct for odd feature sizes.
        upsampled = F.interpolate(
            coarse, size=skip.shape[-2:], mode="bilinear", align_corners=False
        )
        return self.out_conv(skip + upsampled)


class ChannelGate(nn.Module):
    """Channel attention: a shared MLP on the average- and max-pooled descriptors."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        # Index 0 (Flatten) and 2 (ReLU) hold no weights: the reference's names are mlp.1, mlp.3.
        self.mlp = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels, channels // reduction),
            nn.ReLU(),
            nn.Linear(channels // reduction, channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        logits = self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3)))
        return x * torch.sigmoid(logits)[:, :, None, None]


class SpatialConv(nn.Module):
    """A bare 7x7 conv; a module of its own only to give the reference's name `spatial.conv`."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=(kernel_size - 1) // 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class SpatialGate(nn.Module):
    """Spatial attention: a 7x7 conv on the channel-wise max and mean."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.spatial = SpatialConv(kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(pooled))


class CBAM(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        # Attribute names as in the reference (its state dict says ChannelGate / SpatialGate).
        self.ChannelGate = ChannelGate(channels, reduction)
        self.SpatialGate = SpatialGate()

    def forward(self, x: Tensor) -> Tensor:
        return self.SpatialGate(self.ChannelGate(x))


class FeatureFusionBlock(nn.Module):
    """Fuses the value trunk's f16 with the key encoder's f16: ResBlock, CBAM residual, ResBlock."""

    def __init__(self, in_channels: int, out_channels: int, reduction: int = 16):
        super().__init__()
        self.block1 = ResBlock(in_channels, out_channels)
        self.attention = CBAM(out_channels, reduction)
        self.block2 = ResBlock(out_channels, out_channels)

    def forward(self, value_f16: Tensor, key_f16: Tensor) -> Tensor:
        x = self.block1(torch.cat([value_f16, key_f16], dim=1))
        return self.block2(x + self.attention(x))
