"""STCN in the worker: key encoding batched across sessions (the forward), then each session's
memory step (readout, decoder, memorising: the step).

A frame's work splits in two (models.vos.inference): the key encoder, the same for every
session and the heaviest part, runs once over the frames of all sessions in the batch; then each
session reads its own memory, decodes its objects and memorises. Prompts ({object id: COCO RLE})
arrive with the frame they mark and are given to the session just before that frame's step.
"""

from dataclasses import dataclass

import numpy as np

from models.checkpoints.manifest import Manifest
from models.data.rle import decode_rle, encode_mask, mask_box_xyxy
from models.vos import (
    STCN,
    KeyFeatures,
    ObjectResult,
    PreparedFrame,
    PromptError,
    SessionSettings,
    VosSession,
    encode_key_batch,
    prepare_for_inference,
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


@dataclass
class Prepared:
    """The forward pass's answer for one item: its frame as the model takes it, its decoded
    prompt and, when the frame will be segmented, its key features."""

    frame: PreparedFrame
    prompt: dict[int, np.ndarray] | None = None
    features: KeyFeatures | None = None


class KeyEncoderForward(BatchedForward):
    """The key encoder over the frames of every session in a batch: the heaviest part of a frame,
    the same for all sessions. It reads whether a session has objects; it writes nothing."""

    def __init__(self, model: STCN, name: str):
        self.model = model
        self.name = f"{name}-key-encoder"

    def run(self, items: list[WorkItem]) -> list[Prepared | OptionError]:
        prepared = [self._prepare(item) for item in items]
        # Only frames that will be segmented need keys: a session with no object yet and no
        # prompt on this frame answers "nothing" without touching the network.
        wanted = [
            ready
            for item, ready in zip(items, prepared, strict=True)
            if isinstance(ready, Prepared) and (ready.prompt or item.state.needs_key_features())
        ]
        encoded = encode_key_batch(self.model, [ready.frame for ready in wanted])
        for ready, features in zip(wanted, encoded, strict=True):
            ready.features = features
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
        self, model: STCN, manifest: Manifest, name: str, settings: SessionSettings | None = None
    ):
        self.model = prepare_for_inference(model)
        self.forward = KeyEncoderForward(self.model, name)
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
        """Read the memory, decode the objects, memorise: the session's own part of a frame."""
        session: VosSession = item.state
        try:
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
