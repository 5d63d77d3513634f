"""The web page's routes: the page (`/`), its files (`/static/...`) and sample videos.

The page is plain HTML, CSS and JavaScript modules (no build step, nothing from a CDN), so it
works offline. The samples come from the synthetic world the shipped checkpoints were trained
on: generated on the first request (off the event loop), the same bytes every time, kept in
memory after that.
"""

import asyncio
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

from models.data.synthetic.export import generate_video
from models.data.synthetic.world import WorldConfig
from models.data.video import write_mp4
from service.gateway.video_input import InputError

STATIC = Path(__file__).parent / "static"
# Explicit types: the platform's mimetypes table may lack .js or map it to text/plain, and
# browsers refuse a module script served as anything but JavaScript.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
# The page's files, listed once: a name not here is a 404, never a path on disk.
STATIC_FILES = {p.name: p for p in STATIC.iterdir() if p.suffix in CONTENT_TYPES}


@dataclass(frozen=True)
class Sample:
    name: str
    description: str
    seed: int
    index: int
    frames: int = 24
    fps: int = 8


SAMPLES = {
    s.name: s
    for s in [
        Sample("shapes-a", "synthetic shapes, 24 frames", seed=2026, index=0),
        Sample("shapes-b", "synthetic shapes, 24 frames", seed=2026, index=1),
        Sample("shapes-c", "synthetic shapes, 24 frames", seed=2026, index=2),
    ]
}

router = APIRouter()
_encoded: dict[str, bytes] = {}
_encoding = threading.Lock()  # one encode at a time: a burst of requests encodes each once


def _static(name: str) -> FileResponse:
    path = STATIC_FILES.get(name)
    if path is None:
        raise InputError(404, "Not found", f"no file '{name}' here")
    # no-cache: the browser revalidates (cheap, ETag), so a new version of the page is seen.
    headers = {"Cache-Control": "no-cache"}
    return FileResponse(path, media_type=CONTENT_TYPES[path.suffix], headers=headers)


@router.get("/", include_in_schema=False)
async def page():
    return _static("index.html")


@router.get("/static/{name}", include_in_schema=False)
async def static_file(name: str):
    return _static(name)


@router.get("/v1/samples", tags=["web"], summary="Sample videos to try the models on")
async def samples():
    return {
        "samples": [
            {
                "name": s.name,
                "description": s.description,
                "url": f"/v1/samples/{s.name}.mp4",
                "frames": s.frames,
                "fps": s.fps,
            }
            for s in SAMPLES.values()
        ]
    }


@router.get(
    "/v1/samples/{name}.mp4",
    tags=["web"],
    summary="One sample video (H.264 mp4, 320x240)",
    response_class=Response,
    responses={200: {"content": {"video/mp4": {}}}, 404: {"description": "Unknown sample"}},
)
async def sample_video(name: str):
    sample = SAMPLES.get(name)
    if sample is None:
        known = ", ".join(SAMPLES)
        raise InputError(404, "Unknown sample", f"no sample '{name}'; samples: {known}")
    return Response(await _sample_bytes(sample), media_type="video/mp4")


async def _sample_bytes(sample: Sample) -> bytes:
    return await asyncio.to_thread(_cached_sample, sample)


def _cached_sample(sample: Sample) -> bytes:
    with _encoding:
        if sample.name not in _encoded:
            _encoded[sample.name] = _encode_sample(sample)
        return _encoded[sample.name]


def _encode_sample(sample: Sample) -> bytes:
    """Render the sample's scene and encode it (deterministic: write_mp4 uses fixed options)."""
    world = WorldConfig(width=320, height=240, frames=sample.frames, fps=sample.fps)
    video = generate_video(world, sample.seed, sample.index)
    with tempfile.TemporaryDirectory(prefix="vidserve-sample-") as folder:
        path = Path(folder) / f"{sample.name}.mp4"
        write_mp4(path, video.frames, sample.fps)
        return path.read_bytes()
