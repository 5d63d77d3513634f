"""DAVIS 2017 (semi-supervised): reader and writer.

Layout: `JPEGImages/480p/<video>/00000.jpg`, `Annotations/480p/<video>/00000.png` (palette PNGs,
pixel value = object id, 0 = background, ids stable through the video) and
`ImageSets/2017/<split>.txt` listing the videos of a split.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from models.data.errors import DatasetError


def davis_palette() -> list[int]:
    """The 256-colour palette DAVIS (and PASCAL VOC) masks use: bits of the index spread over
    the high bits of R, G and B."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


_PALETTE = davis_palette()


def write_palette_png(path: Path | str | BinaryIO, ids: np.ndarray) -> None:
    """(H, W) object ids as a DAVIS palette PNG, to a file path or an open binary file."""
    if ids.ndim != 2 or ids.max(initial=0) > 255 or ids.min(initial=0) < 0:
        raise ValueError(f"{path}: a palette mask is (H, W) with ids 0..255")
    image = Image.fromarray(ids.astype(np.uint8), mode="P")
    image.putpalette(_PALETTE)
    image.save(path, format="PNG", optimize=False)


def read_palette_png(path: Path | str) -> np.ndarray:
    """(H, W) uint8 object ids. A mask saved as RGB (palette lost) is refused: ids would be lost."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L"):
                raise DatasetError(path, f"mask is mode {image.mode}, expected a palette PNG ('P')")
            return np.array(image, dtype=np.uint8)
    except FileNotFoundError:
        raise DatasetError(path, "mask file not found") from None
    except OSError as e:
        raise DatasetError(path, f"not a readable PNG ({e})") from None


@dataclass
class DavisVideo:
    name: str
    frame_paths: list[Path]
    annotation_paths: list[Path]  # DAVIS val/test-dev give only frame 0; train gives every frame

    def load_masks(self) -> np.ndarray:
        """(T, H, W) uint8 ids of every annotation file, with its size checked."""
        masks = [read_palette_png(p) for p in self.annotation_paths]
        shape = masks[0].shape
        for path, mask in zip(self.annotation_paths, masks, strict=True):
            if mask.shape != shape:
                raise DatasetError(path, f"mask size {mask.shape} != {shape} of the first mask")
        return np.stack(masks)

    def object_ids(self) -> list[int]:
        """Ids of the objects given on the first annotated frame (the ones to segment)."""
        return [int(i) for i in np.unique(read_palette_png(self.annotation_paths[0])) if i != 0]


@dataclass
class DavisDataset:
    root: Path
    videos: list[DavisVideo]

    def video(self, name: str) -> DavisVideo:
        for video in self.videos:
            if video.name == name:
                return video
        raise KeyError(name)


def load_davis(
    root: Path | str, split: str = "val", resolution: str = "480p", year: str = "2017"
) -> DavisDataset:
    root = Path(root)
    listing = root / "ImageSets" / year / f"{split}.txt"
    if not listing.is_file():
        raise DatasetError(listing, f"split file for '{split}' not found")
    names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    return DavisDataset(root, [_load_video(root, name, resolution) for name in names])


def _load_video(root: Path, name: str, resolution: str) -> DavisVideo:
    frame_dir = root / "JPEGImages" / resolution / name
    ann_dir = root / "Annotations" / resolution / name
    if not frame_dir.is_dir():
        raise DatasetError(frame_dir, f"frames of video '{name}' are missing")
    if not ann_dir.is_dir():
        raise DatasetError(ann_dir, f"annotations of video '{name}' are missing")
    frames = sorted(frame_dir.glob("*.jpg"))
    annotations = sorted(ann_dir.glob("*.png"))
    if not frames:
        raise DatasetError(frame_dir, f"video '{name}' has no frames")
    if not annotations:
        raise DatasetError(ann_dir, f"video '{name}' has no annotation")
    frame_stems = {p.stem for p in frames}
    for path in annotations:
        if path.stem not in frame_stems:
            raise DatasetError(path, f"annotation has no frame {path.stem}.jpg in {frame_dir}")
    return DavisVideo(name, frames, annotations)


def write_davis_split(root: Path | str, split: str, names: list[str], year: str = "2017") -> None:
    listing = Path(root) / "ImageSets" / year / f"{split}.txt"
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text("".join(f"{n}\n" for n in names))
