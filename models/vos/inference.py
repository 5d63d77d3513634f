"""STCN inference over a video or a live stream: one `VosSession` per video, fed frame by frame.

    model = prepare_for_inference(model)         # eval mode, channels-last (CPU speed)
    session = VosSession(model)                  # one session per video or stream
    session.add_prompt(0, {1: mask_a, 2: mask_b})  # masks (H, W) of the frame given, by object id
    for frame in frames:                         # uint8 (H, W, 3) RGB
        results = session.step(frame)            # {object_id: ObjectResult(prob, mask)}

A prompt may come for any frame not yet stepped: it adds objects (any number, on any frame) or
corrects existing ones. On a prompted frame the output is the prompt (objects not in it are
predicted and give way to the prompted masks). Frames before the first prompt give {}.

Per frame, as in STCN: the frame is resized (down only) to the model's working size, normalised
with ImageNet mean/std and padded to a multiple of 16; keys are matched against memory (top-k
softmax, k=20), each object is decoded and the objects are merged by soft aggregation; outputs
are unpadded and resized back to the input size. Prompted frames and every `mem_every`-th frame
after the latest prompt are memorised. Unlike STCN, memory is bounded (see models.vos.memory):
`memory_bytes()` stays within the session's budget over any video length.

The split for a batching worker
-------------------------------
A frame's work is done in batched passes over the frames of many sessions, then committed per
session:
1. Key encoding, `encode_key_batch(model, prepared_frames)`: independent of the session's memory
   (frames of different padded sizes are grouped).
2. `segment_batch(sessions, prepared, features)`, for sessions that segment their next frame from
   memory alone (`can_segment_from_memory()`: objects, and no prompt for that frame): the memory
   readouts (memories of different lengths and object counts padded, the padding masked out of
   the softmax), the decoder over every (session, object) pair, and the value encoder for the
   frames that will be memorised. It reads the sessions and changes none.
3. `session.commit(prepared, features, segmentation)`: memorises, updates the objects, returns
   the results; a segmentation commits once, and only at the frame it was made for.

    prepared = [session.prepare(frame) for session, frame in work]   # per session, cheap
    features = encode_key_batch(model, prepared)
    segmentations = segment_batch(sessions, prepared, features)
    results = [s.commit(p, f, g) for s, p, f, g in zip(sessions, prepared, features, segmentations)]

`session.step(frame, key_features)` is the same computation with a batch of one; a prompted
frame, or one of a session without objects, goes through `step` (its prompt merged over what
memory predicts). Only sessions of the same model share a batch. A session without objects and
without a prompt for its next frame needs no key features; a step without them runs the key
encoder on its own frame. Sessions are not thread-safe: one caller at a time per session (the
worker's session affinity gives that).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from models.common.image import IMAGENET_MEAN, IMAGENET_STD, Frame, normalize, to_float_image
from models.vos.memory import (
    MemoryBank,
    MemoryBudget,
    MemoryBudgetError,
    MemoryFrame,
    MemoryRead,
    memory_frame_bytes,
    read_memories,
)
from models.vos.network import STCN, STRIDE, KeyFeatures
from models.vos.ops import in_groups, soft_aggregate

MaskLike = np.ndarray | Tensor


class PromptError(ValueError):
    """A prompt that does not fit the session (wrong frame, size, ids or masks)."""


class PromptBudgetError(PromptError, MemoryBudgetError):
    """A prompt whose frame the session's memory budget cannot hold beside the earlier ones."""


@dataclass(frozen=True)
class SessionSettings:
    top_k: int | None = 20  # memory positions each query position reads; None: all
    mem_every: int | None = None  # memorise every n-th frame after a prompt; None: the config's
    max_memory_frames: int | None = 16
    max_memory_bytes: int | None = None
    short_edge: int | None = None  # working resolution; None: the model config's

    def __post_init__(self) -> None:
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.mem_every is not None and self.mem_every < 1:
            raise ValueError(f"mem_every must be >= 1, got {self.mem_every}")

    @property
    def budget(self) -> MemoryBudget:
        return MemoryBudget(self.max_memory_frames, self.max_memory_bytes)


@dataclass
class PreparedFrame:
    """A frame as the model takes it, and what is needed to map outputs back."""

    image: Tensor  # (1, 3, Hp, Wp): resized, normalised, padded to a multiple of 16
    input_size: tuple[int, int]  # (H, W) as given
    working_size: tuple[int, int]  # (h, w) after resizing, inside the padding
    padding: tuple[int, int, int, int]  # left, right, top, bottom


