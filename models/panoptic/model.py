"""MaskFormer (arXiv 2107.06278) as MMDetection builds it: trunk -> pixel decoder -> transformer
decoder -> per-query class logits and mask logits.

- Trunk: the `body` of a registered backbone (models.common.backbones: torchvision's ResNet-50
  for the release, the small trunk for the CPU model), feature maps res2..res5 ('0'..'3').
- Pixel decoder (MMDetection's TransformerEncoderPixelDecoder): res5 -> 1x1 encoder_in_proj ->
  transformer encoder (post-norm, sine positions on queries and keys) -> 3x3 encoder_out_proj
  (GN, ReLU); then top-down over res4..res2: 1x1 lateral conv (GN) + nearest-upsampled coarser
  map, 3x3 output conv (GN, ReLU); a 3x3 mask_feature conv gives the stride-4 mask features.
- Transformer decoder: learned queries (query_embed as positions, zero content), post-norm
  layers of self-attention, cross-attention to the encoder's memory (sine positions on its keys)
  and an FFN; the shared final LayerNorm (post_norm) on every layer's output.
- Heads on every layer's output (deep supervision): cls_embed Linear(hidden, C + 1), "no object"
  last; mask_embed, a 3-layer MLP; mask logits = einsum(mask embedding, mask features).

Parameter names are MMDetection's, exactly: the model is `backbone` + `panoptic_head` with the
release's module tree (lateral_convs.i.conv/.gn, encoder.layers.i.self_attn.attn, ffn.layers.0.0,
norms.k, ...), and the trunk's names are torchvision's, which are the names of MMDetection's
ResNet. So the release's state dict is ours key for key (models.panoptic.mmdet_weights checks
it) and no name map can go stale. nn.MultiheadAttention is what mmcv's attention wraps as `attn`,
so its fused in_proj_weight ([q; k; v]) is the release's as it stands.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.common.backbones import build_backbone, freeze_batchnorm
from models.panoptic.config import PanopticConfig

FAMILY = "panoptic"
SINE_TEMPERATURE = 10000.0
SINE_EPS = 1e-6


# --- outputs --------------------------------------------------------------------------------------
@dataclass
class MaskFormerOutput:
    """Every decoder layer's predictions (deep supervision); the last layer's are the answer.

    layer_class_logits: (L, B, Q, C + 1), "no object" last.
    layer_mask_logits: (L, B, Q, H / 4, W / 4), on the padded batch's stride-4 grid.
    """

    layer_class_logits: Tensor
    layer_mask_logits: Tensor
    # The last decoder layer's query features (B, Q, D): a segment's appearance, for tracking.
    query_features: Tensor | None = None

    @property
    def class_logits(self) -> Tensor:
        return self.layer_class_logits[-1]

    @property
    def mask_logits(self) -> Tensor:
        return self.layer_mask_logits[-1]


# --- positions and padding ------------------------------------------------------------------------
def padding_mask(
    batch_size: int,
    padded_size: tuple[int, int],
    image_sizes: list[tuple[int, int]] | None,
    feature_size: tuple[int, int],
    device: torch.device,
) -> Tensor:
    """(B, h, w) bool, True on padding: each image's padded pixels, nearest-sampled onto the
    feature grid (as MMDetection does, so a padded batch attends as the release does)."""
    mask = torch.ones((batch_size, 1, *padded_size), device=device)
    for index, (height, width) in enumerate(image_sizes or [padded_size] * batch_size):
        mask[index, :, :height, :width] = 0
    return F.interpolate(mask, size=feature_size, mode="nearest").to(torch.bool).squeeze(1)


def sine_positions(mask: Tensor, channels: int) -> Tensor:
    """DETR's normalised sine position encoding, (B, channels, h, w): the first half encodes y,
    the second x, each as interleaved sin / cos of the position scaled to [0, 2 pi]."""
    num_feats = channels // 2
    valid = (~mask).to(torch.float32)
    y = valid.cumsum(1)
    x = valid.cumsum(2)
    y = y / (y[:, -1:, :] + SINE_EPS) * (2 * math.pi)
    x = x / (x[:, :, -1:] + SINE_EPS) * (2 * math.pi)
    steps = torch.arange(num_feats, dtype=torch.float32, device=mask.device)
    frequencies = SINE_TEMPERATURE ** (2 * (steps // 2) / num_feats)
    encoded = torch.cat(
        [_interleave_sin_cos(y, frequencies), _interleave_sin_cos(x, frequencies)], 3
    )
    return encoded.permute(0, 3, 1, 2)


def _interleave_sin_cos(position: Tensor, frequencies: Tensor) -> Tensor:
    phase = position[..., None] / frequencies
    batch, height, width, _ = phase.shape
    pairs = torch.stack([phase[..., 0::2].sin(), phase[..., 1::2].cos()], dim=4)
    return pairs.view(batch, height, width, -1)


def _tokens(feature_map: Tensor) -> Tensor:
    """(B, C, h, w) -> (B, h * w, C)."""
    return feature_map.flatten(2).permute(0, 2, 1)


# --- transformer layers (MMDetection's DETR layers, post-norm) -----------------------------------
class Attention(nn.Module):
    """mmcv's MultiheadAttention: positions added to query and key (not to the value), the
    residual added back after dropout. `attn` is torch's, batch first."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.residual_dropout = nn.Dropout(dropout)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        query_pos: Tensor | None,
        key_pos: Tensor | None,
        key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        value = key  # the value carries no position
        q = query if query_pos is None else query + query_pos
        k = key if key_pos is None else key + key_pos
        attended = self.attn(q, k, value, key_padding_mask=key_padding_mask, need_weights=False)[0]
        return query + self.residual_dropout(attended)


