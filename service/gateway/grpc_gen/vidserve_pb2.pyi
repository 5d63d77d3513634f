from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SessionConfig(_message.Message):
    __slots__ = ("model", "score_threshold", "summary", "fps", "action_stride", "action_categories", "action_min_score", "action_bank_window", "short_edge")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    ACTION_STRIDE_FIELD_NUMBER: _ClassVar[int]
    ACTION_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    ACTION_MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    ACTION_BANK_WINDOW_FIELD_NUMBER: _ClassVar[int]
    SHORT_EDGE_FIELD_NUMBER: _ClassVar[int]
    model: str
    score_threshold: float
    summary: bool
    fps: float
    action_stride: float
    action_categories: str
    action_min_score: float
    action_bank_window: float
    short_edge: int
    def __init__(self, model: _Optional[str] = ..., score_threshold: _Optional[float] = ..., summary: _Optional[bool] = ..., fps: _Optional[float] = ..., action_stride: _Optional[float] = ..., action_categories: _Optional[str] = ..., action_min_score: _Optional[float] = ..., action_bank_window: _Optional[float] = ..., short_edge: _Optional[int] = ...) -> None: ...

class Mask(_message.Message):
    __slots__ = ("height", "width", "counts", "size")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    counts: str
    size: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., counts: _Optional[str] = ..., size: _Optional[_Iterable[int]] = ...) -> None: ...

class ObjectPrompt(_message.Message):
    __slots__ = ("object_id", "mask")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    object_id: int
    mask: Mask
    def __init__(self, object_id: _Optional[int] = ..., mask: _Optional[_Union[Mask, _Mapping]] = ...) -> None: ...

class ImageFrame(_message.Message):
    __slots__ = ("image", "frame_index", "time", "prompts")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    frame_index: int
    time: float
    prompts: _containers.RepeatedCompositeFieldContainer[ObjectPrompt]
    def __init__(self, image: _Optional[bytes] = ..., frame_index: _Optional[int] = ..., time: _Optional[float] = ..., prompts: _Optional[_Iterable[_Union[ObjectPrompt, _Mapping]]] = ...) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("config", "frame")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    config: SessionConfig
    frame: ImageFrame
    def __init__(self, config: _Optional[_Union[SessionConfig, _Mapping]] = ..., frame: _Optional[_Union[ImageFrame, _Mapping]] = ...) -> None: ...

class ActionLabel(_message.Message):
    __slots__ = ("label", "score", "key_frame")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    KEY_FRAME_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    key_frame: int
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ..., key_frame: _Optional[int] = ...) -> None: ...