@dataclass
class ObjectResult:
    prob: Tensor  # (H, W) float: probability of this object after soft aggregation
    mask: Tensor  # (H, W) bool: pixels where this object wins the argmax (objects never overlap)

    @property
    def score(self) -> float:
        """Mean probability inside the mask; 0 for an empty mask."""
        area = int(self.mask.sum())
        return float(self.prob[self.mask].sum()) / area if area else 0.0


def prepare_for_inference(model: STCN) -> STCN:
    """The model in eval mode with channels-last weights (several times faster convs and
    pooling on CPU, with the channels-last frames prepare_frame makes). Outputs are unchanged.

    Meant for serving; save_checkpoint stores contiguous copies, so the layout never reaches a
    checkpoint.
    """
    return model.eval().to(memory_format=torch.channels_last)


def working_size(input_size: tuple[int, int], short_edge: int | None) -> tuple[int, int]:
    """The size frames are processed at: scaled down so that the short side is at most
    short_edge, aspect ratio kept; never scaled up."""
    height, width = input_size
    if short_edge is None or min(height, width) <= short_edge:
        return height, width
    scale = short_edge / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def padding_for(size: tuple[int, int], multiple: int = STRIDE) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) padding to a multiple, split evenly as in the reference."""
    height, width = size
    pad_h = math.ceil(height / multiple) * multiple - height
    pad_w = math.ceil(width / multiple) * multiple - width
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


def prepare_frame(
    frame: Frame, short_edge: int | None, device: torch.device | str | None = None
) -> PreparedFrame:
    """A uint8 (H, W, 3) RGB frame (numpy or tensor) as the model takes it."""
    image = to_float_image(frame, device)
    input_size = (int(image.shape[1]), int(image.shape[2]))
    size = working_size(input_size, short_edge)
    image = _resize(image[None], size)
    image = normalize(image, IMAGENET_MEAN, IMAGENET_STD)
    # Padding after normalising: padded pixels are the dataset mean, as in the reference.
    padding = padding_for(size)
    # Channels-last: several times faster convs and pooling on CPU, neutral to good on GPU.
    image = F.pad(image, padding).contiguous(memory_format=torch.channels_last)
    return PreparedFrame(image, input_size, size, padding)


@torch.inference_mode()
def encode_key_batch(model: STCN, frames: Sequence[PreparedFrame]) -> list[KeyFeatures]:
    """Key features of frames from any sessions, one forward pass per padded size."""
    return in_groups(
        [tuple(frame.image.shape) for frame in frames],
        lambda group: model.encode_keys(torch.cat([frames[i].image for i in group])).split(),
    )


def masks_from_label_map(label_map: MaskLike) -> dict[int, np.ndarray]:
    """{object_id: (H, W) bool mask} of an id map (DAVIS annotation: 0 = background)."""
    ids = np.asarray(label_map.cpu() if isinstance(label_map, Tensor) else label_map)
    return {int(i): ids == i for i in np.unique(ids) if i != 0}


def label_map(results: Mapping[int, ObjectResult], size: tuple[int, int]) -> np.ndarray:
    """(H, W) int32 id map of one frame's results (0 = background), e.g. for a DAVIS PNG."""
    ids = np.zeros(size, dtype=np.int32)
    for object_id, result in results.items():
        ids[result.mask.cpu().numpy()] = object_id
    return ids


@dataclass
class Segmentation:
    """A session's next frame segmented and not yet committed: what VosSession.commit takes."""

    frame_index: int
    object_ids: list[int]  # the objects after this frame
    probs: Tensor  # (K, Hp, Wp): soft-aggregated probabilities at the padded working size
    values: Tensor | None  # (K, value_dim, h*w) when the frame is memorised, else None
    prompt: dict[int, Tensor] | None = None  # the frame's prompt, used up by the commit


