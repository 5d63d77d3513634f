"""STCN in the worker: a round's heavy work batched across sessions (the forward), then each
session commits its frame (the step).

The forward runs the key encoder over the frames of all sessions in the batch, then, for the
sessions that segment from memory alone (they have objects and no prompt on this frame),
segment_batch: the memory readouts, the decoder over every (session, object) pair and the value
encoder for the frames that will be memorised, each one batched pass. It reads the sessions and
changes none, so the worker may retry it. The step commits what the forward computed
(VosSession.commit: memory, objects, results). Prompts ({object id: COCO RLE}) arrive with the
frame they mark; such a frame, and one of a session without objects, is segmented in its step
(VosSession.step: the same computation with a batch of one), once the prompt is added.
"""

from dataclasses import dataclass
from typing import Literal

import numpy as np

from models.checkpoints.manifest import Manifest
from models.data.rle import decode_rle, encode_mask, mask_box_xyxy
from models.vos import (
    STCN,
    KeyFeatures,
    ObjectResult,
    PreparedFrame,
    PromptError,
    Segmentation,
    SessionSettings,
    VosSession,
    encode_key_batch,
    prepare_for_inference,
    segment_batch,
)
from service.schemas import DetectedObject
from service.worker.options import read_options
from service.worker.runner import (
    BatchedForward,
    FrameOutput,
    ModelInfo,
    ModelRunner,
    OptionError,
    Output,
    WorkItem,
)
from service.worker.runners import register_runners

OBJECT_CATEGORY = "object"  # VOS is class-agnostic: an object is whatever its prompt marks


def default_sessions_per_pass(model: STCN) -> int | None:
    """All sessions of a round in one pass on an accelerator; one session per pass on a CPU,
    where a pass over several sessions measured slower per session (benchmarks/vos_speed.py
    --sessions-per-pass compares them)."""
    return 1 if next(model.parameters()).device.type == "cpu" else None


@dataclass
class Prepared:
    """The forward pass's answer for one item: its frame as the model takes it, its decoded
    prompt, its key features when the frame will be segmented and, when the session segments
    it from memory alone, the segmentation its step commits."""

    frame: PreparedFrame
    prompt: dict[int, np.ndarray] | None = None
    features: KeyFeatures | None = None
    segmentation: Segmentation | None = None


class SessionsForward(BatchedForward):
    """A round of every session in a batch, in batched passes: the key encoder over all frames,
    then segment_batch over the sessions that segment from memory alone. It reads the sessions
    (objects, memory, prompts due); it writes nothing."""

    def __init__(self, model: STCN, name: str, sessions_per_pass: int | None = None):
        self.model = model
        self.name = f"{name}-sessions"
        self.sessions_per_pass = sessions_per_pass

    def run(self, items: list[WorkItem]) -> list[Prepared | OptionError]:
        prepared = [self._prepare(item) for item in items]
        # Only frames that will be segmented need keys: a session with no object yet and no
        # prompt on this frame answers "nothing" without touching the network.
        wanted = [
            (item.state, ready)
            for item, ready in zip(items, prepared, strict=True)
            if isinstance(ready, Prepared) and (ready.prompt or item.state.needs_key_features())
        ]
        encoded = encode_key_batch(self.model, [ready.frame for _, ready in wanted])
        for (_, ready), features in zip(wanted, encoded, strict=True):
            ready.features = features
        from_memory = [
            (session, ready)
            for session, ready in wanted
            if not ready.prompt and session.can_segment_from_memory()
        ]
        if from_memory:
            segmentations = segment_batch(
                [session for session, _ in from_memory],
                [ready.frame for _, ready in from_memory],
                [ready.features for _, ready in from_memory],
                self.sessions_per_pass,
            )
            for (_, ready), segmentation in zip(from_memory, segmentations, strict=True):
                ready.segmentation = segmentation
        return prepared

    def _prepare(self, item: WorkItem) -> Prepared | OptionError:
        session: VosSession = item.state
        size = tuple(item.image.shape[:2])
        try:
            if session.input_size is not None and size != session.input_size:
                raise OptionError(
                    f"frame size {size[1]}x{size[0]} differs from the session's "
                    f"{session.input_size[1]}x{session.input_size[0]}"
                )
            prompt = decode_prompt(item.prompt, size) if item.prompt else None
        except OptionError as error:
            return error
        return Prepared(session.prepare(item.image), prompt)