class FeedForward(nn.Module):
    """mmcv's FFN with two fcs: layers.0 = (Linear, ReLU, Dropout), layers.1 = Linear, then
    dropout and the residual."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)),
            nn.Linear(hidden, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.layers(x)


class EncoderLayer(nn.Module):
    """Self-attention, norm, FFN, norm."""

    def __init__(self, config: PanopticConfig):
        super().__init__()
        dim = config.hidden_dim
        self.self_attn = Attention(dim, config.num_heads, config.dropout)
        self.ffn = FeedForward(dim, config.ffn_dim, config.dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(2))

    def forward(self, x: Tensor, pos: Tensor, padding: Tensor | None) -> Tensor:
        x = self.norms[0](self.self_attn(x, x, pos, pos, padding))
        return self.norms[1](self.ffn(x))


class TransformerEncoder(nn.Module):
    def __init__(self, config: PanopticConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.encoder_layers))

    def forward(self, x: Tensor, pos: Tensor, padding: Tensor | None) -> Tensor:
        for layer in self.layers:
            x = layer(x, pos, padding)
        return x


class DecoderLayer(nn.Module):
    """Self-attention among queries, norm, cross-attention to the memory, norm, FFN, norm."""

    def __init__(self, config: PanopticConfig):
        super().__init__()
        dim = config.hidden_dim
        self.self_attn = Attention(dim, config.num_heads, config.dropout)
        self.cross_attn = Attention(dim, config.num_heads, config.dropout)
        self.ffn = FeedForward(dim, config.ffn_dim, config.dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))

    def forward(
        self,
        query: Tensor,
        query_pos: Tensor,
        memory: Tensor,
        memory_pos: Tensor,
        padding: Tensor | None,
    ) -> Tensor:
        query = self.norms[0](self.self_attn(query, query, query_pos, query_pos))
        query = self.norms[1](self.cross_attn(query, memory, query_pos, memory_pos, padding))
        return self.norms[2](self.ffn(query))


class TransformerDecoder(nn.Module):
    def __init__(self, config: PanopticConfig):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.decoder_layers))
        self.post_norm = nn.LayerNorm(config.hidden_dim)

    def forward(
        self,
        query: Tensor,
        query_pos: Tensor,
        memory: Tensor,
        memory_pos: Tensor,
        padding: Tensor | None,
    ) -> Tensor:
        """(L, B, Q, D): every layer's output through the shared final norm."""
        outputs = []
        for layer in self.layers:
            query = layer(query, query_pos, memory, memory_pos, padding)
            outputs.append(self.post_norm(query))
        return torch.stack(outputs)