class Stage(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class Segment(_message.Message):
    __slots__ = ("id", "category", "isthing", "score", "area", "mask", "track_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    ISTHING_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    AREA_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    TRACK_ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    category: str
    isthing: bool
    score: float
    area: int
    mask: Mask
    track_id: int
    def __init__(self, id: _Optional[int] = ..., category: _Optional[str] = ..., isthing: _Optional[bool] = ..., score: _Optional[float] = ..., area: _Optional[int] = ..., mask: _Optional[_Union[Mask, _Mapping]] = ..., track_id: _Optional[int] = ...) -> None: ...

class TrackActions(_message.Message):
    __slots__ = ("track_id", "actions")
    TRACK_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    track_id: int
    actions: _containers.RepeatedCompositeFieldContainer[ActionLabel]
    def __init__(self, track_id: _Optional[int] = ..., actions: _Optional[_Iterable[_Union[ActionLabel, _Mapping]]] = ...) -> None: ...

class DetectedObject(_message.Message):
    __slots__ = ("track_id", "category", "score", "box", "mask", "actions")
    TRACK_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    track_id: int
    category: str
    score: float
    box: _containers.RepeatedScalarFieldContainer[float]
    mask: Mask
    actions: _containers.RepeatedCompositeFieldContainer[ActionLabel]
    def __init__(self, track_id: _Optional[int] = ..., category: _Optional[str] = ..., score: _Optional[float] = ..., box: _Optional[_Iterable[float]] = ..., mask: _Optional[_Union[Mask, _Mapping]] = ..., actions: _Optional[_Iterable[_Union[ActionLabel, _Mapping]]] = ...) -> None: ...

class FrameResult(_message.Message):
    __slots__ = ("frame_index", "time", "objects", "model", "model_version", "segments", "stages", "kind", "track_actions", "tracks")
    class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        FRAME: _ClassVar[FrameResult.EventKind]
        ACTIONS: _ClassVar[FrameResult.EventKind]
        SUMMARY: _ClassVar[FrameResult.EventKind]
    FRAME: FrameResult.EventKind
    ACTIONS: FrameResult.EventKind
    SUMMARY: FrameResult.EventKind
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TRACK_ACTIONS_FIELD_NUMBER: _ClassVar[int]
    TRACKS_FIELD_NUMBER: _ClassVar[int]
    frame_index: int
    time: float
    objects: _containers.RepeatedCompositeFieldContainer[DetectedObject]
    model: str
    model_version: str
    segments: _containers.RepeatedCompositeFieldContainer[Segment]
    stages: _containers.RepeatedCompositeFieldContainer[Stage]
    kind: FrameResult.EventKind
    track_actions: _containers.RepeatedCompositeFieldContainer[TrackActions]
    tracks: _containers.RepeatedCompositeFieldContainer[TrackSummary]
    def __init__(self, frame_index: _Optional[int] = ..., time: _Optional[float] = ..., objects: _Optional[_Iterable[_Union[DetectedObject, _Mapping]]] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., segments: _Optional[_Iterable[_Union[Segment, _Mapping]]] = ..., stages: _Optional[_Iterable[_Union[Stage, _Mapping]]] = ..., kind: _Optional[_Union[FrameResult.EventKind, str]] = ..., track_actions: _Optional[_Iterable[_Union[TrackActions, _Mapping]]] = ..., tracks: _Optional[_Iterable[_Union[TrackSummary, _Mapping]]] = ...) -> None: ...

class VideoConfig(_message.Message):
    __slots__ = ("session", "frame_stride", "max_frames")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    FRAME_STRIDE_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAMES_FIELD_NUMBER: _ClassVar[int]
    session: SessionConfig
    frame_stride: int
    max_frames: int
    def __init__(self, session: _Optional[_Union[SessionConfig, _Mapping]] = ..., frame_stride: _Optional[int] = ..., max_frames: _Optional[int] = ...) -> None: ...

class VideoChunk(_message.Message):
    __slots__ = ("config", "data")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    config: VideoConfig
    data: bytes
    def __init__(self, config: _Optional[_Union[VideoConfig, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class TrackSummary(_message.Message):
    __slots__ = ("track_id", "category", "score", "first_frame", "last_frame", "num_frames")
    TRACK_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    FIRST_FRAME_FIELD_NUMBER: _ClassVar[int]
    LAST_FRAME_FIELD_NUMBER: _ClassVar[int]
    NUM_FRAMES_FIELD_NUMBER: _ClassVar[int]
    track_id: int
    category: str
    score: float
    first_frame: int
    last_frame: int
    num_frames: int
    def __init__(self, track_id: _Optional[int] = ..., category: _Optional[str] = ..., score: _Optional[float] = ..., first_frame: _Optional[int] = ..., last_frame: _Optional[int] = ..., num_frames: _Optional[int] = ...) -> None: ...

class SegmentResponse(_message.Message):
    __slots__ = ("model", "model_version", "width", "height", "fps", "frames", "tracks", "stages", "actions")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    TRACKS_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: str
    width: int
    height: int
    fps: float
    frames: _containers.RepeatedCompositeFieldContainer[FrameResult]
    tracks: _containers.RepeatedCompositeFieldContainer[TrackSummary]
    stages: _containers.RepeatedCompositeFieldContainer[Stage]
    actions: _containers.RepeatedCompositeFieldContainer[FrameResult]
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., fps: _Optional[float] = ..., frames: _Optional[_Iterable[_Union[FrameResult, _Mapping]]] = ..., tracks: _Optional[_Iterable[_Union[TrackSummary, _Mapping]]] = ..., stages: _Optional[_Iterable[_Union[Stage, _Mapping]]] = ..., actions: _Optional[_Iterable[_Union[FrameResult, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "task", "version", "classes", "takes_prompt", "stages", "actions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    TAKES_PROMPT_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    task: str
    version: str
    classes: _containers.RepeatedScalarFieldContainer[str]
    takes_prompt: bool
    stages: _containers.RepeatedCompositeFieldContainer[Stage]
    actions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., task: _Optional[str] = ..., version: _Optional[str] = ..., classes: _Optional[_Iterable[str]] = ..., takes_prompt: _Optional[bool] = ..., stages: _Optional[_Iterable[_Union[Stage, _Mapping]]] = ..., actions: _Optional[_Iterable[str]] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...