class VosRunner(ModelRunner):
    def __init__(
        self,
        model: STCN,
        manifest: Manifest,
        name: str,
        settings: SessionSettings | None = None,
        sessions_per_pass: int | None | Literal["auto"] = "auto",
    ):
        """sessions_per_pass: how many sessions segment_batch takes in one pass (None: all;
        "auto": default_sessions_per_pass)."""
        self.model = prepare_for_inference(model)
        if sessions_per_pass == "auto":
            sessions_per_pass = default_sessions_per_pass(self.model)
        self.forward = SessionsForward(self.model, name, sessions_per_pass)
        self.settings = settings or SessionSettings()
        self.info = ModelInfo(
            name=name,
            task="vos",
            version=manifest.version,
            classes=(),
            stateful=True,
            takes_prompt=True,
            one_frame_per_batch=True,  # a step reads the memory the previous frame wrote
        )

    def open_session(self, options: dict) -> VosSession:
        read_options(options, {})  # STCN takes no options: a threshold means nothing here
        return VosSession(self.model, self.settings)

    def close_session(self, state: VosSession) -> None:
        state.close()

    def step(self, item: WorkItem, ready: Prepared) -> list[Output]:
        """Commit the frame the forward segmented; a prompted frame (or one of a session with
        no objects) is segmented here, once its prompt is added."""
        session: VosSession = item.state
        try:
            if ready.segmentation is not None:
                results = session.commit(ready.frame, ready.features, ready.segmentation)
            else:
                if ready.prompt:
                    session.add_prompt(session.next_frame_index, ready.prompt)
                results = session.step(ready.frame, ready.features)
        except PromptError as error:
            raise OptionError(f"prompt: {error}") from None
        return [FrameOutput(item.index, item.time, result_objects(results))]


def decode_prompt(prompt: dict, size: tuple[int, int]) -> dict[int, np.ndarray]:
    """{object id: COCO RLE} -> {object id: (H, W) bool mask}, checked against the frame size.

    The gateways check prompts before sending them; this check keeps a worker safe from any
    client of the queue."""
    masks = {}
    for raw_id, rle in prompt.items():
        try:
            object_id = int(raw_id)
            mask = decode_rle(rle).astype(bool)
        except (TypeError, ValueError) as error:
            raise OptionError(f"prompt of object {raw_id!r} is not valid: {error}") from None
        if mask.shape != size:
            raise OptionError(
                f"prompt mask of object {object_id} is {mask.shape[1]}x{mask.shape[0]}, "
                f"the frame is {size[1]}x{size[0]}"
            )
        masks[object_id] = mask
    return masks


def result_objects(results: dict[int, ObjectResult]) -> list[DetectedObject]:
    """The session's results in the shared schema; an object absent from this frame (occluded,
    out of view) has no mask to report and is left out."""
    objects = []
    for object_id, result in results.items():
        mask = result.mask.cpu().numpy()
        box = mask_box_xyxy(mask)
        if box is None:
            continue
        objects.append(
            DetectedObject(
                track_id=object_id,
                category=OBJECT_CATEGORY,
                score=result.score,
                box=box,
                mask=encode_mask(mask),
            )
        )
    return objects


def vos_runners(loaded, name: str) -> list[ModelRunner]:
    return [VosRunner(loaded.model, loaded.manifest, name)]


register_runners("vos", vos_runners)
