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
A frame's work has three parts, and the middle ones run over the frames of many sessions:
1. Key encoding, `model.encode_keys(images)`: the same for any number of objects and
   independent of the session's memory, and the heavy part of the reference (ResNet-50 at
   480p): `encode_key_batch(model, prepared_frames)` (frames of different padded sizes are
   grouped).
2. The round, `step_round(model, plans)`: each session's `plan` of its next frame (read-only),
   then in batched passes over all the plans: the memory readout (memories of different lengths
   padded and masked), the decoder over all sessions' objects, and the value encoder over the
   objects of the frames to memorise. It changes no session.
3. `session.commit(step)`: each session takes its frame's memory, prompt and objects.

    prepared = [session.prepare(frame) for session, frame in work]   # per session, cheap
    wanted = [i for i, (session, _) in enumerate(work) if session.needs_key_features()]
    features = dict(zip(wanted, encode_key_batch(model, [prepared[i] for i in wanted])))
    plans = [s.plan(prepared[i], features.get(i)) for i, (s, _) in enumerate(work)]
    results = [plan.session.commit(step) for plan, step in zip(plans, step_round(model, plans))]

`session.step(frame)` is the round of one. Only sessions of the same model (checkpoint version)
share a round. A session without objects and without a prompt for its next frame needs no key
features; a plan without them runs the key encoder on its own frame. Sessions are not
thread-safe: one caller at a time per session (the worker's session affinity gives that).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.profiler import record_function

from models.common.image import IMAGENET_MEAN, IMAGENET_STD, Frame, normalize, to_float_image
from models.vos.memory import (
    MemoryBank,
    MemoryBudget,
    MemoryBudgetError,
    MemoryFrame,
    memory_frame_bytes,
    read_batch,
)
from models.vos.network import STCN, STRIDE, KeyFeatures
from models.vos.ops import soft_aggregate

T = TypeVar("T")

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


def working_size(
    input_size: tuple[int, int], short_edge: int | None, upscale: bool = False
) -> tuple[int, int]:
    """The size frames are processed at: scaled down so that the short side is at most
    short_edge, aspect ratio kept; scaled up to it too only with `upscale`."""
    height, width = input_size
    if short_edge is None or min(height, width) == short_edge:
        return height, width
    if min(height, width) < short_edge and not upscale:
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
    frame: Frame,
    short_edge: int | None,
    device: torch.device | str | None = None,
    upscale: bool = False,
) -> PreparedFrame:
    """A uint8 (H, W, 3) RGB frame (numpy or tensor) as the model takes it."""
    image = to_float_image(frame, device)
    input_size = (int(image.shape[1]), int(image.shape[2]))
    size = working_size(input_size, short_edge, upscale)
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
    features: list[KeyFeatures | None] = [None] * len(frames)
    for positions in _grouped(range(len(frames)), lambda p: tuple(frames[p].image.shape)):
        batch = model.encode_keys(torch.cat([frames[p].image for p in positions]))
        for position, frame_features in zip(positions, batch.split(), strict=True):
            features[position] = frame_features
    return features  # type: ignore[return-value]


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
        self._revision = 0  # changes with every change of the state a plan reads

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

    @property
    def upscale(self) -> bool:
        return self.model.config.upscale

    def prepare(self, frame: Frame) -> PreparedFrame:
        return prepare_frame(frame, self.short_edge, self.device, self.upscale)

    def add_prompt(self, frame_index: int, masks_by_object_id: Mapping[int, MaskLike]) -> None:
        """Masks (H, W) of objects on a frame not yet stepped: new objects, or corrections.

        Where masks of one prompt overlap, the object listed last wins. Raises PromptError
        (PromptBudgetError when memory could not hold it) and then changes nothing.
        """
        pending, size = self._with_prompt(frame_index, masks_by_object_id)
        self._prompts = pending
        self.input_size = self.input_size or size
        self._revision += 1

    @torch.inference_mode()
    def step(
        self, frame: Frame | PreparedFrame, key_features: KeyFeatures | None = None
    ) -> dict[int, ObjectResult]:
        """Segments the next frame; {object_id: ObjectResult} at the input size.

        A round of one: plan, step_round, commit (a batching worker runs the middle part over
        the frames of many sessions at once)."""
        [computed] = step_round(self.model, [self.plan(frame, key_features)])
        return self.commit(computed)

    @torch.inference_mode()
    def plan(
        self,
        frame: Frame | PreparedFrame,
        key_features: KeyFeatures | None = None,
        prompt: Mapping[int, MaskLike] | None = None,
    ) -> FramePlan:
        """What the next frame takes, for step_round; reads the session and changes nothing.

        `prompt` is a prompt for this frame that is not in the session yet (as add_prompt would
        take it; it raises PromptError the same way): commit adds it along with the frame, so
        a refused frame leaves no prompt behind. Key features are computed here when the frame
        needs them and none are given.
        """
        prepared = frame if isinstance(frame, PreparedFrame) else self.prepare(frame)
        index = self.next_frame_index
        prompts, size = self._with_prompt(index, prompt) if prompt else (self._prompts, None)
        expected = self.input_size or size
        if expected is not None and prepared.input_size != expected:
            raise ValueError(
                f"frame size {prepared.input_size} differs from the session's {expected}"
            )
        frame_prompt = prompts.get(index)
        if not self._object_ids and frame_prompt is None:
            return FramePlan(self, self._revision, index, prepared)
        features = key_features
        if features is None:
            features = self.model.encode_keys(prepared.image)
        _check_features(features, prepared)
        known = list(self._object_ids)
        object_ids = known
        if frame_prompt is not None:
            object_ids = known + [i for i in frame_prompt if i not in known]
        memorise = (
            frame_prompt is not None or (index - self._last_prompt_index) % self.mem_every == 0
        )
        return FramePlan(
            self,
            self._revision,
            index,
            prepared,
            features,
            frame_prompt,
            known,
            object_ids,
            memorise,
        )

    def commit(self, computed: FrameStep) -> dict[int, ObjectResult]:
        """Commits a frame that step_round computed from this session's plan: memorises it
        when it is a memory frame, takes its prompt and objects, moves to the next frame.
        Raises ValueError, changing nothing, when the plan is not this session's latest state
        (another frame or prompt came in between); MemoryBudgetError likewise."""
        plan = computed.plan
        if plan.session is not self or plan.revision != self._revision:
            raise ValueError(
                f"frame {plan.index} was computed from another state of the session "
                f"(next frame: {self.next_frame_index}); plan it again"
            )
        if computed.memory_frame is not None:
            self.memory.add(computed.memory_frame)  # raises before changing anything
        self.input_size = self.input_size or plan.prepared.input_size
        if plan.prompt is not None:
            self._prompts.pop(plan.index, None)
            self._last_prompt_index = plan.index
        self._object_ids = list(plan.object_ids)
        self.next_frame_index += 1
        self._revision += 1
        return computed.results

    def close(self) -> None:
        """Frees the memory; the session can no longer segment its objects."""
        self.memory.clear()
        self._prompts.clear()
        self._object_ids = []
        self._revision += 1

    def _with_prompt(
        self, frame_index: int, masks_by_object_id: Mapping[int, MaskLike]
    ) -> tuple[dict[int, dict[int, Tensor]], tuple[int, int]]:
        """The session's prompts with this one added (validated, within the budget), and the
        prompt's size; the session itself is left as it is."""
        if frame_index < self.next_frame_index:
            raise PromptError(
                f"frame {frame_index} was already processed; prompts must come before their "
                f"frame (next frame: {self.next_frame_index})"
            )
        masks = self._validated_masks(masks_by_object_id)
        merged = {**self._prompts.get(frame_index, {}), **masks}
        pending = {**self._prompts, frame_index: _exclusive(merged)}
        size = tuple(next(iter(masks.values())).shape)
        self._check_prompt_budget(pending, size)
        return dict(sorted(pending.items())), (int(size[0]), int(size[1]))

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
        size = (int(input_size[0]), int(input_size[1]))
        height, width = working_size(size, self.short_edge, self.upscale)
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

    def _to_padded(self, mask: Tensor, prepared: PreparedFrame) -> Tensor:
        """A bool mask at the input size -> float at the padded working size."""
        mask = mask.to(device=self.device, dtype=torch.float32)
        resized = _resize(mask[None, None], prepared.working_size)[0, 0]
        return F.pad(resized, prepared.padding)