@torch.inference_mode()
def segment_batch(
    sessions: Sequence[VosSession],
    frames: Sequence[PreparedFrame],
    features: Sequence[KeyFeatures],
    sessions_per_pass: int | None = None,
) -> list[Segmentation]:
    """The next frame of each session from its memory, in batched passes over all of them: the
    memory readout, the decoder over every (session, object) pair, and the value encoder for
    the frames that will be memorised. Reads the sessions, changes none: each session commits
    its own (VosSession.commit). Every session must be able to (can_segment_from_memory), and
    all must share one model.

    sessions_per_pass (None: all) splits the sessions into passes of at most that many: on a
    CPU a pass over many sessions is no faster per session than one session alone (its
    convolutions already run near the cores' peak, and the larger tensors fall out of cache).
    """
    for session in sessions:
        if not session.can_segment_from_memory():
            raise ValueError("segment_batch takes sessions with objects and no prompt due")
    size = sessions_per_pass or max(len(sessions), 1)
    if len(sessions) > size:
        return [
            segmentation
            for start in range(0, len(sessions), size)
            for segmentation in segment_batch(
                sessions[start : start + size],
                frames[start : start + size],
                features[start : start + size],
            )
        ]
    probs = predict_from_memory(sessions, features)
    values = memorised_values(sessions, frames, features, probs)
    return [
        Segmentation(session.next_frame_index, session.object_ids, session_probs, frame_values)
        for session, session_probs, frame_values in zip(sessions, probs, values, strict=True)
    ]


def memorised_values(
    sessions: Sequence[VosSession],
    frames: Sequence[PreparedFrame],
    features: Sequence[KeyFeatures],
    probs: Sequence[Tensor],
) -> list[Tensor | None]:
    """The memory values of the sessions whose next frame is memorised (None for the others),
    from the probabilities predicted for it: encode_memory_values over those frames."""
    memorised = [number for number, session in enumerate(sessions) if session.memorises_next()]
    values: list[Tensor | None] = [None] * len(sessions)
    if memorised:
        encoded = encode_memory_values(
            _shared_model(sessions),
            [frames[number] for number in memorised],
            [features[number] for number in memorised],
            [probs[number] for number in memorised],
        )
        for number, frame_values in zip(memorised, encoded, strict=True):
            values[number] = frame_values
    return values


@torch.inference_mode()
def predict_from_memory(
    sessions: Sequence[VosSession], features: Sequence[KeyFeatures]
) -> list[Tensor]:
    """(K, Hp, Wp) soft-aggregated probabilities of each session's known objects on its next
    frame (K = 0 for a session without objects): one memory read and one decoder pass per
    frame size over all sessions. Reads the sessions, changes none."""
    model = _shared_model(sessions)
    reading = [number for number, session in enumerate(sessions) if session.object_ids]
    reads = [
        MemoryRead(
            sessions[number].memory,
            features[number].key[0].flatten(start_dim=1),
            tuple(sessions[number].object_ids),
            sessions[number].settings.top_k,
        )
        for number in reading
    ]
    readouts = read_memories(reads)
    probs = [_no_objects(frame_features) for frame_features in features]
    decoded = in_groups(
        [tuple(features[number].key.shape) for number in reading],
        lambda group: _decode(
            model, [readouts[i] for i in group], [features[reading[i]] for i in group]
        ),
    )
    for number, session_probs in zip(reading, decoded, strict=True):
        probs[number] = session_probs
    return probs


@torch.inference_mode()
def encode_memory_values(
    model: STCN,
    frames: Sequence[PreparedFrame],
    features: Sequence[KeyFeatures],
    probs: Sequence[Tensor],
) -> list[Tensor]:
    """Memory values (K, value_dim, h*w) of frames of any sessions, each with its objects'
    probabilities (K, Hp, Wp): one value-encoder pass per frame size over all (frame, object)
    pairs."""
    return in_groups(
        [tuple(frame.image.shape) for frame in frames],
        lambda group: _encode_values(
            model,
            [frames[i] for i in group],
            [features[i] for i in group],
            [probs[i] for i in group],
        ),
    )


def _decode(model: STCN, readouts: list[Tensor], features: list[KeyFeatures]) -> list[Tensor]:
    """Soft-aggregated probabilities of frames of one size from their objects' readouts."""
    frame_of = _frame_of_rows([len(readout) for readout in readouts], readouts[0].device)
    batch = KeyFeatures.cat(features)
    readout = torch.cat(readouts).view(len(frame_of), -1, *batch.key.shape[-2:])
    logits = model.decode(readout, batch, frame_of)
    probs = torch.sigmoid(logits).split([len(readout) for readout in readouts])
    return [soft_aggregate(frame_probs)[1:] for frame_probs in probs]


def _encode_values(
    model: STCN, frames: list[PreparedFrame], features: list[KeyFeatures], probs: list[Tensor]
) -> list[Tensor]:
    frame_of = _frame_of_rows([len(frame_probs) for frame_probs in probs], probs[0].device)
    images = torch.cat([frame.image for frame in frames])
    key_f16 = torch.cat([frame_features.f16 for frame_features in features])
    values = model.encode_values(images, key_f16, torch.cat(probs), frame_of)
    # Contiguous per frame: memory keeps each frame's values as long as the frame stays.
    values = values.flatten(start_dim=2)
    return [frame_values.contiguous() for frame_values in values.split([len(p) for p in probs])]


