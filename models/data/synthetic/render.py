"""Draw a simulated scene: RGB frames plus the exact ground truth behind every pixel."""

from dataclasses import dataclass

import cv2
import numpy as np

from models.data.synthetic.camera import apply_light_and_blur, jpeg_roundtrip
from models.data.synthetic.photos import load_photo
from models.data.synthetic.world import (
    THING_CATEGORIES,
    Appearance,
    PhotoBackground,
    Scene,
    SceneObject,
    StuffLayout,
)

# Unit outlines of the categories, by shape. A ring is a disc with a hole (drawn as two polygons).
_CIRCLE = np.stack(
    [
        np.cos(np.linspace(0, 2 * np.pi, 40, endpoint=False)),
        np.sin(np.linspace(0, 2 * np.pi, 40, endpoint=False)),
    ],
    axis=1,
)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    angles = np.arange(2 * points) * np.pi / points - np.pi / 2
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


_ARM = 0.33
SHAPES: dict[str, list[np.ndarray]] = {
    "disc": [_CIRCLE],
    "square": [np.array([[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]])],
    "triangle": [np.array([[0.0, -1.0], [0.9, 0.75], [-0.9, 0.75]])],
    "star": [_star()],
    "cross": [
        np.array(
            [
                [-_ARM, -1],
                [_ARM, -1],
                [_ARM, -_ARM],
                [1, -_ARM],
                [1, _ARM],
                [_ARM, _ARM],
                [_ARM, 1],
                [-_ARM, 1],
                [-_ARM, _ARM],
                [-1, _ARM],
                [-1, -_ARM],
                [-_ARM, -_ARM],
            ]
        )
    ],
    "ring": [_CIRCLE, _CIRCLE * 0.5],  # second polygon is the hole
}


@dataclass
class RenderedVideo:
    """A video and the ground truth of each of its pixels."""

    scene: Scene
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    object_map: np.ndarray  # (T, H, W) uint8: id of the object seen at the pixel, 0 for none
    stuff_map: np.ndarray  # (T, H, W) uint8 index into scene.stuff.categories (the band)

    @property
    def name(self) -> str:
        return self.scene.name

    def visible_mask(self, object_id: int, t: int) -> np.ndarray:
        return self.object_map[t] == object_id

    def stuff_category_map(self, t: int) -> np.ndarray:
        """(H, W) stuff category id per pixel of frame t (what lies behind any object); 0 (void)
        under a photo background, which is none of the stuff categories."""
        if self.scene.stuff is None:
            return np.zeros(self.stuff_map[t].shape, dtype=np.int32)
        return np.asarray(self.scene.stuff.categories, dtype=np.int32)[self.stuff_map[t]]


def render_scene(scene: Scene) -> RenderedVideo:
    cfg = scene.config
    # Streams of their own (not the scene's), so texture and noise never shift the geometry.
    texture_rng = np.random.default_rng([scene.seed, scene.index, 1])
    noise_rng = np.random.default_rng([scene.seed, scene.index, 2])
    backdrop = _backdrop(scene, texture_rng)
    n, h, w = cfg.frames, cfg.height, cfg.width
    frames = np.empty((n, h, w, 3), dtype=np.uint8)
    object_map = np.zeros((n, h, w), dtype=np.uint8)
    stuff_map = np.empty((n, h, w), dtype=np.uint8)
    by_depth = sorted(scene.objects, key=lambda o: o.depth)
    look = scene.look
    for t in range(n):
        frame, stuff_map[t], offset = backdrop(t)
        for obj in by_depth:  # far to near: nearer objects paint over farther ones
            _draw_object(frame, object_map[t], obj, t, offset=offset)
        if look is not None:
            frame = apply_light_and_blur(frame, look, t)
        if cfg.noise_sigma > 0:
            noisy = frame.astype(np.float32) + noise_rng.normal(0, cfg.noise_sigma, frame.shape)
            frame = np.clip(noisy, 0, 255).astype(np.uint8)
        if look is not None and look.jpeg_quality is not None:
            frame = jpeg_roundtrip(frame, look.jpeg_quality)
        frames[t] = frame
    return RenderedVideo(scene, frames, object_map, stuff_map)