@dataclass
class FramePlan:
    """One session's next frame as VosSession.plan saw it: the session (read, not changed), its
    state's revision, and what this frame brings. `features` is None when the frame segments
    nothing (no object yet, no prompt)."""

    session: VosSession
    revision: int
    index: int
    prepared: PreparedFrame
    features: KeyFeatures | None = None
    prompt: dict[int, Tensor] | None = None  # this frame's prompt: exclusive masks, input size
    known_ids: list[int] = field(default_factory=list)  # objects read from memory
    object_ids: list[int] = field(default_factory=list)  # the objects after this frame
    memorise: bool = False

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.prepared.image.shape)


@dataclass
class FrameStep:
    """What step_round computed for a plan; its session's commit makes it the session's."""

    plan: FramePlan
    results: dict[int, ObjectResult]
    memory_frame: MemoryFrame | None = None


@torch.inference_mode()
def step_round(model: STCN, plans: Sequence[FramePlan]) -> list[FrameStep]:
    """The heavy part of a round of frames of many sessions (one frame each), in batched
    passes: the memory readout of every session (memories of different lengths padded and
    masked, models.vos.memory.read_batch), the decoder over all their objects, and the value
    encoder over the objects of the frames to memorise. Frames of different padded sizes (or
    sessions of different top_k) go in separate passes.

    Reads the sessions and changes none: each session then commits its own FrameStep
    (VosSession.commit). A session alone is a round of one (VosSession.step); results are the
    same either way, up to float rounding.
    """
    segmented = [plan for plan in plans if plan.features is not None]
    predicted = _predict_round(model, [plan for plan in segmented if plan.known_ids])
    probs = {id(plan): _with_prompt_merged(plan, predicted.get(id(plan))) for plan in segmented}
    memory_frames = _memorise_round(model, [plan for plan in segmented if plan.memorise], probs)
    with record_function("vos.results"):
        results = {id(plan): _results(plan, probs[id(plan)]) for plan in segmented}
    return [
        FrameStep(plan, results[id(plan)], memory_frames.get(id(plan)))
        if plan.features is not None
        else FrameStep(plan, {})
        for plan in plans
    ]


