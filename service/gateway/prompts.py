"""Prompts of video object segmentation, read and checked where they come in: REST form fields,
gRPC ObjectPrompt messages and the local `vidserve segment --prompt`.

A prompt marks objects on one frame: {object id: (H, W) bool mask}. It travels to the worker as
{object id: COCO RLE}. Object ids are 1..255, the ids a DAVIS palette PNG can hold, so that every
result can be written as DAVIS PNGs.

Errors are InputErrors: 400 for a prompt that cannot be read (not a PNG, not JSON, an id that is
not a number, a bad RLE, a prompt to a model that takes none), 422 for one that does not fit the
video (another size, an empty mask, a frame the video does not have).
"""

import io
import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from models.data.rle import decode_rle, encode_mask
from service.gateway.pipeline import InputFrame
from service.gateway.video_input import InputError
from service.images import image_size

MAX_OBJECT_ID = 255
PNG_MODES = ("P", "L")  # indexed (palette) or 8-bit grayscale: the pixel value is the object id

Masks = dict[int, np.ndarray]


def bad_prompt(detail: str) -> InputError:
    return InputError(400, "Bad prompt", detail)


def misfit_prompt(detail: str) -> InputError:
    return InputError(422, "Prompt does not fit the video", detail)


def masks_from_png(data: bytes, max_size: tuple[int, int]) -> Masks:
    """An indexed or grayscale PNG whose pixel values are object ids (0 = background), at most
    `max_size` (height, width): its header's size is checked before anything is decoded."""
    claimed = image_size(data)
    if claimed is not None:
        check_max_size("the prompt image", (claimed[1], claimed[0]), max_size)
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "PNG":
                raise bad_prompt(f"the prompt is a {image.format} image, not a PNG")
            if image.mode not in PNG_MODES:
                raise bad_prompt(
                    f"the prompt PNG is mode {image.mode}: save it indexed (palette) or "
                    "grayscale, with pixel value = object id"
                )
            ids = np.array(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as error:
        raise bad_prompt(f"the prompt is not a readable PNG ({error})") from None
    masks = {int(i): ids == i for i in np.unique(ids) if i != 0}
    if not masks:
        raise misfit_prompt("the prompt mask is empty: no pixel has an object id (1..255)")
    return masks


def masks_from_rle_json(text: str, max_size: tuple[int, int]) -> Masks:
    """{"<object id>": {"size": [h, w], "counts": "..."}, ...} (COCO RLE per object)."""
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as error:
        raise bad_prompt(f"prompt_rle is not JSON ({error})") from None
    if not isinstance(entries, dict) or not entries:
        raise bad_prompt('prompt_rle must be a JSON object {"<object id>": COCO RLE, ...}')
    masks = {}
    for key, rle in entries.items():
        object_id = object_id_of(key)
        if object_id in masks:
            raise bad_prompt(f"object {object_id} is given twice")
        masks[object_id] = mask_of_rle(object_id, rle, max_size)
    check_not_empty(masks)
    return masks


def masks_from_messages(
    prompts: Iterable, max_size: tuple[int, int], known_ids: set[int] = frozenset()
) -> Masks:
    """gRPC ObjectPrompts. An object prompted before (in `known_ids`) may get an empty mask: it
    says the object is not on this frame."""
    masks = {}
    for prompt in prompts:
        object_id = object_id_of(prompt.object_id)
        if object_id in masks:
            raise bad_prompt(f"object {object_id} is prompted twice on one frame")
        # `size` as REST's masks; the deprecated height and width from older clients.
        size = list(prompt.mask.size) or [prompt.mask.height, prompt.mask.width]
        if len(size) != 2:
            raise bad_prompt(f"mask size {size} of object {object_id} is not [height, width]")
        rle = {"size": size, "counts": prompt.mask.counts}
        masks[object_id] = mask_of_rle(object_id, rle, max_size)
    check_not_empty({i: m for i, m in masks.items() if i not in known_ids})
    return masks


def object_id_of(value) -> int:
    """An object id from a JSON key or a message field: an integer 1..255."""
    try:
        object_id = int(str(value).strip())
    except ValueError:
        raise bad_prompt(
            f"object id {value!r} is not a number (ids are integers 1..{MAX_OBJECT_ID})"
        ) from None
    if not 1 <= object_id <= MAX_OBJECT_ID:
        raise bad_prompt(f"object id {object_id} is outside 1..{MAX_OBJECT_ID} (0 is background)")
    return object_id


def mask_of_rle(object_id: int, rle, max_size: tuple[int, int]) -> np.ndarray:
    """The mask of a COCO RLE whose declared size is checked before anything is allocated (a
    few bytes may claim any size)."""
    try:
        height, width = (int(v) for v in rle["size"])
    except (KeyError, TypeError, ValueError):
        raise bad_prompt(f"the mask of object {object_id} has no [height, width] size") from None
    check_max_size(f"the mask of object {object_id}", (height, width), max_size)
    try:
        return decode_rle(rle).astype(bool)
    except (ValueError, TypeError) as error:
        raise bad_prompt(f"the mask of object {object_id} is not a COCO RLE ({error})") from None


def check_max_size(what: str, size: tuple[int, int], max_size: tuple[int, int]) -> None:
    (height, width), (max_height, max_width) = size, max_size
    if not (0 < height <= max_height and 0 < width <= max_width):
        raise misfit_prompt(f"{what} is {width}x{height}, over {max_width}x{max_height}")


def check_not_empty(masks: Masks) -> None:
    empty = sorted(object_id for object_id, mask in masks.items() if not mask.any())
    if empty:
        raise misfit_prompt(f"the mask of object(s) {empty} is empty: nothing to follow")


def check_size(masks: Masks, height: int, width: int) -> None:
    for object_id, mask in masks.items():
        if mask.shape != (height, width):
            raise misfit_prompt(
                f"the prompt mask of object {object_id} is {mask.shape[1]}x{mask.shape[0]}, "
                f"the video is {width}x{height}"
            )


def to_rle(masks: Masks) -> dict[int, dict]:
    """What a frame carries to the worker: {object id: COCO RLE}."""
    return {object_id: encode_mask(mask) for object_id, mask in masks.items()}


@dataclass
class VideoPrompt:
    """A prompt for one frame of a video file (REST upload or local command)."""

    masks: Masks
    frame_index: int = 0

    def check_fits(
        self, height: int, width: int, stride: int = 1, max_frames: int | None = None
    ) -> None:
        """What can be checked before decoding: the size, and that the frame is processed."""
        check_size(self.masks, height, width)
        if self.frame_index % stride:
            raise misfit_prompt(
                f"prompt_frame {self.frame_index} is skipped by frame_stride {stride}: "
                f"prompt a frame that is a multiple of it"
            )
        if max_frames is not None and self.frame_index // stride >= max_frames:
            raise misfit_prompt(
                f"prompt_frame {self.frame_index} is beyond the {max_frames} frames processed"
            )

    def for_frame(self, index: int) -> dict[int, dict] | None:
        return to_rle(self.masks) if index == self.frame_index else None

    def not_in_video(self, frames_seen: int) -> InputError:
        return misfit_prompt(
            f"prompt_frame {self.frame_index} does not exist: the video has {frames_seen} "
            "frame(s) to process"
        )


def read_video_prompt(
    model: str,
    takes_prompt: bool,
    png: bytes | None,
    rle_json: str | None,
    frame_index: int | None,
    max_size: tuple[int, int],
) -> VideoPrompt | None:
    """The prompt of a video request (any of its parts may be absent), checked against the
    model: a prompted model needs one, the others take none."""
    given = [part for part in (png, rle_json) if part is not None]
    if not takes_prompt:
        if given or frame_index is not None:
            raise bad_prompt(f"model '{model}' takes no prompt (prompt, prompt_rle, prompt_frame)")
        return None
    if not given:
        raise bad_prompt(
            f"model '{model}' needs a prompt: an indexed PNG (prompt) or COCO RLEs by object id "
            "(prompt_rle) marking the objects to follow"
        )
    if len(given) == 2:
        raise bad_prompt("give the prompt as a PNG (prompt) or as RLE (prompt_rle), not both")
    if png is not None:
        masks = masks_from_png(png, max_size)
    else:
        masks = masks_from_rle_json(rle_json, max_size)
    return VideoPrompt(masks, frame_index or 0)


async def attach_prompt(
    frames: AsyncIterator[InputFrame], prompt: VideoPrompt | None
) -> AsyncIterator[InputFrame]:
    """The frames, with the prompt on its frame; a prompt for a frame the video does not have is
    an error once the video has ended."""
    seen, attached = 0, False
    async for frame in frames:
        seen += 1
        if prompt is not None and (marked := prompt.for_frame(frame.index)) is not None:
            frame.prompt, attached = marked, True
        yield frame
    if prompt is not None and not attached:
        raise prompt.not_in_video(seen)
