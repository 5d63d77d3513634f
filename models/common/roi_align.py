"""RoIAlign over the FPN levels, torchvision's or MMDetection's, for every detection head."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import _convert_to_roi_format, _setup_scales

FEATURE_LEVELS = ["0", "1", "2", "3"]


class AlignedMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's multi-level RoIAlign (same levels: floor(log2(sqrt(area) / 56)), clamped to
    0..3, as MMDetection's finest_scale 56) with roi_align(aligned=True): box corners shifted by
    half a pixel, so that a feature sits at its pixel's centre, as in MMDetection's RoIAlign.
    torchvision's own passes aligned=False and has no option for it."""

    def forward(
        self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        features = [x[name] for name in self.featmap_names]
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                features, image_shapes, self.canonical_scale, self.canonical_level
            )
        rois = _convert_to_roi_format(boxes)
        levels = self.map_levels(boxes)
        result = features[0].new_zeros((len(rois), features[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, self.scales, strict=True)):
            index = torch.where(levels == level)[0]
            pooled = roi_align(
                feature, rois[index], self.output_size, scale, self.sampling_ratio, aligned=True
            )
            result[index] = pooled.to(result.dtype)
        return result


def multiscale_roi_align(
    output_size: int, sampling_ratio: int = 2, aligned: bool = False
) -> MultiScaleRoIAlign:
    """RoIAlign over the FPN levels: torchvision's (aligned=False) or MMDetection's (True)."""
    pool_type = AlignedMultiScaleRoIAlign if aligned else MultiScaleRoIAlign
    return pool_type(FEATURE_LEVELS, output_size, sampling_ratio=sampling_ratio)
