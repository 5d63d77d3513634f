"""What Client and AsyncClient share: requests built, answers read, errors mapped, options
checked. Everything here is free of I/O; the two clients only send and wait."""

from __future__ import annotations

import io
import json
import math
import numbers
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
import httpx
import numpy as np

from . import png
from ._proto import vidserve_pb2 as pb
from .errors import VidserveError, connection_failed, from_http
from .results import Mask, ModelInfo

__version__ = "0.1.0"

DEFAULT_URL = "http://localhost:8000"
DEFAULT_GRPC_TARGET = "localhost:50051"
DEFAULT_TIMEOUT_S = 300.0
MAX_MESSAGE_BYTES = 32 * 1024 * 1024  # the service's own limit
GRPC_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
)

# A video: a path, its bytes, or a binary file object.
Video = str | os.PathLike | bytes | bytearray | memoryview | IO[bytes]
# A prompt mask: a bool (H, W) array, or an RLE already.
PromptMask = np.ndarray | Mask
# A stream's frame: an encoded image (JPEG, PNG) or an (H, W, 3) uint8 RGB array.
Frame = bytes | np.ndarray
# What a stream takes: a frame, or a (frame, time in seconds) pair for frames on a clock of
# their own (a camera's); frames without a time are index / fps.
TimedFrame = Frame | tuple[Frame, float]
# Action categories: one comma-separated string ("person,dog") or a list of names.
Categories = str | Iterable[str]


class VideoSource:
    """A video to upload, opened afresh for every try (a retry sends it again)."""

    def __init__(self, video: Video):
        self.path: Path | None = None
        self.data: bytes | None = None
        self.file: IO[bytes] | None = None
        self.name = "video"
        if isinstance(video, (str, os.PathLike)):
            self.path = Path(video)
            if not self.path.is_file():
                raise FileNotFoundError(f"no video file at {self.path}")
            self.name = self.path.name
        elif isinstance(video, (bytes, bytearray, memoryview)):
            self.data = bytes(video)
        elif hasattr(video, "read"):
            self._take_file(video)
        else:
            raise TypeError(
                f"a video is a path, bytes or a binary file object, not {type(video).__name__}"
            )

    def _take_file(self, file: IO[bytes]) -> None:
        name = getattr(file, "name", None)
        if isinstance(name, str) and name:
            self.name = os.path.basename(name)
        seekable = getattr(file, "seekable", lambda: False)()
        if seekable:
            self.file, self.start = file, file.tell()
        else:  # read once, so that a retry can send it again
            self.data = file.read()
        if isinstance(self.data, str):
            raise TypeError("the video file is open in text mode: open it with 'rb'")

    def open(self) -> IO[bytes]:
        if self.path is not None:
            return self.path.open("rb")
        if self.file is not None:
            self.file.seek(self.start)
            return self.file
        return io.BytesIO(self.data)

    def done(self, opened: IO[bytes]) -> None:
        if opened is not self.file:  # the caller's own file stays open
            opened.close()


@dataclass
class Options:
    """The options of a whole-video request (REST /v1/segment, /v1/jobs), as form fields."""

    model: str | None = None
    score_threshold: float | None = None
    frame_stride: int | None = None
    max_frames: int | None = None
    prompt: Mapping[int, PromptMask] | None = None
    prompt_frame: int | None = None
    # Action models (slowfast-acrn): seconds between key frames, the categories of the objects
    # that get actions, the lowest label score answered.
    action_stride: float | None = None
    action_categories: Categories | None = None
    action_min_score: float | None = None
    # Action models with a feature bank: the past seconds of each track's features it reads.
    action_bank_window: float | None = None
    # VOS models: the short side at which frames are segmented (smaller: faster, coarser).
    short_edge: int | None = None

    def form(self) -> dict[str, str]:
        """The form fields of the options given; one left as None is not sent, so the service
        uses its default (and a model without an action stage sees no action option)."""
        fields = {
            "model": self.model,
            "score_threshold": self.score_threshold,
            "frame_stride": self.frame_stride,
            "max_frames": self.max_frames,
            "prompt_frame": self.prompt_frame,
            "action_stride": self.action_stride,
            "action_min_score": self.action_min_score,
            "action_bank_window": self.action_bank_window,
            "short_edge": self.short_edge,
        }
        if self.action_categories is not None:
            fields["action_categories"] = categories_text(self.action_categories)
        form = {name: str(value) for name, value in fields.items() if value is not None}
        if self.prompt is not None:
            form["prompt_rle"] = json.dumps(
                {str(object_id): mask.to_dict() for object_id, mask in prompt_masks(self.prompt)}
            )
        return form