def _predict_round(model: STCN, plans: Sequence[FramePlan]) -> dict[int, Tensor]:
    """{id(plan): (K, Hp, Wp) soft-aggregated probabilities of its known objects from its
    memory}, one readout pass and one decoder pass per padded size and top_k."""
    predicted: dict[int, Tensor] = {}
    for group in _grouped(plans, lambda plan: (plan.image_shape, plan.session.settings.top_k)):
        top_k = group[0].session.settings.top_k
        reads_of = [plan.session.memory.reads(plan.known_ids) for plan in group]
        reads = [read for plan_reads in reads_of for read in plan_reads]
        queries = [
            plan.features.key[0].flatten(start_dim=1)  # type: ignore[union-attr]
            for plan, plan_reads in zip(group, reads_of, strict=True)
            for _ in plan_reads
        ]
        with record_function("vos.readout"):
            readouts = iter(read_batch(torch.stack(queries), reads, top_k))
        rows = []
        for plan, plan_reads in zip(group, reads_of, strict=True):
            by_id: dict[int, Tensor] = {}
            for read in plan_reads:
                by_id.update(zip(read.object_ids, next(readouts), strict=True))
            rows += [by_id[object_id] for object_id in plan.known_ids]
        features = _cat_features([plan.features for plan in group])  # type: ignore[misc]
        readout = torch.stack(rows).view(len(rows), -1, *features.key.shape[-2:])
        frame_of = _frame_of([len(plan.known_ids) for plan in group], readout.device)
        with record_function("vos.decoder"):
            logits = model.decode(readout, features, frame_of)
        probs = torch.sigmoid(logits)
        start = 0
        for plan in group:
            end = start + len(plan.known_ids)
            predicted[id(plan)] = soft_aggregate(probs[start:end])[1:]
            start = end
    return predicted


