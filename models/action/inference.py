"""Clips in, action scores out: the test-time preprocessing of the releases (resize to the short
side, keep the ratio; the ImageNet mean and std), and the family's load-time probe."""

from __future__ import annotations

import torch
from torch import Tensor

from models.action.config import ActionConfig
from models.action.model import ActionDetector
from models.common.image import Frame, fit_size, normalize, resize_image, to_float_image

_NO_LONG_EDGE_LIMIT = 1 << 16


def clip_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """The (H, W) a frame is resized to: its short side to `short_side`, the ratio kept."""
    return fit_size(height, width, _NO_LONG_EDGE_LIMIT, short_side)


def prepare_clip(
    frames: list[Frame], config: ActionConfig, device: torch.device | str | None = None
) -> Tensor:
    """The clip's frames (uint8 H x W x 3, all one size) -> (3, T, H', W'), resized to the
    config's test short side and normalised."""
    if not frames:
        raise ValueError("a clip needs at least one frame")
    images = [to_float_image(frame, device) for frame in frames]
    size = clip_size(*images[0].shape[-2:], config.test_short_side)
    resized = torch.stack([resize_image(image, size) for image in images])  # (T, 3, H', W')
    return normalize(resized, config.image_mean, config.image_std).permute(1, 0, 2, 3)


def probe_action_model(model: ActionDetector) -> Tensor:
    """The family's load-time probe (models.checkpoints.probe): a clip of the config's length of
    noise frames at the test short side (4:3), one box over the middle of the frame; returns the
    action scores for the finiteness check."""
    from models.checkpoints.probe import probe_frame

    config = model.config
    short = config.test_short_side
    frames = [probe_frame(short, short * 4 // 3, seed=index) for index in range(config.clip_len)]
    clip = prepare_clip(frames, config, model.device)[None]
    height, width = clip.shape[-2:]
    box = [0.0, width * 0.25, height * 0.25, width * 0.75, height * 0.75]
    rois = torch.tensor([box], dtype=clip.dtype, device=clip.device)
    return model.action_scores(clip, rois)


def clip_offsets(config: ActionConfig, fps: float) -> list[float]:
    """Seconds from a key frame to each frame of its clip, on a clock of `fps` frames a second
    (the frames the model was trained on): clip_len frames frame_interval apart, clip_len // 2
    of them before the key frame, as MMAction2's SampleAVAFrames takes them."""
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    half = config.clip_len // 2
    return [config.frame_interval * (j - half) / fps for j in range(config.clip_len)]


def look_ahead_s(config: ActionConfig, fps: float) -> float:
    """How far past a key frame its clip reaches: the wait before its actions can be known."""
    return clip_offsets(config, fps)[-1]


def shrink_frame(frame: Frame, short_side: int) -> Tensor:
    """A frame resized as prepare_clip resizes it (short side, ratio kept), kept as uint8
    (H', W', 3): what a clip buffer holds, a quarter of the float's bytes; prepare_clip takes it
    back unchanged in size."""
    image = to_float_image(frame)
    image = resize_image(image, clip_size(*image.shape[-2:], short_side))
    return image.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()