def categories_text(categories: Categories) -> str:
    """Action categories as the service takes them: one comma-separated string. A string is
    sent as it is; a list is checked (names, no commas) so that a mistake is not a category the
    service does not know."""
    if isinstance(categories, str):
        return categories
    names = list(categories)
    if not names:
        raise ValueError("action_categories is empty: leave it out (None) for every category")
    for name in names:
        if not isinstance(name, str) or not name or "," in name:
            raise ValueError(f"{name!r} is not a category name (a non-empty str without commas)")
    return ",".join(names)


def prompt_masks(prompt: Mapping[int, PromptMask]) -> list[tuple[int, Mask]]:
    """{object id: mask} as (id, RLE) pairs, checked (ids 1..255, masks 2-D)."""
    if not isinstance(prompt, Mapping) or not prompt:
        raise ValueError("a prompt is a non-empty {object id: mask} mapping")
    pairs = []
    for object_id, mask in prompt.items():
        if isinstance(object_id, bool) or not isinstance(object_id, (int, np.integer)):
            raise ValueError(f"object id {object_id!r} is not an integer")
        if not 1 <= object_id <= 255:
            raise ValueError(f"object id {object_id} is outside 1..255")
        if not isinstance(mask, Mask):
            array = np.asarray(mask)
            if array.ndim != 2:
                raise ValueError(f"the mask of object {object_id} is not (H, W): {array.shape}")
            mask = Mask.from_numpy(array)
        pairs.append((int(object_id), mask))
    return pairs


# --- REST answers --------------------------------------------------------------------------------
def auth_headers(api_key: str | None) -> dict[str, str]:
    headers = {"User-Agent": f"vidserve-client/{__version__}"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def read_json(response: httpx.Response):
    """The JSON of a successful answer; the VidserveError of a refusal."""
    if response.status_code >= 400:
        raise from_http(
            response.status_code, response.headers, response.content, response.reason_phrase
        )
    if response.status_code == 204 or not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        request_id = response.headers.get("x-request-id")
        raise VidserveError(
            response.status_code, "Not JSON", response.text[:200], request_id
        ) from None


def transport_error(error: httpx.TransportError, url: str) -> VidserveError:
    """No answer: a connection that failed is Unavailable (retried); anything else (a timeout
    while the service computes, a broken connection) a plain VidserveError."""
    if isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout)):
        return connection_failed(error, url)
    return VidserveError(None, type(error).__name__, f"{url}: {error}")


def job_path(job) -> str:
    job_id = getattr(job, "id", job)
    if not isinstance(job_id, str) or not job_id or "/" in job_id:
        raise ValueError(f"{job_id!r} is not a job id")
    return f"/v1/jobs/{job_id}"


# --- gRPC ----------------------------------------------------------------------------------------
def grpc_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


def open_channel(target: str, credentials: grpc.ChannelCredentials | None, aio: bool):
    module = grpc.aio if aio else grpc
    if credentials is None:
        return module.insecure_channel(target, options=GRPC_OPTIONS)
    return module.secure_channel(target, credentials, options=GRPC_OPTIONS)


def session_config(
    model: str | None,
    score_threshold: float | None,
    summary: bool,
    *,
    fps: float | None = None,
    action_stride: float | None = None,
    action_categories: Categories | None = None,
    action_min_score: float | None = None,
    action_bank_window: float | None = None,
    short_edge: int | None = None,
) -> pb.StreamRequest:
    """A stream's first message. None leaves an optional field unset: the service's default."""
    categories = "" if action_categories is None else categories_text(action_categories)
    config = pb.SessionConfig(
        model=model or "",
        score_threshold=score_threshold,
        summary=summary,
        fps=fps,
        action_stride=action_stride,
        action_categories=categories,
        action_min_score=action_min_score,
        action_bank_window=action_bank_window,
        short_edge=short_edge,
    )
    return pb.StreamRequest(config=config)


