"""STCN in the worker: the heavy work of a round of frames, batched across sessions (the
forward), then each session's commit (the step).

The forward (models.vos.inference) runs the key encoder once over the frames of all sessions in
the batch, then `step_round`: every session's memory readout (memories of different lengths
padded and masked), the decoder over all their objects and the value encoder over the objects
of the frames to memorise, in batched passes. It reads the sessions' memories and changes none.
The step commits each session's frame: its memory frame, its prompt, its objects. Prompts
({object id: COCO RLE}) arrive with the frame they mark; the forward plans the frame with its
prompt and the step adds both to the session together.
"""

from dataclasses import dataclass, replace

import numpy as np

from models.checkpoints.manifest import Manifest
from models.data.rle import decode_rle, encode_mask, mask_box_xyxy
from models.vos import (
    STCN,
    FrameStep,
    ObjectResult,
    PreparedFrame,
    PromptError,
    SessionSettings,
    VosSession,
    encode_key_batch,
    prepare_for_inference,
    step_round,
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
# The smallest working short side a session may ask for: 4 cells of the stride-16 features.
MIN_SHORT_EDGE = 64


@dataclass
class Prepared:
    """A frame as the forward pass has it: the frame as the model takes it, its decoded prompt
    and, once the round is computed, the step that the session commits."""

    frame: PreparedFrame
    prompt: dict[int, np.ndarray] | None = None
    step: FrameStep | None = None


class StcnForward(BatchedForward):
    """A round of frames of many sessions: the key encoder over all of them, then the memory
    readout, decoder and value encoder over all sessions in batched passes (step_round). It
    reads the sessions (objects, prompts, memories) and changes none."""

    def __init__(self, model: STCN, name: str):
        self.model = model
        self.name = f"{name}-round"

    def run(self, items: list[WorkItem]) -> list[Prepared | OptionError]:
        prepared = [self._prepare(item) for item in items]
        # Only frames that will be segmented need keys: a session with no object yet and no
        # prompt on this frame answers "nothing" without touching the network.
        wanted = [
            position
            for position, (item, ready) in enumerate(zip(items, prepared, strict=True))
            if isinstance(ready, Prepared) and (ready.prompt or item.state.needs_key_features())
        ]
        encoded = encode_key_batch(self.model, [prepared[p].frame for p in wanted])
        features = dict(zip(wanted, encoded, strict=True))
        plans, planned = [], []
        for position, (item, ready) in enumerate(zip(items, prepared, strict=True)):
            if not isinstance(ready, Prepared):
                continue
            session: VosSession = item.state
            try:
                plans.append(session.plan(ready.frame, features.get(position), ready.prompt))
            except PromptError as error:
                prepared[position] = OptionError(f"prompt: {error}")
                continue
            planned.append(ready)
        for ready, step in zip(planned, step_round(self.model, plans), strict=True):
            ready.step = step
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
        self.forward = StcnForward(self.model, name)
        self.settings = settings or SessionSettings()
        self.info = ModelInfo(
            name=name,
            task="vos",
            version=manifest.version,
            classes=(),
            stateful=True,
            takes_prompt=True,
            one_frame_per_batch=True,  # the forward reads the memory the previous step wrote
        )

    def open_session(self, options: dict) -> VosSession:
        # A threshold means nothing here; a session may work smaller than the checkpoint does
        # (faster: the readout is quadratic in positions), never larger (costlier).
        largest = self.settings.short_edge or self.model.config.short_edge
        smallest = min(MIN_SHORT_EDGE, largest or MIN_SHORT_EDGE)
        spec = {"short_edge": (int, largest or smallest, smallest, largest)}
        short_edge = read_options(options, spec)["short_edge"]  # names it in any refusal
        if "short_edge" not in options:
            return VosSession(self.model, self.settings)
        return VosSession(self.model, replace(self.settings, short_edge=short_edge))

    def close_session(self, state: VosSession) -> None:
        state.close()

    def step(self, item: WorkItem, ready: Prepared) -> list[Output]:
        """Commit the frame the forward computed: its memory frame, prompt and objects."""
        session: VosSession = item.state
        if ready.step is None:
            raise RuntimeError(f"frame {item.index} of {item.session_id} was not computed")
        results = session.commit(ready.step)
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
