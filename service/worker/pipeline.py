"""Pipelines: one served model made of a chain of stages, e.g. tracking -> an action head.

The first stage is a runner like any other, and the pipeline shares its `BatchedForward`: the
frames of pipeline sessions and of the first stage's own sessions go through one forward pass (one
copy of the weights on the device). After that stage's step, each later stage (a `StageHead`) sees
the frame and what the stages before it answered, keeps its own per-session state and may answer
late (an action head answers a key frame when its clip is complete). Every result names every
stage (`ModelInfo.stages`).

Pipelines register in one place (`register_pipeline`); `load_runners` builds the registered ones
over the runners of a checkpoint as it loads them, so a new version of the first stage brings a
new version of the pipeline.
"""

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

from service.worker.runner import ModelInfo, ModelRunner, Output, WorkItem


class StageHead(ABC):
    """A later stage of a pipeline."""

    name: str
    version: str
    option_names: tuple[str, ...] = ()  # the session options this stage takes
    # Options the first stage gets in this pipeline unless the request sets them (e.g. an action
    # head's own tracker threshold in place of the tracker's served default).
    first_stage_defaults: dict[str, object] = {}
    actions: tuple[str, ...] = ()  # the action labels it answers (GET /v1/models lists them)

    def open_session(self, options: dict) -> object:
        """Validate this stage's options (raise OptionError); its per-session state."""
        return None

    @abstractmethod
    def step(self, state: object, item: WorkItem, upstream: list[Output]) -> list[Output]:
        """The frame and the outputs of the stages before it -> this stage's outputs."""

    def flush(self, state: object, upstream: list[Output]) -> list[Output]:
        return []

    def close_session(self, state: object) -> None:  # noqa: B027 - optional hook
        pass


@dataclass
class PipelineSession:
    first: object
    heads: list[object] = field(default_factory=list)


class PipelineRunner(ModelRunner):
    def __init__(self, name: str, task: str, first: ModelRunner, heads: list[StageHead]):
        if not heads:
            raise ValueError("a pipeline needs at least one stage after the first")
        self.first = first
        self.heads = heads
        self.forward = first.forward  # shared batches, shared weights
        stages = (*first.info.stage_list(), *((h.name, h.version) for h in heads))
        self.info = ModelInfo(
            name=name,
            task=task,
            version="+".join(version for _, version in stages),
            classes=first.info.classes,
            stateful=True,
            takes_prompt=first.info.takes_prompt,
            one_frame_per_batch=first.info.one_frame_per_batch or not first.stateful,
            stages=stages,
            actions=tuple(label for head in heads for label in head.actions),
        )

    def open_session(self, options: dict) -> PipelineSession:
        own = {n for head in self.heads for n in head.option_names}
        first_options = {k: v for head in self.heads for k, v in head.first_stage_defaults.items()}
        first_options.update({k: v for k, v in options.items() if k not in own})
        first = self.first.open_session(first_options)
        heads = []
        for head in self.heads:
            heads.append(
                head.open_session({k: options[k] for k in head.option_names if k in options})
            )
        return PipelineSession(first, heads)

    def forward_view(self, state: PipelineSession) -> object:
        return self.first.forward_view(state.first)

    def step(self, item: WorkItem, output) -> list[Output]:
        # Stages commit in order; a stage must check what it can before it changes its state,
        # as every step must (the first stage's step is already such a step).
        outputs = list(self.first.step(item.viewing(item.state.first), output))
        for head, head_state in zip(self.heads, item.state.heads, strict=True):
            outputs += head.step(head_state, item, outputs)
        return outputs

    def flush(self, state: PipelineSession) -> list[Output]:
        outputs = list(self.first.flush(state.first))
        for head, head_state in zip(self.heads, state.heads, strict=True):
            outputs += head.flush(head_state, outputs)
        return outputs

    def close_session(self, state: PipelineSession) -> None:
        self.first.close_session(state.first)
        for head, head_state in zip(self.heads, state.heads, strict=True):
            head.close_session(head_state)


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    task: str
    first: str  # the model name of the first stage
    heads: Callable[[ModelRunner], list[StageHead]]  # builds the later stages for a first stage


_PIPELINES: dict[str, PipelineSpec] = {}


def register_pipeline(spec: PipelineSpec) -> None:
    _PIPELINES[spec.name] = spec


def unregister_pipeline(name: str) -> None:
    _PIPELINES.pop(name, None)


def registered_pipelines() -> dict[str, PipelineSpec]:
    return dict(_PIPELINES)


def build_pipeline(spec: PipelineSpec, first: ModelRunner) -> PipelineRunner:
    return PipelineRunner(spec.name, spec.task, first, spec.heads(first))


def pipelines_over(runners: list[ModelRunner]) -> list[PipelineRunner]:
    """The registered pipelines whose first stage is one of `runners`."""
    by_name = {r.info.name: r for r in runners}
    return [
        build_pipeline(spec, by_name[spec.first])
        for spec in _PIPELINES.values()
        if spec.first in by_name
    ]