def _backdrop(scene: Scene, rng: np.random.Generator):
    """A function of the frame index t -> (the background pixels, their stuff band, the camera
    offset (dx, dy) by which objects are drawn shifted): the stuff bands under shake, or the
    photo under shake and pan."""
    cfg = scene.config
    h, w = cfg.height, cfg.width
    if scene.background is not None:
        photo = _scaled_photo(scene.background)
        ox, oy = scene.background.origin

        def photo_view(t: int):
            dx = float(scene.shake[t][0] + scene.background.pan[t][0])
            dy = float(scene.shake[t][1] + scene.background.pan[t][1])
            # Sub-pixel pan: the photo moves smoothly, as the objects (drawn at a float offset).
            move = np.float32([[1, 0, -(ox + dx)], [0, 1, -(oy + dy)]])
            frame = cv2.warpAffine(photo, move, (w, h), flags=cv2.INTER_LINEAR)
            return frame, 0, (dx, dy)

        return photo_view
    margin = cfg.shake_amplitude
    background, band_index = _draw_stuff(scene.stuff, w + 2 * margin, h + 2 * margin, rng)

    def stuff_view(t: int):
        dx, dy = (int(v) for v in scene.shake[t])
        view = np.s_[margin + dy : margin + dy + h, margin + dx : margin + dx + w]
        return background[view].copy(), band_index[view], (dx, dy)

    return stuff_view


def _scaled_photo(background: PhotoBackground) -> np.ndarray:
    photo = load_photo(background.photo)
    size = (round(photo.shape[1] * background.scale), round(photo.shape[0] * background.scale))
    # INTER_AREA averages when shrinking: no aliasing of the photo's fine detail.
    return cv2.resize(photo, size, interpolation=cv2.INTER_AREA)


def object_polygons(obj: SceneObject, t: int, offset: tuple[int, int] = (0, 0)) -> list[np.ndarray]:
    """The object's outline(s) on frame t in frame pixels; for a ring the second is its hole."""
    units = [obj.outline] if obj.is_distractor else SHAPES[THING_CATEGORIES[obj.category_id]]
    cos, sin = np.cos(obj.angle[t]), np.sin(obj.angle[t])
    rotation = np.array([[cos, -sin], [sin, cos]])
    centre = np.array([obj.x[t] - offset[0], obj.y[t] - offset[1]])
    return [unit @ rotation.T * obj.radius[t] + centre for unit in units]


def _draw_object(
    frame: np.ndarray, object_map: np.ndarray, obj: SceneObject, t: int, offset: tuple[int, int]
) -> None:
    h, w = object_map.shape
    polygons = object_polygons(obj, t, offset)
    x1, y1 = np.floor(polygons[0].min(axis=0)).astype(int)
    x2, y2 = np.ceil(polygons[0].max(axis=0)).astype(int) + 1
    x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
    if x1 >= x2 or y1 >= y2:
        return  # out of view
    local = np.zeros((y2 - y1, x2 - x1), dtype=np.uint8)
    shift = np.array([x1, y1])
    # Sub-pixel precision (shift=4) keeps slow motion smooth instead of jumping a pixel at a time.
    for k, poly in enumerate(polygons):
        pts = np.round((poly - shift) * 16).astype(np.int32)
        cv2.fillPoly(local, [pts], 0 if k > 0 else 1, lineType=cv2.LINE_8, shift=4)
    inside = local.astype(bool)
    if not inside.any():
        return
    colours = _texture(obj.appearance, obj, t, offset, (x1, y1, x2, y2))
    frame[y1:y2, x1:x2][inside] = colours[inside]
    object_map[y1:y2, x1:x2][inside] = obj.object_id


