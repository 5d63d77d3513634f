"""Inputs for the load generators: real H.264 videos and JPEG frames of the synthetic world (the
same kind of data the shipped models were trained on), or your own files."""

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi"}


def parse_size(size: str) -> tuple[int, int]:
    width, height = (int(v) for v in size.lower().split("x"))
    return width, height


def synthetic_frames(size: str, frames: int, seed: int, index: int = 0):
    """(T, H, W, 3) uint8 RGB frames of one synthetic video."""
    from models.data.synthetic.export import generate_video
    from models.data.synthetic.world import WorldConfig

    width, height = parse_size(size)
    world = WorldConfig(width=width, height=height, frames=frames, fps=8, max_objects=4)
    return generate_video(world, seed, index).frames


def synthetic_videos(count: int, size: str, frames: int, seed: int) -> list[tuple[str, bytes]]:
    """`count` different H.264 mp4 files as (name, bytes)."""
    from models.data.video import write_mp4

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(count):
            path = Path(tmp) / f"load{index:02d}.mp4"
            write_mp4(path, synthetic_frames(size, frames, seed, index), 8)
            out.append((path.name, path.read_bytes()))
    return out


def video_files(paths: list[Path]) -> list[tuple[str, bytes]]:
    """The videos in these files and folders (a `vidserve synth` folder's videos/ works)."""
    found = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    if not found:
        raise FileNotFoundError(f"no videos in {', '.join(map(str, paths))}")
    return [(p.name, p.read_bytes()) for p in found]


def jpeg_frames(size: str, frames: int, seed: int, quality: int = 90) -> list[bytes]:
    """A synthetic clip as encoded JPEGs, ready to send as ImageFrame.image."""
    import cv2

    encoded = []
    for frame in synthetic_frames(size, frames, seed):
        ok, data = cv2.imencode(".jpg", frame[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        encoded.append(data.tobytes())
    return encoded
