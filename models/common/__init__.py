"""Layers and helpers shared by the model families: backbones with FPN, image preprocessing."""

from models.common.backbones import (
    backbone_names,
    build_backbone,
    count_parameters,
    register_backbone,
)
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
    "backbone_names",
    "register_backbone",
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
