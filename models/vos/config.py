"""The STCN configuration: the `architecture` dict of a "vos" checkpoint manifest.

Defaults are the reference (hkchengrex/STCN, main branch with CBAM): key encoder ResNet-50 up to
layer3, value encoder ResNet-18 up to layer3 on RGB + two mask channels, 64-d keys, 512-d values,
decoder 512 -> 256 -> 256, 480p input padded to a multiple of 16. With these defaults the
parameter names and shapes are exactly those of the official `stcn.pth`.

`VosConfig.small()` is the same design, narrower, for training and serving on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from models.common.config import ManifestConfig, require

BLOCK_TYPES = ("bottleneck", "basic")


@dataclass(frozen=True)
class VosConfig(ManifestConfig):
    # Key encoder: a ResNet trunk up to layer3 (strides 4, 8, 16). Widths are the "planes" of each
    # stage; a bottleneck stage outputs 4x its planes, a basic one 1x.
    key_block: str = "bottleneck"
    key_stem_width: int = 64
    key_widths: tuple[int, int, int] = (64, 128, 256)
    key_blocks: tuple[int, int, int] = (3, 4, 6)
    key_dim: int = 64  # channels of the key used for matching
    key_comp_dim: int = 512  # the query frame's own stride-16 feature given to the decoder

    # Value encoder: a basic-block ResNet (every conv with a bias, as in the reference) on
    # RGB + this object's mask + the other objects' masks, fused with the key encoder's f16.
    value_stem_width: int = 64
    value_widths: tuple[int, int, int] = (64, 128, 256)
    value_blocks: tuple[int, int, int] = (2, 2, 2)
    value_dim: int = 512
    cbam_reduction: int = 16

    # Decoder widths: after `compress` (stride 16), after up_16_8 (stride 8), after up_8_4 (4).
    decoder_widths: tuple[int, int, int] = (512, 256, 256)

    # Frames are resized (down only) so that their short side is at most this, then padded to a
    # multiple of 16; None keeps the input size. The reference runs at 480p.
    short_edge: int | None = 480
    # Also scale smaller frames up to short_edge. The small model's masks are cut at stride 4: on
    # 240p video, 360p work gives each object 1.5x the cells (J&F 0.836 -> 0.872 on the
    # validation videos, the same weights).
    upscale: bool = False

    # Inference: memorise every n-th frame after the latest prompt. Like short_edge it belongs to
    # the data the model is made for: the reference's 5 suits DAVIS's 24+ fps; at a low frame
    # rate objects change more between frames and recent memory frames matter more.
    mem_every: int = 5

    def __post_init__(self) -> None:
        require(self.key_block in BLOCK_TYPES, f"key_block must be one of {BLOCK_TYPES}")
        for name in ("key_widths", "key_blocks", "value_widths", "value_blocks", "decoder_widths"):
            values = getattr(self, name)
            require(
                len(values) == 3 and all(v >= 1 for v in values),
                f"{name} needs three positive values, got {values}",
            )
        for name in ("key_stem_width", "key_dim", "key_comp_dim", "value_stem_width", "value_dim"):
            require(getattr(self, name) >= 1, f"{name} must be >= 1")
        require(
            self.value_dim // self.cbam_reduction >= 1,
            "cbam_reduction must leave at least one hidden channel",
        )
        require(self.short_edge is None or self.short_edge >= 16, "short_edge must be >= 16")
        require(not self.upscale or self.short_edge is not None, "upscale needs a short_edge")
        require(self.mem_every >= 1, "mem_every must be >= 1")

    @property
    def key_expansion(self) -> int:
        return 4 if self.key_block == "bottleneck" else 1

    @property
    def key_channels(self) -> tuple[int, int, int]:
        """Channels of the key encoder's f4, f8 and f16 features."""
        f4, f8, f16 = (width * self.key_expansion for width in self.key_widths)
        return f4, f8, f16

    @classmethod
    def small(cls, **overrides: Any) -> VosConfig:
        """The CPU-sized model: basic-block key encoder, 64-d values, 320x240 input."""
        settings: dict[str, Any] = dict(
            key_block="basic",
            key_stem_width=32,
            key_widths=(32, 64, 128),
            key_blocks=(1, 1, 1),
            key_comp_dim=64,
            value_stem_width=16,
            value_widths=(16, 32, 64),
            value_blocks=(1, 1, 1),
            value_dim=64,
            cbam_reduction=8,
            decoder_widths=(64, 32, 16),
            short_edge=240,
        )
        settings.update(overrides)
        return cls(**settings)
