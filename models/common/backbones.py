"""Backbones with a feature pyramid, shared by the detection-style families.

Every backbone here returns an OrderedDict of feature maps '0', '1', '2', '3' (strides 4, 8, 16,
32) and 'pool' (stride 64), all with `out_channels` channels: what torchvision's RPN, anchor
generator and MultiScaleRoIAlign expect.

- 'resnet50_fpn': torchvision's ResNet-50 + FPN, with torchvision's parameter names, so that the
  public torchvision detection weights load as they are.
- 'small': a narrow ResNet-style trunk (basic residual blocks) + FPN, about 2M parameters, for
  training and serving on a CPU.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from torch import Tensor, nn
from torchvision.models import resnet50
from torchvision.models.detection.backbone_utils import BackboneWithFPN

# name -> builder(fpn_channels=, trainable_layers=): the one place a backbone is registered. A
# family that brings its own (Swin, say) calls register_backbone when its package loads.
_BUILDERS: dict[str, Callable[..., BackboneWithFPN]] = {}


def register_backbone(name: str, builder: Callable[..., BackboneWithFPN]) -> None:
    _BUILDERS[name] = builder


def backbone_names() -> tuple[str, ...]:
    return tuple(_BUILDERS)


# The four trunk stages fed to the FPN, under the names torchvision gives them.
_RETURN_LAYERS = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}
_RESNET50_STAGE_CHANNELS = [256, 512, 1024, 2048]
# ResNet stages from the top down, as torchvision counts "trainable layers".
_RESNET_STAGES_TOP_DOWN = ["layer4", "layer3", "layer2", "layer1", "conv1"]

SMALL_STEM_WIDTH = 16
SMALL_WIDTHS = (32, 64, 128, 256)
SMALL_BLOCKS = (1, 2, 2, 1)


def build_backbone(
    name: str,
    *,
    fpn_channels: int = 256,
    trainable_layers: int = 5,
    bn_eps: float = 1e-5,
) -> BackboneWithFPN:
    """The backbone registered as `name` (see backbone_names()), randomly initialised.

    trainable_layers: how many ResNet-50 stages, counted from the top, get gradients (0-5), as
    torchvision counts them; the small backbone always trains all of its layers.
    bn_eps: epsilon of the trunk's batch norms. torchvision's legacy COCO Mask R-CNN weights were
    trained with 0.0; their converter sets it so that outputs match torchvision's.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(_BUILDERS)}")
    backbone = _BUILDERS[name](fpn_channels=fpn_channels, trainable_layers=trainable_layers)
    set_batchnorm_eps(backbone.body, bn_eps)
    return backbone


def resnet50_fpn(*, fpn_channels: int = 256, trainable_layers: int = 5) -> BackboneWithFPN:
    """torchvision's ResNet-50-FPN as maskrcnn_resnet50_fpn(weights=None) builds it.

    Plain BatchNorm2d, not FrozenBatchNorm2d, so that the state dict has that model's names,
    num_batches_tracked included; freeze_batchnorm() gives the frozen behaviour when wanted.
    """
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in 0..5, got {trainable_layers}")
    trunk = resnet50(weights=None, norm_layer=nn.BatchNorm2d)
    trained = _RESNET_STAGES_TOP_DOWN[:trainable_layers]
    if trainable_layers == 5:
        trained.append("bn1")
    for name, parameter in trunk.named_parameters():
        if not any(name.startswith(stage) for stage in trained):
            parameter.requires_grad_(False)
    return BackboneWithFPN(trunk, _RETURN_LAYERS, _RESNET50_STAGE_CHANNELS, fpn_channels)


def small_fpn(*, fpn_channels: int = 64) -> BackboneWithFPN:
    """The small trunk + FPN; same output contract as resnet50_fpn()."""
    trunk = small_trunk()
    return BackboneWithFPN(trunk, _RETURN_LAYERS, list(SMALL_WIDTHS), fpn_channels)


def small_trunk(
    stem_width: int = SMALL_STEM_WIDTH,
    widths: tuple[int, ...] = SMALL_WIDTHS,
    blocks: tuple[int, ...] = SMALL_BLOCKS,
) -> nn.Sequential:
    """A narrow ResNet: a stride-4 stem of two 3x3 convs, then four stages of basic blocks.

    The stem uses two cheap stride-2 3x3 convs instead of ResNet's 7x7 + max pool: at the small
    input sizes this model runs at, the 7x7 conv would be most of the cost.
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["stem"] = nn.Sequential(
        _conv_bn_relu(3, stem_width, stride=2), _conv_bn_relu(stem_width, widths[0], stride=2)
    )
    in_width = widths[0]
    for stage, (width, count) in enumerate(zip(widths, blocks, strict=True), start=1):
        stride = 1 if stage == 1 else 2
        stage_blocks = [BasicBlock(in_width, width, stride)]
        stage_blocks += [BasicBlock(width, width, 1) for _ in range(count - 1)]
        layers[f"layer{stage}"] = nn.Sequential(*stage_blocks)
        in_width = width
    trunk = nn.Sequential(layers)
    _init_trunk(trunk)
    return trunk


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _init_trunk(trunk: nn.Module) -> None:
    for module in trunk.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    # Each residual branch starts as zero, so every block starts as the identity: the usual
    # trick that lets a ResNet train from scratch with a high learning rate.
    for module in trunk.modules():
        if isinstance(module, BasicBlock):
            nn.init.zeros_(module.bn2.weight)


def set_batchnorm_eps(module: nn.Module, eps: float) -> None:
    for child in module.modules():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            child.eps = eps


def freeze_batchnorm(module: nn.Module) -> None:
    """Batch norms of `module` to eval mode with no gradients: statistics stay as loaded.

    Call it after every model.train(): train() switches them back.
    """
    for child in module.modules():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            child.eval()
            child.weight.requires_grad_(False)
            child.bias.requires_grad_(False)


def count_parameters(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


register_backbone("resnet50_fpn", resnet50_fpn)
register_backbone(
    "small", lambda *, fpn_channels, trainable_layers: small_fpn(fpn_channels=fpn_channels)
)
