"""STCN (Cheng et al., NeurIPS 2021): space-time correspondence networks for video object
segmentation.

A frame goes through the key encoder once, whatever the number of objects: its stride-16
feature gives the 64-d key (what is matched against memory) and a compressed copy (what the
decoder gets of the frame itself); its stride-8 and stride-4 features are the decoder's skips.
A memory frame also goes through the value encoder, once per object, with that object's mask
and the sum of the other objects' masks. To segment a query frame, every query position reads
the memory values through an L2 affinity to the memory keys (top-k softmax), and the decoder
turns readout ++ compressed key feature into one logit map per object.

The methods are the pieces a caller composes, each batched along its first dimension:
`encode_keys` (any number of frames, from any sessions), `encode_values` and `decode` (the
objects of one frame, or of many frames with `frame_of` saying whose each object is), and
`forward_clip` (the training pass over short clips). The memory read has no weights: it is in
models.vos.ops, and models.vos.memory keeps the memory of an inference session.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.vos.config import VosConfig
from models.vos.layers import (
    FeatureFusionBlock,
    ResBlock,
    UpsampleBlock,
    init_resnet,
    resnet_stage,
)
from models.vos.ops import aggregate_logits, l2_affinity, read_memory, topk_softmax

VALUE_INPUT_CHANNELS = 5  # RGB, this object's mask, the other objects' masks
STRIDE = 16  # of keys and values; inputs are padded to a multiple of it


@dataclass
class KeyFeatures:
    """The key encoder's output for N frames (first dimension of every tensor)."""

    key: Tensor  # (N, key_dim, H/16, W/16): matched against memory keys
    key_comp: Tensor  # (N, key_comp_dim, H/16, W/16): the query's own feature for the decoder
    f16: Tensor  # (N, C16, H/16, W/16): fused into memory values
    f8: Tensor  # (N, C8, H/8, W/8): decoder skip
    f4: Tensor  # (N, C4, H/4, W/4): decoder skip

    def __len__(self) -> int:
        return self.key.shape[0]

    def frame(self, index: int) -> KeyFeatures:
        """The features of one frame, still with a batch dimension of 1."""
        return KeyFeatures(*(tensor[index : index + 1] for tensor in self._tensors()))

    def split(self) -> list[KeyFeatures]:
        return [self.frame(index) for index in range(len(self))]

    def _tensors(self) -> tuple[Tensor, ...]:
        return self.key, self.key_comp, self.f16, self.f8, self.f4


