"""The MaskFormer configuration: the `architecture` dict of a "panoptic" checkpoint.

Defaults are MMDetection's release maskformer_r50_ms-16xb1-75e_coco: COCO panoptic's 133 classes
(80 things, then 53 stuff; "no object" is the extra last logit), a ResNet-50 trunk with frozen
batch norms, the transformer-encoder pixel decoder (6 layers on res5, GroupNorm of 32 groups,
256-d mask features at stride 4), a 6-layer post-norm transformer decoder with 100 queries, 8
heads and an FFN of 2048, dropout 0.1; matching costs class 1 / focal 20 / dice 1, loss weights
CE 1 (no-object 0.1) / focal 20 / dice 1 (focal alpha 0.25, gamma 2; dice eps 1); inference keeps
queries scored over 0.8 and drops a query that wins under 0.8 of its own mask.

The release's training, for the training job (not fields here): AdamW lr 1e-4, weight decay 1e-4
(none on norms and query_embed), backbone lr x 0.1, gradient norm clipped at 0.01, 75 epochs
with lr x 0.1 after 50, batch 16 x 1, multi-scale resize (short side 480-800) with random crop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import models.common.swin  # noqa: F401  (registers the Swin backbones, for their trunks)
from models.common.backbones import backbone_names
from models.common.config import ManifestConfig, require
from models.common.image import IMAGENET_MEAN, IMAGENET_STD

# The synthetic world's categories (models.data.synthetic.world): 6 things, 5 stuff.
SYNTHETIC_THINGS = 6
SYNTHETIC_STUFF = 5
DECODER_MEMORIES = ("transformer_encoder", "pixel_embedding")


@dataclass(frozen=True)
class PanopticConfig(ManifestConfig):
    # The trunk of a registered backbone (models.common.backbones): its FPN is never used.
    backbone: str = "resnet50_fpn"
    backbone_bn_eps: float = 1e-5
    trainable_backbone_layers: int = 5  # ResNet-50 stages with gradients, counted from the top
    # The release trains with the trunk's batch norms frozen (requires_grad False, norm_eval).
    freeze_backbone_bn: bool = True

    # Classes: things first (0..num_things-1), then stuff; "no object" is index num_classes.
    num_things: int = 80
    num_stuff: int = 53

    hidden_dim: int = 256  # pixel-decoder channels = transformer width = mask-embedding size
    num_queries: int = 100
    num_heads: int = 8
    ffn_dim: int = 2048
    encoder_layers: int = 6
    decoder_layers: int = 6
    dropout: float = 0.1
    group_norm_groups: int = 32
    # What the transformer decoder's queries attend to: the pixel decoder's encoder memory at
    # stride 32 (MMDetection's release), or its mask features at stride 4 (the official
    # MaskFormer's TRANSFORMER_IN_FEATURE "pixel_embedding"). The same weights either way.
    decoder_memory: str = "transformer_encoder"

    # Test resize: keep the aspect ratio, fit in long x short. The release pads a batch only to
    # its largest image (pad_size_divisor=1): its padding is masked out of the attention, and
    # the pixel decoder upsamples to each lateral's own size, so no multiple is needed.
    image_long_edge: int = 1333
    image_short_edge: int = 800
    size_divisible: int = 1
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD

    # Hungarian matching costs.
    match_class_weight: float = 1.0
    match_focal_weight: float = 20.0
    match_dice_weight: float = 1.0

    # Set loss, the same on every decoder layer's outputs (deep supervision).
    class_loss_weight: float = 1.0
    no_object_weight: float = 0.1
    focal_loss_weight: float = 20.0
    dice_loss_weight: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    dice_eps: float = 1.0

    # Panoptic inference (MMDetection's object_mask_thr, iou_thr, and the 0.5 of a query's mask).
    object_mask_threshold: float = 0.8
    overlap_threshold: float = 0.8
    mask_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.backbone not in backbone_names():
            raise ValueError(f"backbone must be one of {backbone_names()}, got {self.backbone!r}")
        require(self.num_things >= 0 and self.num_stuff >= 0, "class counts must be >= 0")
        require(self.num_classes >= 1, "need at least one class")
        require(self.num_queries >= 1, "num_queries must be >= 1")
        require(self.hidden_dim % self.num_heads == 0, "hidden_dim must divide by num_heads")
        require(self.hidden_dim % 4 == 0, "hidden_dim must divide by 4 (sine position encoding)")
        require(self.hidden_dim % self.group_norm_groups == 0, "hidden_dim % groups must be 0")
        require(self.encoder_layers >= 0 and self.decoder_layers >= 1, "layer counts")
        require(0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)")
        require(
            self.decoder_memory in DECODER_MEMORIES,
            f"decoder_memory must be one of {DECODER_MEMORIES}, got {self.decoder_memory!r}",
        )
        require(
            self.image_long_edge >= self.image_short_edge > 0,
            "need image_long_edge >= image_short_edge > 0",
        )
        require(self.size_divisible > 0, "size_divisible must be > 0")
        require(self.no_object_weight > 0.0, "no_object_weight must be > 0")
        require(0.0 <= self.object_mask_threshold < 1.0, "object_mask_threshold in [0, 1)")
        require(0.0 <= self.overlap_threshold <= 1.0, "overlap_threshold in [0, 1]")
        require(0.0 < self.mask_threshold < 1.0, "mask_threshold in (0, 1)")

    @property
    def num_classes(self) -> int:
        return self.num_things + self.num_stuff

    @property
    def no_object(self) -> int:
        """The class index of "no object": the last logit."""
        return self.num_classes

    def is_thing(self, category: int) -> bool:
        return category < self.num_things

    @classmethod
    def small(
        cls,
        num_things: int = SYNTHETIC_THINGS,
        num_stuff: int = SYNTHETIC_STUFF,
        **overrides: Any,
    ) -> PanopticConfig:
        """The CPU-sized model of the same architecture: the project's small trunk, 64 channels,
        4 heads, 2 encoder and 3 decoder layers, 30 queries (a synthetic frame holds at most a
        handful of things and stuff bands), the synthetic world's 320x240 input. Its batch norms
        train: the small trunk starts from scratch. No transformer dropout: trained from scratch
        with it (0.1), every query answered "no object" alike in eval mode (validation PQ 0 after
        300 steps, 0.38 after 200 without)."""
        settings: dict[str, Any] = dict(
            backbone="small",
            freeze_backbone_bn=False,
            num_things=num_things,
            num_stuff=num_stuff,
            hidden_dim=64,
            num_queries=30,
            num_heads=4,
            ffn_dim=256,
            encoder_layers=2,
            decoder_layers=3,
            dropout=0.0,
            group_norm_groups=16,
            image_long_edge=320,
            image_short_edge=240,
        )
        settings.update(overrides)
        return cls(**settings)