def _texture(
    app: Appearance,
    obj: SceneObject,
    t: int,
    offset: tuple[int, int],
    box: tuple[int, int, int, int],
) -> np.ndarray:
    """Colours of the object's texture over the box, in the object's own coordinates so that the
    pattern turns with it (a spinning disc is visibly spinning)."""
    x1, y1, x2, y2 = box
    ys, xs = np.mgrid[y1:y2, x1:x2].astype(np.float32)
    dx, dy = xs + 0.5 - (obj.x[t] - offset[0]), ys + 0.5 - (obj.y[t] - offset[1])
    cos, sin = np.cos(obj.angle[t]), np.sin(obj.angle[t])
    u = (cos * dx + sin * dy) / obj.radius[t]
    v = (-sin * dx + cos * dy) / obj.radius[t]
    if app.texture == "photo":
        return _photo_texture(app, u, v)
    f = app.frequency
    if app.texture == "stripes":
        mix = (np.sin(np.pi * f * u) > 0).astype(np.float32)
    elif app.texture == "checker":
        mix = ((np.floor(f * u) + np.floor(f * v)) % 2).astype(np.float32)
    elif app.texture == "dots":
        fu, fv = (f * u) % 1 - 0.5, (f * v) % 1 - 0.5
        mix = (fu**2 + fv**2 < 0.09).astype(np.float32)
    elif app.texture == "gradient":
        mix = np.clip((u + 1) / 2, 0, 1)
    else:  # two_tone
        mix = (u > 0).astype(np.float32)
    a, b = np.array(app.color_a, np.float32), np.array(app.color_b, np.float32)
    return (a * (1 - mix[..., None]) + b * mix[..., None]).astype(np.uint8)


def _photo_texture(app: Appearance, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The photo crop at the object's coordinates (u, v): it turns and scales with the object."""
    map_x = (app.photo_centre[0] + u * app.photo_scale).astype(np.float32)
    map_y = (app.photo_centre[1] + v * app.photo_scale).astype(np.float32)
    photo = load_photo(app.photo)
    return cv2.remap(photo, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _band_of_pixels(stuff: StuffLayout, width: int, height: int) -> np.ndarray:
    xs = np.arange(width, dtype=np.float32)
    ys = np.arange(height, dtype=np.float32)[:, None]
    band = np.zeros((height, width), dtype=np.uint8)
    for base, amp, wavelength, phase in stuff.boundaries:
        border = base + amp * np.sin(2 * np.pi * xs / wavelength + phase)
        band += (ys >= border[None, :]).astype(np.uint8)
    return band


def _draw_stuff(
    stuff: StuffLayout, width: int, height: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    band = _band_of_pixels(stuff, width, height)
    image = np.zeros((height, width, 3), dtype=np.float32)
    for k, category in enumerate(stuff.categories):
        texture = _STUFF_PAINTERS[category](width, height, rng) * (1 + np.array(stuff.tints[k]))
        image[band == k] = texture[band == k]
    return np.clip(image, 0, 255).astype(np.uint8), band


def _sky(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    ramp = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    top, bottom = np.array([90, 140, 230], np.float32), np.array([190, 215, 245], np.float32)
    return np.broadcast_to(top * (1 - ramp) + bottom * ramp, (h, w, 3)).copy()


def _grass(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    blades = rng.normal(0, 1, (1, w)).astype(np.float32) * 25 + rng.normal(0, 12, (h, w))
    base = np.array([60, 150, 55], np.float32)
    return base + blades[..., None] * np.array([0.4, 1.0, 0.3], np.float32)


def _water(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    ripple = np.sin(ys * 0.9 + 2 * np.sin(xs * 0.05)) * 18
    return np.array([40, 110, 170], np.float32) + ripple[..., None] * np.array([0.3, 0.6, 1.0])


def _sand(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    speckle = rng.normal(0, 14, (h, w)).astype(np.float32)
    return np.array([215, 190, 130], np.float32) + speckle[..., None]


def _brick(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w]
    row = ys // 10
    mortar = (ys % 10 == 0) | (((xs + (row % 2) * 10) % 20) == 0)
    image = np.empty((h, w, 3), np.float32)
    image[:] = (165, 70, 50)
    image[mortar] = (200, 200, 190)
    return image + rng.normal(0, 6, (h, w, 1)).astype(np.float32)


_STUFF_PAINTERS = {101: _sky, 102: _grass, 103: _water, 104: _sand, 105: _brick}