class KeyEncoder(nn.Module):
    """ResNet trunk up to layer3; the reference's layer1 is called res2."""

    def __init__(self, config: VosConfig):
        super().__init__()
        block, widths, blocks = config.key_block, config.key_widths, config.key_blocks
        f4_channels, f8_channels, _ = config.key_channels
        self.conv1 = nn.Conv2d(3, config.key_stem_width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(config.key_stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.res2 = resnet_stage(block, config.key_stem_width, widths[0], blocks[0], 1, False)
        self.layer2 = resnet_stage(block, f4_channels, widths[1], blocks[1], 2, False)
        self.layer3 = resnet_stage(block, f8_channels, widths[2], blocks[2], 2, False)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        f4 = self.res2(x)
        f8 = self.layer2(f4)
        f16 = self.layer3(f8)
        return f16, f8, f4


class ValueEncoder(nn.Module):
    """Basic-block ResNet (convs with bias) on image + masks, fused with the key f16."""

    def __init__(self, config: VosConfig):
        super().__init__()
        stem, widths, blocks = config.value_stem_width, config.value_widths, config.value_blocks
        self.conv1 = nn.Conv2d(VALUE_INPUT_CHANNELS, stem, 7, 2, 3, bias=True)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = resnet_stage("basic", stem, widths[0], blocks[0], 1, True)
        self.layer2 = resnet_stage("basic", widths[0], widths[1], blocks[1], 2, True)
        self.layer3 = resnet_stage("basic", widths[1], widths[2], blocks[2], 2, True)
        fused_channels = widths[2] + config.key_channels[2]
        self.fuser = FeatureFusionBlock(fused_channels, config.value_dim, config.cbam_reduction)

    def forward(
        self, images: Tensor, masks: Tensor, other_masks: Tensor, key_f16: Tensor
    ) -> Tensor:
        """images (B, 3, H, W), masks and other_masks (B, 1, H, W), key_f16 (B, C16, h, w)."""
        x = torch.cat([images, masks, other_masks], dim=1)
        if images.is_contiguous(memory_format=torch.channels_last):
            # Keep the caller's channels-last layout (cat of expanded inputs loses it): on CPU
            # the convs and the max pool run several times faster in it.
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fuser(x, key_f16)


class KeyProjection(nn.Module):
    def __init__(self, in_channels: int, key_dim: int):
        super().__init__()
        self.key_proj = nn.Conv2d(in_channels, key_dim, 3, padding=1)
        if not self.key_proj.weight.is_meta:
            # Orthogonal init, as the reference: keys start spread out, so that the L2 affinity
            # between different positions is informative from the first iteration.
            nn.init.orthogonal_(self.key_proj.weight)
            nn.init.zeros_(self.key_proj.bias)

    def forward(self, f16: Tensor) -> Tensor:
        return self.key_proj(f16)


class Decoder(nn.Module):
    """readout ++ key_comp at stride 16 -> stride 8 -> stride 4 -> one logit -> x4 bilinear."""

    def __init__(self, config: VosConfig):
        super().__init__()
        f4_channels, f8_channels, _ = config.key_channels
        width16, width8, width4 = config.decoder_widths
        self.compress = ResBlock(config.value_dim + config.key_comp_dim, width16)
        self.up_16_8 = UpsampleBlock(f8_channels, width16, width8)
        self.up_8_4 = UpsampleBlock(f4_channels, width8, width4)
        self.pred = nn.Conv2d(width4, 1, 3, padding=1)

    def forward(
        self, x16: Tensor, f8: Tensor, f4: Tensor, frame_of: Tensor | None = None
    ) -> Tensor:
        """x16 (K, Cv + Ckc, h, w); f8 and f4 with a batch of K, or of 1 shared by all K, or of
        B frames with frame_of (K,) giving each row's frame (their convs run once a frame).

        Returns logits (K, 1, 16h, 16w).
        """
        x = self.up_8_4(f4, self.up_16_8(f8, self.compress(x16), frame_of), frame_of)
        logits = self.pred(F.relu(x))
        return F.interpolate(logits, scale_factor=4, mode="bilinear", align_corners=False)


class STCN(nn.Module):
    def __init__(self, config: VosConfig | None = None):
        super().__init__()
        self.config = config or VosConfig()
        c16 = self.config.key_channels[2]
        self.key_encoder = KeyEncoder(self.config)
        self.value_encoder = ValueEncoder(self.config)
        self.key_proj = KeyProjection(c16, self.config.key_dim)
        self.key_comp = nn.Conv2d(c16, self.config.key_comp_dim, 3, padding=1)
        self.decoder = Decoder(self.config)
        init_resnet(self.key_encoder)
        init_resnet(self.value_encoder)

    def encode_keys(self, images: Tensor) -> KeyFeatures:
        """Key features of N normalised frames (N, 3, H, W), H and W multiples of 16.

        Frames are independent of one another (batch norm in eval mode), so frames of many
        sessions can share one call.
        """
        _check_padded(images)
        f16, f8, f4 = self.key_encoder(images)
        return KeyFeatures(self.key_proj(f16), self.key_comp(f16), f16, f8, f4)

    def encode_values(
        self, image: Tensor, key_f16: Tensor, masks: Tensor, frame_of: Tensor | None = None
    ) -> Tensor:
        """Memory values of K objects: (K, value_dim, H/16, W/16).

        image (B, 3, H, W) and key_f16 (B, C16, h, w) of B frames, masks (K, H, W) in [0, 1];
        frame_of (K,) is each mask's frame (None: all on one frame, B = 1), so that the objects
        of many sessions' frames go through one pass. Each object sees its own mask and the sum
        of the other masks of its frame (zeros for a frame's only object).
        """
        count = masks.shape[0]
        masks = masks.unsqueeze(1)
        if frame_of is None:
            others = masks.sum(dim=0, keepdim=True) - masks
            image, key_f16 = image.expand(count, -1, -1, -1), key_f16.expand(count, -1, -1, -1)
        else:
            totals = masks.new_zeros((image.shape[0], *masks.shape[1:]))
            others = totals.index_add_(0, frame_of, masks)[frame_of] - masks
            image, key_f16 = image[frame_of], key_f16[frame_of]
        return self.value_encoder(image, masks, others, key_f16)

    def decode(
        self, readout: Tensor, features: KeyFeatures, frame_of: Tensor | None = None
    ) -> Tensor:
        """Logits (K, H, W) of K objects from their readouts (K, value_dim, h, w) and the query
        frames' features: a batch of 1 shared by all objects, or B frames with frame_of (K,)
        giving each object's frame (the objects of many sessions' frames in one pass)."""
        count = readout.shape[0]
        if frame_of is None:
            key_comp = features.key_comp.expand(count, -1, -1, -1)
        else:
            key_comp = features.key_comp[frame_of]
        x16 = torch.cat([readout, key_comp], dim=1)
        return self.decoder(x16, features.f8, features.f4, frame_of)[:, 0]

    def forward_clip(
        self,
        frames: Tensor,
        first_masks: Tensor,
        selector: Tensor | None = None,
        top_k: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The training pass over B clips of T frames with K objects given on frame 0.

        frames (B, T, 3, H, W) normalised; first_masks (B, K, H, W) in [0, 1]; selector (B, K)
        is 1 for the objects a clip has, 0 for padding (default: the non-empty first masks).
        Frame t is segmented with the memory of frames 0..t-1; frames after the first are
        memorised with their predicted soft masks, as at inference.
        Returns aggregated logits (B, T-1, K+1, H, W), background first (for cross-entropy),
        and object probabilities (B, T-1, K, H, W).
        """
        batch, length = frames.shape[:2]
        if selector is None:
            selector = (first_masks.flatten(2).amax(dim=2) > 0).to(frames.dtype)
        features = self.encode_keys(frames.flatten(0, 1))
        memory_keys, memory_values = [], []
        masks, all_logits, all_probs = first_masks, [], []
        for t in range(length):
            frame_features = _clip_frame(features, batch, length, t)
            if t > 0:
                logits = self._segment_clip(frame_features, memory_keys, memory_values, top_k)
                probs = torch.sigmoid(logits) * selector[:, :, None, None]
                aggregated = aggregate_logits(probs, dim=1)
                masks = torch.softmax(aggregated, dim=1)[:, 1:]
                all_logits.append(aggregated)
                all_probs.append(masks)
            if t < length - 1:
                memory_keys.append(frame_features.key.flatten(start_dim=2))
                memory_values.append(self._encode_clip_values(frames[:, t], frame_features, masks))
        return torch.stack(all_logits, dim=1), torch.stack(all_probs, dim=1)

    def forward(
        self,
        frames: Tensor,
        first_masks: Tensor,
        selector: Tensor | None = None,
        top_k: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The training pass (forward_clip): what model(...) and DistributedDataParallel call."""
        return self.forward_clip(frames, first_masks, selector, top_k)

    def _encode_clip_values(self, images: Tensor, features: KeyFeatures, masks: Tensor) -> Tensor:
        """(B, K, Cv, hw) values of B frames with K masks each."""
        batch, count = masks.shape[:2]
        masks = masks.unsqueeze(2)
        others = masks.sum(dim=1, keepdim=True) - masks
        values = self.value_encoder(
            images.repeat_interleave(count, dim=0),
            masks.flatten(0, 1),
            others.flatten(0, 1),
            features.f16.repeat_interleave(count, dim=0),
        )
        return values.view(batch, count, values.shape[1], -1)

    def _segment_clip(
        self,
        features: KeyFeatures,
        memory_keys: list[Tensor],
        memory_values: list[Tensor],
        top_k: int | None,
    ) -> Tensor:
        """(B, K, H, W) logits of B query frames, each against its own clip's memory."""
        batch, _, height, width = features.key.shape
        weights = topk_softmax(
            l2_affinity(torch.cat(memory_keys, dim=2), features.key.flatten(start_dim=2)), top_k
        )  # (B, M, N)
        values = torch.cat(memory_values, dim=3)  # (B, K, Cv, M)
        count = values.shape[1]
        readout = read_memory(values, weights.unsqueeze(1)).flatten(0, 1)
        x16 = torch.cat(
            [
                readout.view(batch * count, -1, height, width),
                features.key_comp.repeat_interleave(count, dim=0),
            ],
            dim=1,
        )
        logits = self.decoder(
            x16,
            features.f8.repeat_interleave(count, dim=0),
            features.f4.repeat_interleave(count, 0),
        )
        return logits.view(batch, count, *logits.shape[-2:])


def _clip_frame(features: KeyFeatures, batch: int, length: int, t: int) -> KeyFeatures:
    """Frame t of every clip, from features of the flattened (B * T) batch."""
    return KeyFeatures(
        *(tensor.view(batch, length, *tensor.shape[1:])[:, t] for tensor in features._tensors())
    )


def _check_padded(images: Tensor) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    height, width = images.shape[-2:]
    if height % STRIDE or width % STRIDE:
        raise ValueError(f"image size {height}x{width} is not a multiple of {STRIDE}; pad it")
