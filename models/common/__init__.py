"""Layers and helpers shared by the model families: backbones with FPN, image preprocessing."""

from models.common.backbones import BACKBONE_NAMES, build_backbone, count_parameters
from models.common.image import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageBatch,
    fit_size,
    normalize,
    pad_batch,
    prepare_batch,
    to_float_image,
)

__all__ = [
    "BACKBONE_NAMES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageBatch",
    "build_backbone",
    "count_parameters",
    "fit_size",
    "normalize",
    "pad_batch",
    "prepare_batch",
    "to_float_image",
]