def _with_prompt_merged(plan: FramePlan, predicted: Tensor | None) -> Tensor:
    """(K, Hp, Wp) probabilities of plan.object_ids: the prediction, the prompt on top."""
    if predicted is None:
        _, _, height, width = plan.features.f4.shape  # type: ignore[union-attr]
        predicted = plan.features.f4.new_zeros((0, height * 4, width * 4))  # type: ignore[union-attr]
    if plan.prompt is None:
        return predicted
    predicted = _with_rows(predicted, len(plan.object_ids))
    masks = [plan.session._to_padded(mask, plan.prepared) for mask in plan.prompt.values()]
    rows = [plan.object_ids.index(object_id) for object_id in plan.prompt]
    return _merge_prompt(predicted, rows, torch.stack(masks))


def _memorise_round(
    model: STCN, plans: Sequence[FramePlan], probs: Mapping[int, Tensor]
) -> dict[int, MemoryFrame]:
    """{id(plan): its memory frame}, one value-encoder pass per padded size."""
    memory_frames: dict[int, MemoryFrame] = {}
    for group in _value_chunks(_grouped(plans, lambda plan: plan.image_shape)):
        masks = torch.cat([probs[id(plan)] for plan in group])
        images = torch.cat([plan.prepared.image for plan in group])
        key_f16 = torch.cat([plan.features.f16 for plan in group])  # type: ignore[union-attr]
        frame_of = _frame_of([len(plan.object_ids) for plan in group], masks.device)
        with record_function("vos.value_encoder"):
            values = model.encode_values(images, key_f16, masks, frame_of).flatten(start_dim=2)
        start = 0
        for plan in group:
            end = start + len(plan.object_ids)
            # Contiguous copies: a view would keep the whole batch alive, and the channels-last
            # layout would make every later concatenation of memory several times slower.
            key = plan.features.key[0].flatten(start_dim=1)  # type: ignore[union-attr]
            memory_frames[id(plan)] = MemoryFrame(
                plan.index,
                key.clone(memory_format=torch.contiguous_format),
                values[start:end].clone(memory_format=torch.contiguous_format),
                tuple(plan.object_ids),
                plan.prompt is not None,
            )
            start = end
    return memory_frames


def _results(plan: FramePlan, probs: Tensor) -> dict[int, ObjectResult]:
    """The frame's objects at the input size, from probabilities at the padded size."""
    prepared, prompt, object_ids = plan.prepared, plan.prompt, plan.object_ids
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


# On a CPU the value encoder takes the masks of at most this many bytes (objects x padded
# frame, as float32) a pass: its activations then stay in cache. Measured on 2 cores at 320x240
# with 4 objects a frame (1.2 MB of masks): 4 frames in one pass 87 ms, one frame a pass 74 ms.
# (The decoder, whose skip convs run once a frame, gains from batching: 48 ms against 58.)
CPU_VALUE_CHUNK_BYTES = 2 << 20


def _value_chunks(groups: list[list[FramePlan]]) -> list[list[FramePlan]]:
    """Groups cut into chunks of at most CPU_VALUE_CHUNK_BYTES of masks on a CPU."""
    chunks = []
    for group in groups:
        if group[0].prepared.image.device.type != "cpu":
            chunks.append(group)
            continue
        chunk: list[FramePlan] = []
        size = 0
        for plan in group:
            _, _, height, width = plan.image_shape
            plan_size = len(plan.object_ids) * height * width * 4
            if chunk and size + plan_size > CPU_VALUE_CHUNK_BYTES:
                chunks.append(chunk)
                chunk, size = [], 0
            chunk.append(plan)
            size += plan_size
        chunks.append(chunk)
    return chunks


def _grouped(items: Iterable[T], key: Callable[[T], Hashable]) -> list[list[T]]:
    """The items in groups of equal key(item), in order of first appearance."""
    groups: dict[Hashable, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return list(groups.values())


def _cat_features(features: Sequence[KeyFeatures]) -> KeyFeatures:
    if len(features) == 1:
        return features[0]
    return KeyFeatures(
        *(torch.cat(parts) for parts in zip(*(f._tensors() for f in features), strict=True))
    )


def _frame_of(counts: Sequence[int], device: torch.device) -> Tensor | None:
    """Each object's frame in a batch of frames with `counts` objects each; None for one frame
    (its features are shared by all its objects without a copy)."""
    if len(counts) == 1:
        return None
    return torch.repeat_interleave(
        torch.arange(len(counts), device=device), torch.tensor(counts, device=device)
    )


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