def stream_prompts(
    prompts: Mapping[int, Mapping[int, PromptMask]] | None,
) -> dict[int, list[pb.ObjectPrompt]]:
    """{frame index: {object id: mask}} as the ObjectPrompts of each frame, checked up front."""
    if prompts is None:
        return {}
    out = {}
    for index, prompt in prompts.items():
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
            raise ValueError(f"prompts are keyed by frame index (>= 0), not {index!r}")
        out[int(index)] = [
            pb.ObjectPrompt(
                object_id=object_id,
                mask=pb.Mask(
                    size=list(mask.size), height=mask.height, width=mask.width, counts=mask.counts
                ),
            )
            for object_id, mask in prompt_masks(prompt)
        ]
    return out


def split_frame(item: TimedFrame, index: int) -> tuple[Frame, float | None]:
    """A stream's item as (frame, time): a (frame, seconds) pair, or a frame alone (no time)."""
    if not isinstance(item, tuple):
        return item, None
    if len(item) != 2:
        raise TypeError(f"frame {index} is a tuple of {len(item)}: a timed frame is (frame, time)")
    frame, time = item
    # bool is an int to Python, but True as a time is a mistake
    if isinstance(time, bool) or not isinstance(time, numbers.Real) or not math.isfinite(time):
        raise ValueError(f"the time of frame {index} is {time!r}: seconds, a finite number")
    return frame, float(time)


def is_array_frame(item: TimedFrame) -> bool:
    """Whether the item's frame is an array (PNG-encoded before sending, which takes time)."""
    frame = item[0] if isinstance(item, tuple) and item else item
    return isinstance(frame, np.ndarray)


def frame_request(
    frame: Frame, index: int, prompts: list[pb.ObjectPrompt], time: float | None = None
) -> pb.StreamRequest:
    """A frame as an ImageFrame: encoded images as they are, arrays as PNG; `time` (seconds)
    when given, else the service counts it as index / the config's fps."""
    if isinstance(frame, (bytes, bytearray, memoryview)):
        image = bytes(frame)
    elif isinstance(frame, np.ndarray):
        image = png.encode_rgb(frame)
    else:
        raise TypeError(
            f"frame {index} is a {type(frame).__name__}: a frame is an encoded image (bytes) or "
            "an (H, W, 3) uint8 RGB array"
        )
    message = pb.ImageFrame(image=image, frame_index=index, time=time, prompts=prompts)
    return pb.StreamRequest(frame=message)


@dataclass
class StreamState:
    """Between a stream's request side (its own thread or task) and the reader: the admission
    gate (no frame is taken from the caller's iterable before the service admits the stream,
    so a refused stream can be tried again), the prompts sent, and an error of the caller's
    frames."""

    prompts: dict[int, list[pb.ObjectPrompt]]
    sent_prompts: set[int] = field(default_factory=set)
    admitted: bool = False
    error: BaseException | None = None

    def request(self, item: TimedFrame, index: int) -> pb.StreamRequest:
        frame, time = split_frame(item, index)
        prompts = self.prompts.get(index, [])
        if prompts:
            self.sent_prompts.add(index)
        return frame_request(frame, index, prompts, time)

    def check_prompts_sent(self) -> None:
        unsent = sorted(set(self.prompts) - self.sent_prompts)
        if unsent:
            raise ValueError(f"prompts for frames {unsent} that the stream did not reach")


def admitted(initial_metadata) -> bool:
    """The service sends a stream's initial metadata once it admits it (vidserve-session:
    accepted); a refusal ends the call without any."""
    return bool(initial_metadata)


# --- models and their classes --------------------------------------------------------------------
class ClassCache:
    """The class lists of the served models, asked once per client: results carry them so that
    conversions can number categories."""

    def __init__(self):
        self.classes: dict[str, tuple[str, ...]] = {}
        self.asked: set[str] = set()  # models looked up, found or not: never asked twice

    def update(self, models: Iterable[ModelInfo]) -> None:
        self.classes.update({m.name: tuple(m.classes) for m in models})

    def needs(self, model: str | None) -> bool:
        """Whether to ask the service for the model's classes (once per model)."""
        if not model or model in self.classes or model in self.asked:
            return False
        self.asked.add(model)
        return True

    def get(self, model: str | None) -> tuple[str, ...] | None:
        return self.classes.get(model) if model else None
