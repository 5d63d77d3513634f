"""Messages between gateways and workers. Both transports carry exactly these.

`PROTOCOL_VERSION` names this set of messages. A gateway opens a session with its version; a
worker of an incompatible version answers with an error that says so (never a crash mid-stream),
and each side ignores the fields of a message that it does not know.
"""

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from service.schemas import DetectedObject, Segment, TrackActions

PROTOCOL_VERSION = 2
# The oldest peer version this one still understands (the messages of 1 had no protocol field,
# sent frames as raw RGB and answered one reply per frame: not compatible).
MIN_PROTOCOL_VERSION = 2


class ErrorCode(StrEnum):
    """Why a session or frame failed; the gateways map each to an HTTP status and a gRPC code."""

    INVALID_ARGUMENT = "invalid_argument"  # bad option, prompt or frame
    NOT_FOUND = "not_found"  # unknown model
    STATE_LOST = "state_lost"  # the worker holding the session died
    UNAVAILABLE = "unavailable"  # no worker serves the model
    RESOURCE_EXHAUSTED = "resource_exhausted"  # the worker's session table is full
    INTERNAL = "internal"  # a bug: logged with its traceback
    PROTOCOL = "protocol"  # gateway and worker speak incompatible protocol versions


@dataclass
class OpenSession:
    session_id: str
    model: str
    options: dict = field(default_factory=dict)
    reply_to: str = ""  # the gateway that waits for the replies
    protocol: int = PROTOCOL_VERSION
    request_id: str = ""  # the client request's id: the worker's log lines of the session show it


@dataclass
class Frame:
    session_id: str
    index: int
    time: float
    image: np.ndarray | None  # (H, W, 3) uint8 RGB; None while only `encoded` is known
    prompt: dict | None = None  # prompted models: {object id: COCO RLE}
    model: str = ""
    options: dict = field(default_factory=dict)  # stateless models: any worker may take the frame
    reply_to: str = ""
    receipt: object = None  # the transport's handle to acknowledge the frame (Redis entry id)
    encoded: bytes | None = None  # the client's JPEG/PNG as sent, when it sent one
    protocol: int = PROTOCOL_VERSION
    request_id: str = ""  # stateless frames: any worker may log for the request


@dataclass
class CloseSession:
    session_id: str
    reply_to: str = ""


WorkMessage = OpenSession | Frame | CloseSession


class ReplyKind(StrEnum):
    FRAME = "frame"  # the masks of frame `index` (objects, segments), or that frame's error
    ACTIONS = "actions"  # action labels of the tracks at key frame `index`
    TAKEN = "taken"  # frame `index` is in the session; its own result comes later, or never
    END = "end"  # the session's last reply (with an error when it failed)


@dataclass
class Reply:
    """One answer to a gateway.

    Every frame a worker takes is answered by exactly one reply with `taken` set: the frame's own
    result (FRAME), or a bare TAKEN when it has none yet (a clip model's look-ahead). That reply
    gives the session's flow-control window its slot back. Other replies (a key frame's actions,
    the masks of an earlier frame) come with `taken` unset, at any time before END.
    """

    session_id: str
    index: int | None = None  # the frame answered; None for session-level replies
    kind: ReplyKind = ReplyKind.FRAME
    taken: bool = False
    time: float = 0.0
    objects: list[DetectedObject] | None = None
    segments: list[Segment] | None = None
    tracks: list[TrackActions] | None = None  # ACTIONS
    model: str = ""
    model_version: str = ""
    stages: list[tuple[str, str]] = field(default_factory=list)  # (name, version) of each stage
    error_code: ErrorCode | None = None
    error: str = ""

    @property
    def closed(self) -> bool:
        return self.kind == ReplyKind.END
