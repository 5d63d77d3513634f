"""The photographs of the wide world: those the scikit-image wheel ships whose licence allows any
use (CC0 or public domain, as scikit-image's `skimage/data` docstrings state), split into a pool
for training and a pool held out from it, so that a held-out video shows photos training never saw.

Images of the wheel left out: coins, immunohistochemistry and the motorcycle stereo pair (no
licence stated, only "no known copyright restrictions" or nothing), moon, page, text, logo and the
synthetic ones (not photographs, or no licence stated), cell and microaneurysms (too small).
"""

import importlib.util
from functools import cache
from pathlib import Path

import cv2
import numpy as np

# file in skimage/data -> (licence as scikit-image states it, pool)
PHOTOS: dict[str, tuple[str, str]] = {
    "astronaut.png": ("public domain (NASA)", "train"),
    "camera.png": ("CC0 (Lav Varshney)", "train"),
    "chelsea.png": ("CC0 (Stefan van der Walt)", "train"),
    "hubble_deep_field.jpg": ("public domain (NASA)", "train"),
    "retina.jpg": ("CC0 1.0", "train"),
    "brick.png": ("CC0 (CC0Textures)", "train"),
    "grass.png": ("CC0", "train"),
    "coffee.png": ("CC0 (Rachel Michetti)", "held_out"),
    "rocket.jpg": ("public domain (SpaceX)", "held_out"),
    "clock_motion.png": ("public domain (Stefan van der Walt)", "held_out"),
    "gravel.png": ("CC0 (CC0Textures)", "held_out"),
}
POOLS = ("train", "held_out")


def pool(name: str) -> list[str]:
    """The photos of pool `name`, in a fixed order (random choices index into it)."""
    if name not in POOLS:
        raise ValueError(f"photo_pool must be one of {POOLS}, got {name!r}")
    return [photo for photo, (_, where) in PHOTOS.items() if where == name]


def photo_folder() -> Path:
    # Found without importing skimage: only its data files are needed.
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the wide synthetic world needs scikit-image installed (its photos)")
    return Path(spec.submodule_search_locations[0]) / "data"


@cache
def load_photo(name: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB; grey photos get three equal channels. Read-only: it is shared."""
    path = photo_folder() / name
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"photo {path} is missing or unreadable")
    image = np.ascontiguousarray(image[..., ::-1])
    image.setflags(write=False)
    return image