def _frame_of_rows(counts: list[int], device: torch.device) -> Tensor:
    """The frame number of every (frame, object) row, for frames with `counts` objects."""
    counts_tensor = torch.tensor(counts, device=device)
    return torch.arange(len(counts), device=device).repeat_interleave(counts_tensor)


def _no_objects(features: KeyFeatures) -> Tensor:
    _, _, height, width = features.f4.shape
    return features.f4.new_zeros((0, height * 4, width * 4))


def _shared_model(sessions: Sequence[VosSession]) -> STCN:
    models = {id(session.model) for session in sessions}
    if len(models) > 1:
        raise ValueError("sessions of different models cannot share a batch")
    return sessions[0].model


class VosSession:
    """The state of one video or stream: its objects, prompts and bounded memory."""

    def __init__(self, model: STCN, settings: SessionSettings | None = None):
        if model.training:
            raise ValueError("VosSession needs the model in eval mode (call model.eval())")
        self.model = model
        self.settings = settings or SessionSettings()
        self.memory = MemoryBank(self.settings.budget)
        self.device = next(model.parameters()).device
        self.next_frame_index = 0
        self.input_size: tuple[int, int] | None = None  # fixed by the first frame or prompt
        self._object_ids: list[int] = []
        self._prompts: dict[int, dict[int, Tensor]] = {}  # frame -> {object: (H, W) bool}
        self._last_prompt_index = 0

    @property
    def object_ids(self) -> list[int]:
        """Objects being segmented, in the order their prompts were applied."""
        return list(self._object_ids)

    @property
    def short_edge(self) -> int | None:
        return self.settings.short_edge or self.model.config.short_edge

    @property
    def mem_every(self) -> int:
        return self.settings.mem_every or self.model.config.mem_every

    def memory_bytes(self) -> int:
        """Bytes held by the memory (keys and values of the memory frames)."""
        return self.memory.nbytes()

    def needs_key_features(self) -> bool:
        """Whether the next step() segments anything (and so uses the frame's key features)."""
        return bool(self._object_ids) or self.next_frame_index in self._prompts

    def prepare(self, frame: Frame) -> PreparedFrame:
        return prepare_frame(frame, self.short_edge, self.device)

    def add_prompt(self, frame_index: int, masks_by_object_id: Mapping[int, MaskLike]) -> None:
        """Masks (H, W) of objects on a frame not yet stepped: new objects, or corrections.

        Where masks of one prompt overlap, the object listed last wins. Raises PromptError
        (PromptBudgetError when memory could not hold it) and then changes nothing.
        """
        if frame_index < self.next_frame_index:
            raise PromptError(
                f"frame {frame_index} was already processed; prompts must come before their "
                f"frame (next frame: {self.next_frame_index})"
            )
        masks = self._validated_masks(masks_by_object_id)
        merged = {**self._prompts.get(frame_index, {}), **masks}
        pending = {**self._prompts, frame_index: _exclusive(merged)}
        self._check_prompt_budget(pending, next(iter(masks.values())).shape)
        self._prompts = dict(sorted(pending.items()))
        self.input_size = self.input_size or tuple(next(iter(masks.values())).shape)

    def can_segment_from_memory(self) -> bool:
        """Whether the next frame is segmented from memory alone (the session has objects and
        no prompt for that frame): the frames segment_batch takes."""
        return bool(self._object_ids) and self.next_frame_index not in self._prompts

    def memorises_next(self) -> bool:
        """Whether the next frame goes into memory: a prompted frame, and every mem_every-th
        frame after the latest prompt."""
        index = self.next_frame_index
        return index in self._prompts or (index - self._last_prompt_index) % self.mem_every == 0

    @torch.inference_mode()
    def step(
        self, frame: Frame | PreparedFrame, key_features: KeyFeatures | None = None
    ) -> dict[int, ObjectResult]:
        """Segments the next frame; {object_id: ObjectResult} at the input size.

        The same computation as segment_batch with a batch of one, then commit.
        """
        prepared = frame if isinstance(frame, PreparedFrame) else self.prepare(frame)
        self._check_frame_size(prepared.input_size)
        if not self.needs_key_features():
            self.next_frame_index += 1
            return {}
        features = key_features
        if features is None:
            features = self.model.encode_keys(prepared.image)
        _check_features(features, prepared)
        if self.can_segment_from_memory():
            [segmentation] = segment_batch([self], [prepared], [features])
        else:
            segmentation = self._segment_prompted(prepared, features)
        return self.commit(prepared, features, segmentation)

    def commit(
        self, prepared: PreparedFrame, features: KeyFeatures, segmentation: Segmentation
    ) -> dict[int, ObjectResult]:
        """Commits the next frame's segmentation (memory, objects, prompt used), made from the
        session as it is now; {object_id: ObjectResult} at the input size.

        Raises ValueError, changing nothing, when the segmentation is not of the next frame:
        a frame commits once, in order.
        """
        index = self.next_frame_index
        if segmentation.frame_index != index:
            raise ValueError(
                f"a segmentation of frame {segmentation.frame_index} cannot be committed: the "
                f"session's next frame is {index}"
            )
        self._check_frame_size(prepared.input_size)
        prompted = segmentation.prompt is not None
        if segmentation.values is not None:
            # A contiguous copy: a view would keep the whole key-encoder batch alive, and the
            # channels-last layout would make every later copy of memory slower.
            key = features.key[0].flatten(start_dim=1).clone(memory_format=torch.contiguous_format)
            object_ids = tuple(segmentation.object_ids)
            self.memory.add(MemoryFrame(index, key, segmentation.values, object_ids, prompted))
        if prompted:
            del self._prompts[index]
            self._last_prompt_index = index
        self._object_ids = list(segmentation.object_ids)
        self.next_frame_index += 1
        return self._results(prepared, self._object_ids, segmentation.probs, segmentation.prompt)

    def close(self) -> None:
        """Frees the memory; the session can no longer segment its objects."""
        self.memory.clear()
        self._prompts.clear()
        self._object_ids = []

    def _segment_prompted(self, prepared: PreparedFrame, features: KeyFeatures) -> Segmentation:
        """The next frame with its prompt: known objects predicted from memory, then the
        prompted masks over them; always memorised. Reads the session, changes nothing."""
        prompt = self._prompts[self.next_frame_index]
        [predicted] = predict_from_memory([self], [features])
        object_ids = self._object_ids + [i for i in prompt if i not in self._object_ids]
        predicted = _with_rows(predicted, len(object_ids))
        prompt_masks = torch.stack([self._to_padded(mask, prepared) for mask in prompt.values()])
        rows = [object_ids.index(object_id) for object_id in prompt]
        probs = _merge_prompt(predicted, rows, prompt_masks)
        [values] = encode_memory_values(self.model, [prepared], [features], [probs])
        return Segmentation(self.next_frame_index, object_ids, probs, values, prompt)

    def _results(
        self,
        prepared: PreparedFrame,
        object_ids: list[int],
        probs: Tensor,
        prompt: dict[int, Tensor] | None,
    ) -> dict[int, ObjectResult]:
        probs = _resize(_unpad(probs, prepared)[None], prepared.input_size)[0]
        if prompt is not None:
            # The prompt is ground truth: give it back exactly, not through a resize.
            masks = torch.stack([mask.to(probs.device, probs.dtype) for mask in prompt.values()])
            probs = _merge_prompt(probs, [object_ids.index(i) for i in prompt], masks)
        background = (1 - probs.sum(dim=0, keepdim=True)).clamp_min(0)
        # max(dim=0).indices, not argmax: the same first-maximum rule, and far faster on CPU
        # over a leading dimension.
        winner = torch.cat([background, probs]).max(dim=0).indices
        return {
            object_id: ObjectResult(probs[row], winner == row + 1)
            for row, object_id in enumerate(object_ids)
        }

    def _validated_masks(self, masks_by_object_id: Mapping[int, MaskLike]) -> dict[int, Tensor]:
        if not masks_by_object_id:
            raise PromptError("a prompt needs at least one object mask")
        masks: dict[int, Tensor] = {}
        for object_id, mask in masks_by_object_id.items():
            if isinstance(object_id, bool) or not isinstance(object_id, int | np.integer):
                raise PromptError(f"object ids must be integers, got {object_id!r}")
            if object_id < 1:
                raise PromptError(f"object ids must be >= 1 (0 is background), got {object_id}")
            masks[int(object_id)] = _as_bool_mask(mask, object_id)
        sizes = {tuple(mask.shape) for mask in masks.values()}
        expected = self.input_size or next(iter(sizes))
        if sizes != {expected}:
            raise PromptError(f"prompt masks must all be {expected} (H, W), got {sorted(sizes)}")
        for object_id, mask in masks.items():
            if object_id not in self._object_ids and not mask.any():
                raise PromptError(f"object {object_id} is new and its mask is empty")
        return masks

    def _check_prompt_budget(
        self, pending: dict[int, dict[int, Tensor]], input_size: tuple[int, ...]
    ) -> None:
        """Refuses prompts whose frames would not fit in memory beside the pinned frames."""
        height, width = working_size((int(input_size[0]), int(input_size[1])), self.short_edge)
        positions = math.ceil(height / STRIDE) * math.ceil(width / STRIDE)
        config = self.model.config
        dtype = next(self.model.parameters()).dtype
        frames, total = self.memory.pinned_usage()
        objects = set(self._object_ids)
        for frame_index, masks in sorted(pending.items()):
            objects |= set(masks)
            frames += 1
            total += memory_frame_bytes(
                config.key_dim, config.value_dim, positions, len(objects), dtype
            )
            if not self.memory.budget.allows(frames, total):
                raise PromptBudgetError(
                    f"prompted frame {frame_index} would take memory to {frames} pinned frames "
                    f"and {total} bytes, over the session's budget {self.memory.budget}"
                )

    def _check_frame_size(self, size: tuple[int, int]) -> None:
        if self.input_size is None:
            self.input_size = size
        elif size != self.input_size:
            raise ValueError(f"frame size {size} differs from the session's {self.input_size}")

    def _to_padded(self, mask: Tensor, prepared: PreparedFrame) -> Tensor:
        """A bool mask at the input size -> float at the padded working size."""
        mask = mask.to(device=self.device, dtype=torch.float32)
        resized = _resize(mask[None, None], prepared.working_size)[0, 0]
        return F.pad(resized, prepared.padding)