# --- pixel decoder --------------------------------------------------------------------------------
class ConvGroupNorm(nn.Module):
    """mmcv's ConvModule with GN: conv (no bias: the norm has one), GroupNorm, optional ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, groups: int, relu: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False)
        self.gn = nn.GroupNorm(groups, out_channels)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.gn(self.conv(x))
        return F.relu(x, inplace=True) if self.relu else x


class TransformerEncoderPixelDecoder(nn.Module):
    def __init__(self, config: PanopticConfig, trunk_channels: list[int]):
        super().__init__()
        dim, groups = config.hidden_dim, config.group_norm_groups
        self.lateral_convs = nn.ModuleList(
            ConvGroupNorm(channels, dim, 1, groups, relu=False) for channels in trunk_channels[:-1]
        )
        self.output_convs = nn.ModuleList(
            ConvGroupNorm(dim, dim, 3, groups, relu=True) for _ in trunk_channels[:-1]
        )
        self.mask_feature = nn.Conv2d(dim, dim, 3, padding=1)
        self.encoder = TransformerEncoder(config)
        self.encoder_in_proj = nn.Conv2d(trunk_channels[-1], dim, 1)
        self.encoder_out_proj = ConvGroupNorm(dim, dim, 3, groups, relu=True)

    def forward(
        self, features: list[Tensor], padding: Tensor, pos: Tensor
    ) -> tuple[Tensor, Tensor]:
        """(mask features (B, D, H/4, W/4), encoder memory (B, D, h, w) at stride 32).

        padding / pos: the stride-32 grid's padding mask (B, h, w) and sine positions."""
        coarsest = self.encoder_in_proj(features[-1])
        batch, dim, height, width = coarsest.shape
        attend_padding = padding.flatten(1) if bool(padding.any()) else None
        memory = self.encoder(_tokens(coarsest), _tokens(pos), attend_padding)
        memory = memory.permute(0, 2, 1).reshape(batch, dim, height, width)
        y = self.encoder_out_proj(memory)
        for level in range(len(features) - 2, -1, -1):  # res4, res3, res2
            lateral = self.lateral_convs[level](features[level])
            y = lateral + F.interpolate(y, size=lateral.shape[-2:], mode="nearest")
            y = self.output_convs[level](y)
        return self.mask_feature(y), memory


# --- the head and the model -----------------------------------------------------------------------
class MaskFormerHead(nn.Module):
    """MMDetection's MaskFormerHead: pixel decoder, transformer decoder, class and mask heads."""

    def __init__(self, config: PanopticConfig, trunk_channels: list[int]):
        super().__init__()
        dim = config.hidden_dim
        self.hidden_dim = dim
        self.decoder_memory = config.decoder_memory
        self.pixel_decoder = TransformerEncoderPixelDecoder(config, trunk_channels)
        self.transformer_decoder = TransformerDecoder(config)
        self.query_embed = nn.Embedding(config.num_queries, dim)
        self.cls_embed = nn.Linear(dim, config.num_classes + 1)
        self.mask_embed = nn.Sequential(
            nn.Linear(dim, dim),
            nn.ReLU(inplace=True),
            nn.Linear(dim, dim),
            nn.ReLU(inplace=True),
            nn.Linear(dim, dim),
        )

    def forward(
        self,
        features: list[Tensor],
        padded_size: tuple[int, int],
        image_sizes: list[tuple[int, int]] | None,
    ) -> MaskFormerOutput:
        coarsest = features[-1]
        batch = coarsest.shape[0]
        padding = padding_mask(
            batch, padded_size, image_sizes, tuple(coarsest.shape[-2:]), coarsest.device
        )
        # One encoding serves both: the pixel decoder's and the decoder's are the same function
        # of the same mask (MMDetection computes it twice).
        pos = sine_positions(padding, self.hidden_dim)
        mask_features, memory = self.pixel_decoder(features, padding, pos)
        if self.decoder_memory == "pixel_embedding":
            # Stride 4: a 20-50 px thing spans 5-12 cells there, one or two at stride 32.
            memory = mask_features
            padding = padding_mask(
                batch, padded_size, image_sizes, tuple(memory.shape[-2:]), memory.device
            )
            pos = sine_positions(padding, self.hidden_dim)
        query_pos = self.query_embed.weight.unsqueeze(0).expand(batch, -1, -1)
        attend_padding = padding.flatten(1) if bool(padding.any()) else None
        decoded = self.transformer_decoder(
            torch.zeros_like(query_pos), query_pos, _tokens(memory), _tokens(pos), attend_padding
        )
        class_logits = self.cls_embed(decoded)
        mask_logits = torch.einsum("lbqc,bchw->lbqhw", self.mask_embed(decoded), mask_features)
        return MaskFormerOutput(class_logits, mask_logits, decoded[-1])


