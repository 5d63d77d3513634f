"""Swin Transformer backbones with a feature pyramid, on torchvision's Swin Transformer.

The trunk is torchvision's `SwinTransformer.features` (patch embedding, the four stages of shifted
window blocks and the patch merges between them), plus what the detection release of Swin adds:
a LayerNorm on each of the four stage outputs (`norms.0..3`, the release's `backbone.norm0..3`).
torchvision's classification norm and head are not built. The outputs feed torchvision's FPN, so
the backbone has the contract of models.common.backbones: feature maps '0'..'3' (strides 4..32)
and 'pool' (stride 64), `out_channels` each.

Registered sizes: 'swin_t', 'swin_s', 'swin_b' (the published configurations, window 7) and
'swin_small' (the CPU-sized one that we train here: 32 channels, depths 2-2-2-2).

The release's parameter names map onto these through models.instance.swin_weights. One
difference in computation: where a stage's padded feature map is a single 7x7 window in a
dimension, torchvision does not shift the window and the release's code does; so the two agree
wherever every stage is larger than that (checked at 256x320 and 480x640 against the release's own
code): the release's 800x1333 and our small model's 320x240 (padded to 320x256) are.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import Tensor, nn
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from models.common.backbones import register_backbone


@dataclass(frozen=True)
class SwinSize:
    embed_dim: int
    depths: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int]
    window_size: int = 7
    drop_path: float = 0.2  # stochastic depth at the last block (linear from 0), as the release

    def stage_channels(self) -> list[int]:
        return [self.embed_dim * 2**stage for stage in range(4)]


SWIN_SIZES = {
    "swin_t": SwinSize(96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "swin_s": SwinSize(96, (2, 2, 18, 2), (3, 6, 12, 24), drop_path=0.3),
    "swin_b": SwinSize(128, (2, 2, 18, 2), (4, 8, 16, 32), drop_path=0.3),
    # Head width 16 as in the published sizes; about 1.5M parameters in the trunk, and at 320x256
    # input about the multiply-adds of the small ResNet trunk of models.common.backbones.
    "swin_small": SwinSize(32, (2, 2, 2, 2), (2, 4, 8, 16), drop_path=0.1),
}


class SwinTrunk(nn.Module):
    """torchvision's Swin features + a LayerNorm per stage output; NCHW maps '0'..'3'."""

    def __init__(self, size: SwinSize):
        super().__init__()
        swin = SwinTransformer(
            patch_size=[4, 4],
            embed_dim=size.embed_dim,
            depths=list(size.depths),
            num_heads=list(size.num_heads),
            window_size=[size.window_size] * 2,
            stochastic_depth_prob=size.drop_path,
        )
        self.features = swin.features  # the classification norm, pool and head are dropped
        self.norms = nn.ModuleList(nn.LayerNorm(c) for c in size.stage_channels())

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        outputs: OrderedDict[str, Tensor] = OrderedDict()
        x = self.features[0](images)  # patch embedding, channels last (N, H/4, W/4, C)
        for stage in range(4):
            if stage > 0:
                x = self.features[2 * stage](x)  # patch merging: half the size, twice the channels
            x = self.features[2 * stage + 1](x)
            outputs[str(stage)] = self.norms[stage](x).permute(0, 3, 1, 2).contiguous()
        return outputs


class SwinFPN(nn.Module):
    """A Swin trunk and torchvision's FPN: the interface of torchvision's BackboneWithFPN
    (`body`, `fpn`, `out_channels`), so the detection heads take either."""

    def __init__(self, size: SwinSize, fpn_channels: int):
        super().__init__()
        self.body = SwinTrunk(size)
        self.fpn = FeaturePyramidNetwork(
            size.stage_channels(), fpn_channels, extra_blocks=LastLevelMaxPool()
        )
        self.out_channels = fpn_channels

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        return self.fpn(self.body(images))


def swin_fpn(name: str, *, fpn_channels: int = 256, trainable_layers: int = 5) -> SwinFPN:
    """The registered Swin size `name` with an FPN; all layers train (trainable_layers is
    ResNet's notion and is accepted for the common builder signature only)."""
    del trainable_layers
    return SwinFPN(SWIN_SIZES[name], fpn_channels)


def _register() -> None:
    for name in SWIN_SIZES:
        register_backbone(name, lambda name=name, **kw: swin_fpn(name, **kw))


_register()
