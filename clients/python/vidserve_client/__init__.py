"""vidserve's Python client: segment videos over REST, stream frames over gRPC.

    from vidserve_client import Client

    with Client("http://localhost:8000", grpc_target="localhost:50051") as client:
        result = client.segment("video.mp4", model="masktrack")
        for frame in result.frames:
            for obj in frame.objects:
                print(frame.frame_index, obj.track_id, obj.category, obj.mask.to_numpy().sum())

AsyncClient has the same methods as coroutines. Errors are VidserveError subclasses (NotFound,
BadInput, Busy, Unavailable, Unauthenticated); Retry makes Busy and Unavailable tried again.
"""

from ._base import __version__
from .aio import AsyncClient
from .client import Client
from .convert import to_supervision, write_davis, ytvis_results
from .errors import BadInput, Busy, NotFound, Unauthenticated, Unavailable, VidserveError
from .results import (
    ActionLabel,
    ActionsResult,
    DetectedObject,
    FrameResult,
    Job,
    Mask,
    ModelInfo,
    Segment,
    SegmentResult,
    Stage,
    StreamEvent,
    StreamSummary,
    TrackActions,
    TrackSummary,
)
from .retry import Retry

__all__ = [
    "ActionLabel",
    "ActionsResult",
    "AsyncClient",
    "BadInput",
    "Busy",
    "Client",
    "DetectedObject",
    "FrameResult",
    "Job",
    "Mask",
    "ModelInfo",
    "NotFound",
    "Retry",
    "Segment",
    "SegmentResult",
    "Stage",
    "StreamEvent",
    "StreamSummary",
    "TrackActions",
    "TrackSummary",
    "Unauthenticated",
    "Unavailable",
    "VidserveError",
    "__version__",
    "to_supervision",
    "write_davis",
    "ytvis_results",
]
