"""Image preprocessing shared by the model families: to float, normalise, resize, pad, batch.

Conventions (the same for every family so that the worker can feed any of them):
- a *frame* from the decoder is RGB uint8, H x W x 3 (numpy array or tensor);
- a float image is a 3 x H x W tensor with values in [0, 1] (what augmentations produce);
- sizes are (height, width) in pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Frame = Tensor | np.ndarray


def to_float_image(frame: Frame, device: torch.device | str | None = None) -> Tensor:
    """A frame (uint8 H x W x 3) or float image (3 x H x W in [0, 1]) as a float 3 x H x W tensor.

    uint8 frames are moved to the device before the conversion to float: four times fewer bytes
    cross the bus.
    """
    if isinstance(frame, np.ndarray):
        if frame.dtype != np.uint8:
            raise ValueError(f"numpy frames must be uint8 H x W x 3, got dtype {frame.dtype}")
        frame = torch.from_numpy(np.ascontiguousarray(frame))
    if not isinstance(frame, Tensor):
        raise TypeError(f"a frame must be a numpy array or a tensor, got {type(frame).__name__}")
    if frame.dtype == torch.uint8:
        if frame.dim() != 3 or frame.shape[-1] != 3:
            raise ValueError(f"uint8 frames must be H x W x 3 (RGB), got {tuple(frame.shape)}")
        return frame.to(device).permute(2, 0, 1).float().div_(255.0)
    if frame.is_floating_point():
        if frame.dim() != 3 or frame.shape[0] != 3:
            raise ValueError(f"float images must be 3 x H x W, got shape {tuple(frame.shape)}")
        return frame.to(device=device, dtype=torch.float32)
    raise ValueError(f"frames must be uint8 or floating point, got {frame.dtype}")


def normalize(image: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """(image - mean) / std per channel, on a 3 x H x W or N x 3 x H x W tensor."""
    mean_t = torch.as_tensor(mean, dtype=image.dtype, device=image.device)[:, None, None]
    std_t = torch.as_tensor(std, dtype=image.dtype, device=image.device)[:, None, None]
    return (image - mean_t) / std_t


def fit_size(height: int, width: int, long_edge: int, short_edge: int) -> tuple[int, int]:
    """The size that keeps the aspect ratio and fits in long_edge x short_edge (in any orientation).

    This is MMDetection's keep-ratio rule: scale = min(long / max side, short / min side), sizes
    rounded to the nearest pixel. Small images are scaled up, as in the reference.
    """
    scale = min(long_edge / max(height, width), short_edge / min(height, width))
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def resize_image(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of a 3 x H x W image; a no-op when the size already matches."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]


def resize_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of N x H x W binary masks (kept uint8)."""
    if masks.shape[0] == 0:
        return masks.new_zeros((0, *size), dtype=torch.uint8)
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks.to(torch.uint8)
    resized = F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0]
    return resized.to(torch.uint8)


def scale_boxes(boxes: Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> Tensor:
    """Boxes x1 y1 x2 y2 measured on an image of from_size, expressed on an image of to_size."""
    ratio_h = to_size[0] / from_size[0]
    ratio_w = to_size[1] / from_size[1]
    factors = torch.tensor(
        [ratio_w, ratio_h, ratio_w, ratio_h], dtype=boxes.dtype, device=boxes.device
    )
    return boxes * factors


def padded_size(sizes: list[tuple[int, int]], multiple: int) -> tuple[int, int]:
    """The smallest size that holds every image and whose sides are multiples of `multiple`."""
    height = max(h for h, _ in sizes)
    width = max(w for _, w in sizes)
    return math.ceil(height / multiple) * multiple, math.ceil(width / multiple) * multiple


def pad_batch(images: list[Tensor], multiple: int = 32) -> Tensor:
    """Stack images (3 x H x W, or clips 3 x T x H x W: any leading dimensions, the same for
    all) into N x ... x Hp x Wp, zero padding at the bottom and right.

    Padding goes after normalisation, so padded pixels are the dataset mean, as in torchvision
    and MMDetection.
    """
    height, width = padded_size([tuple(img.shape[-2:]) for img in images], multiple)
    batch = images[0].new_zeros((len(images), *images[0].shape[:-2], height, width))
    for index, img in enumerate(images):
        batch[index, ..., : img.shape[-2], : img.shape[-1]].copy_(img)
    return batch


@dataclass
class ImageBatch:
    """A padded batch and what is needed to map results back to the input frames."""

    tensor: Tensor  # N x 3 x Hp x Wp, normalised
    image_sizes: list[tuple[int, int]]  # the resized size of each image inside the padding
    input_sizes: list[tuple[int, int]]  # the size of each frame as given

    def __len__(self) -> int:
        return len(self.image_sizes)


def prepare_batch(
    frames: list[Frame],
    *,
    long_edge: int,
    short_edge: int,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    size_divisible: int = 32,
    device: torch.device | str | None = None,
) -> ImageBatch:
    """Frames of any sizes -> one normalised, resized, padded batch on `device`."""
    if not frames:
        raise ValueError("prepare_batch needs at least one frame")
    images, image_sizes, input_sizes = [], [], []
    for frame in frames:
        image = to_float_image(frame, device)
        height, width = image.shape[-2:]
        size = fit_size(height, width, long_edge, short_edge)
        images.append(normalize(resize_image(image, size), mean, std))
        image_sizes.append(size)
        input_sizes.append((height, width))
    return ImageBatch(pad_batch(images, size_divisible), image_sizes, input_sizes)
