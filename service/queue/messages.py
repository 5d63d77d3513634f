"""Messages between gateways and workers. Both transports carry exactly these."""

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np


class ErrorCode(StrEnum):
    """Why a session or frame failed; the gateways map each to an HTTP status and a gRPC code."""

    INVALID_ARGUMENT = "invalid_argument"  # bad option, prompt or frame
    NOT_FOUND = "not_found"  # unknown model
    STATE_LOST = "state_lost"  # the worker holding the session died
    UNAVAILABLE = "unavailable"  # no worker serves the model
    RESOURCE_EXHAUSTED = "resource_exhausted"  # the worker's session table is full
    INTERNAL = "internal"  # a bug: logged with its traceback


@dataclass
class OpenSession:
    session_id: str
    model: str
    options: dict = field(default_factory=dict)
    reply_to: str = ""  # the gateway that waits for the replies


@dataclass
class Frame:
    session_id: str
    index: int
    time: float
    image: np.ndarray  # (H, W, 3) uint8 RGB
    prompt: dict | None = None  # prompted models: {object id: COCO RLE}
    model: str = ""
    options: dict = field(default_factory=dict)  # stateless models: any worker may take the frame
    reply_to: str = ""
    receipt: object = None  # the transport's handle to acknowledge the frame (Redis entry id)


@dataclass
class CloseSession:
    session_id: str
    reply_to: str = ""


WorkMessage = OpenSession | Frame | CloseSession


@dataclass
class Reply:
    """One answer to a gateway: a frame's result, an error, or the session's end."""

    session_id: str
    index: int | None = None  # the frame answered; None for session-level replies
    objects: list[dict] | None = None
    time: float = 0.0
    model: str = ""
    model_version: str = ""
    error_code: ErrorCode | None = None
    error: str = ""
    closed: bool = False  # the last reply of the session