def _resize(images: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of (N, C, H, W); antialiased when shrinking, a no-op at the same size."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    shrinking = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    return F.interpolate(
        images, size=size, mode="bilinear", align_corners=False, antialias=shrinking
    )


def _unpad(tensor: Tensor, prepared: PreparedFrame) -> Tensor:
    left, _, top, _ = prepared.padding
    height, width = prepared.working_size
    return tensor[..., top : top + height, left : left + width]


def _with_rows(probs: Tensor, count: int) -> Tensor:
    """probs (K, H, W) with zero rows appended up to `count` rows (for objects new this frame)."""
    missing = count - probs.shape[0]
    return torch.cat([probs, probs.new_zeros((missing, *probs.shape[1:]))]) if missing else probs


def _merge_prompt(probs: Tensor, rows: list[int], prompt_masks: Tensor) -> Tensor:
    """Prompted objects take their masks; elsewhere under a prompted mask others give way."""
    covered = prompt_masks.amax(dim=0) if len(prompt_masks) else torch.zeros_like(probs[0])
    merged = probs * (1 - covered)
    merged[rows] = prompt_masks
    return merged


def _exclusive(masks: dict[int, Tensor]) -> dict[int, Tensor]:
    """Overlapping masks resolved: each pixel goes to the last object that claims it."""
    claimed = torch.zeros_like(next(iter(masks.values())))
    exclusive = {}
    for object_id in reversed(list(masks)):
        exclusive[object_id] = masks[object_id] & ~claimed
        claimed |= masks[object_id]
    return {object_id: exclusive[object_id] for object_id in masks}


def _as_bool_mask(mask: MaskLike, object_id: int) -> Tensor:
    """(H, W) bool on the CPU: bool as is, integers != 0, floats >= 0.5."""
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(np.ascontiguousarray(mask))
    if not isinstance(mask, Tensor):
        raise PromptError(f"mask of object {object_id} must be an array, got {type(mask)}")
    if mask.dim() != 2 or min(mask.shape) < 1:
        raise PromptError(f"mask of object {object_id} must be (H, W), got {tuple(mask.shape)}")
    mask = mask.detach().cpu()
    if mask.dtype == torch.bool:
        return mask.clone()
    if mask.is_floating_point():
        return mask >= 0.5
    return mask != 0


def _check_features(features: KeyFeatures, prepared: PreparedFrame) -> None:
    expected = tuple(size // 4 for size in prepared.image.shape[-2:])
    if len(features) != 1 or tuple(features.f4.shape[-2:]) != expected:
        raise ValueError(
            f"key features of shape {tuple(features.f4.shape)} are not those of this frame "
            f"(one frame, stride-4 size {expected})"
        )