class MaskFormer(nn.Module):
    def __init__(self, config: PanopticConfig):
        super().__init__()
        self.config = config
        self.backbone, trunk_channels = build_trunk(config)
        self.panoptic_head = MaskFormerHead(config, trunk_channels)
        init_head(self.panoptic_head)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def architecture(self) -> dict[str, Any]:
        """The manifest's architecture dict: build_maskformer takes it back."""
        return self.config.to_dict()

    def train(self, mode: bool = True) -> MaskFormer:
        super().train(mode)
        if mode and self.config.freeze_backbone_bn:
            freeze_batchnorm(self.backbone)
        return self

    def forward(
        self, images: Tensor, image_sizes: list[tuple[int, int]] | None = None
    ) -> MaskFormerOutput:
        """Every decoder layer's class and mask logits for a normalised batch (B, 3, H, W).

        image_sizes: each image's size inside the padding (None: no padding); padded positions
        are masked out of the attention, as in the release."""
        trunk_maps: OrderedDict[str, Tensor] = self.backbone(images)
        features = list(trunk_maps.values())  # res2..res5
        return self.panoptic_head(features, tuple(images.shape[-2:]), image_sizes)


def build_trunk(config: PanopticConfig) -> tuple[nn.Module, list[int]]:
    """The trunk of the registered backbone and its four stages' channels. The backbone is built
    with its FPN (the shared builder's contract) and the FPN is dropped: MaskFormer's pixel
    decoder takes the raw stages."""
    with_fpn = build_backbone(
        config.backbone,
        fpn_channels=config.hidden_dim,
        trainable_layers=config.trainable_backbone_layers,
        bn_eps=config.backbone_bn_eps,
    )
    channels = [block[0].in_channels for block in with_fpn.fpn.inner_blocks]
    return with_fpn.body, channels


def init_head(head: MaskFormerHead) -> None:
    """MMDetection's initialisation: caffe2 Xavier (uniform, fan-in) on the pixel decoder's
    convs, Xavier uniform on the transformers' matrices; heads keep torch's defaults."""
    decoder = head.pixel_decoder
    convs = [decoder.mask_feature, decoder.encoder_in_proj, decoder.encoder_out_proj.conv]
    convs += [module.conv for module in [*decoder.lateral_convs, *decoder.output_convs]]
    for conv in convs:
        nn.init.kaiming_uniform_(conv.weight, a=1)
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
    for transformer in (decoder.encoder, head.transformer_decoder):
        for parameter in transformer.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)


def build_maskformer(config: PanopticConfig | dict[str, Any] | None = None) -> MaskFormer:
    """A randomly initialised MaskFormer (eval mode) for a config or architecture dict."""
    if config is None:
        config = PanopticConfig()
    elif isinstance(config, dict):
        config = PanopticConfig.from_dict(config)
    return MaskFormer(config).eval()
