"""The synthetic video world: what exists in a video and how it moves, frame by frame.

A video is a textured background split into "stuff" regions, with objects in front of it. Annotated
objects have a category, told apart by shape alone (colour and texture are drawn from the same pool
for every category); distractors are irregular blobs of no category. Every object performs a
sequence of actions (still, walk, jump, spin), and its motion follows from the action, so an action
label can be read off the motion. Objects occlude each other by a fixed depth order, enter and leave
the frame, turn and slowly change size.

The wide world (issue 20) adds what a real camera sees: photographs as backgrounds (panned slowly)
and as textures, videos with no object of the categories (negatives), lighting that changes, motion
blur and JPEG artefacts. Its options are all off by default, and all its random draws come from a
stream of their own, so the classic world gives the same datasets as before the options existed.

This module only simulates poses; `render.py` draws them.
"""

from dataclasses import dataclass, field

import numpy as np

from models.data.synthetic.photos import POOLS, load_photo, pool

# Category ids follow the datasets' conventions: things from 1, stuff in its own range (COCO
# panoptic puts stuff after things), actions from 1 (AVA's index 0 is unused).
THING_CATEGORIES: dict[int, str] = {
    1: "disc",
    2: "square",
    3: "triangle",
    4: "star",
    5: "cross",
    6: "ring",
}
STUFF_CATEGORIES: dict[int, str] = {
    101: "sky",
    102: "grass",
    103: "water",
    104: "sand",
    105: "brick",
}
ACTIONS: dict[int, str] = {1: "still", 2: "walk", 3: "jump", 4: "spin"}
ACTION_ID = {name: action_id for action_id, name in ACTIONS.items()}


@dataclass(frozen=True)
class WorldConfig:
    """Everything that shapes a generated video. Same config and seed -> same video."""

    width: int = 320
    height: int = 240
    frames: int = 24
    fps: int = 8
    max_objects: int = 4  # annotated objects per video: between ceil(max/2) and max
    difficulty: float = 0.5  # 0..1: speed, size, distractors, shake and noise strength
    camera_shake: bool = False
    noise: bool = False
    # The wide world; all off: the classic world.
    photo_backgrounds: bool = False  # a photo crop, panned slowly, instead of the stuff bands
    photo_textures: bool = False  # about half the objects and distractors wear a photo crop
    photo_pool: str = "train"  # "train" or "held_out": the two pools share no photo
    negatives: float = 0.0  # the fraction of videos with no object of the categories
    lighting: bool = False  # brightness and colour drift, gently or at once, over a video
    motion_blur: bool = False  # a directional blur of the whole frame (a swung camera)
    compression: bool = False  # every frame re-encoded as a low-quality JPEG

    def __post_init__(self):
        if self.width < 32 or self.height < 32:
            raise ValueError(f"frame size {self.width}x{self.height} is below 32x32")
        if self.width % 2 or self.height % 2:
            raise ValueError(f"frame size {self.width}x{self.height} must be even (H.264)")
        if self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        if self.fps < 1:
            raise ValueError(f"fps must be >= 1, got {self.fps}")
        if not 1 <= self.max_objects <= 40:
            raise ValueError(f"max_objects must be in 1..40, got {self.max_objects}")
        if not 0.0 <= self.difficulty <= 1.0:
            raise ValueError(f"difficulty must be in [0, 1], got {self.difficulty}")
        if self.photo_pool not in POOLS:
            raise ValueError(f"photo_pool must be one of {POOLS}, got {self.photo_pool!r}")
        if not 0.0 <= self.negatives <= 1.0:
            raise ValueError(f"negatives must be in [0, 1], got {self.negatives}")

    @property
    def world(self) -> str:
        """The world's name: wide when any option of the wide world is on, else classic (the
        photo pool alone changes nothing: no photo is shown)."""
        options = (getattr(self, f) for f in WIDE_FIELDS if f != "photo_pool")
        return "wide" if any(options) else "classic"

    @property
    def shake_amplitude(self) -> int:
        return int(round(2 + 4 * self.difficulty)) if self.camera_shake else 0

    @property
    def noise_sigma(self) -> float:
        return 3.0 + 7.0 * self.difficulty if self.noise else 0.0


WIDE_FIELDS = (
    "photo_backgrounds",
    "photo_textures",
    "photo_pool",
    "negatives",
    "lighting",
    "motion_blur",
    "compression",
)
# `vidserve synth --world wide`: every option of the wide world on, a few negatives.
WIDE_WORLD = {
    "photo_backgrounds": True,
    "photo_textures": True,
    "negatives": 0.15,
    "lighting": True,
    "motion_blur": True,
    "compression": True,
}


def wide_world(**settings) -> WorldConfig:
    """A config of the wide world; `settings` override its options and the classic ones."""
    return WorldConfig(**{**WIDE_WORLD, **settings})


@dataclass
class Appearance:
    """How an object looks; drawn independently of its category."""

    texture: str  # one of TEXTURES
    color_a: tuple[int, int, int]
    color_b: tuple[int, int, int]
    frequency: float  # pattern repeats across the object's radius
    # texture "photo": the crop of `photo` centred at `photo_centre` (photo pixels), `photo_scale`
    # photo pixels to the object's radius
    photo: str | None = None
    photo_centre: tuple[float, float] = (0.0, 0.0)
    photo_scale: float = 1.0


TEXTURES = ("stripes", "checker", "dots", "gradient", "two_tone")


@dataclass
class SceneObject:
    """One object and its pose on every frame (world pixels; angle in radians)."""

    object_id: int
    category_id: int | None  # None: a distractor, annotated nowhere
    appearance: Appearance
    outline: np.ndarray | None  # distractors: a random unit polygon; categories: None
    depth: int  # larger is nearer the camera
    x: np.ndarray = field(repr=False)  # (T,) centre
    y: np.ndarray = field(repr=False)
    radius: np.ndarray = field(repr=False)
    angle: np.ndarray = field(repr=False)
    action: np.ndarray = field(repr=False)  # (T,) action id

    @property
    def is_distractor(self) -> bool:
        return self.category_id is None


@dataclass
class StuffLayout:
    """Horizontal bands with wavy borders; band k spans from boundary k-1 down to boundary k."""

    categories: list[int]  # top to bottom
    boundaries: list[tuple[float, float, float, float]]  # (base_y, amplitude, wavelength, phase)
    tints: list[tuple[float, float, float]]  # per band colour variation


@dataclass
class PhotoBackground:
    """A photo, scaled, seen through the frame; the camera pans across it. Objects move with the
    photo (they are drawn at their world position less the pan), so the world is one scene."""

    photo: str
    scale: float  # frame pixels per photo pixel
    origin: tuple[float, float]  # where frame 0's top-left corner lies on the scaled photo
    pan: np.ndarray = field(repr=False)  # (T, 2) camera offset from frame 0, in frame pixels


@dataclass
class Look:
    """What the camera does to the pixels; the ground truth is the drawing, before all of it."""

    gain: np.ndarray = field(repr=False)  # (T,) brightness factor per frame
    cast: np.ndarray = field(repr=False)  # (T, 3) colour factor per frame and channel
    blur_length: float  # pixels; under 1.5: no blur
    blur_angle: float  # radians
    jpeg_quality: int | None  # None: frames are not re-encoded


@dataclass
class Scene:
    config: WorldConfig
    name: str
    seed: int
    index: int
    stuff: StuffLayout | None  # None under a photo background (no stuff category: void)
    objects: list[SceneObject]
    shake: np.ndarray  # (T, 2) camera offset (dx, dy) in pixels
    background: PhotoBackground | None = None
    look: Look | None = None
    negative: bool = False  # drawn with no object of the categories


def simulate_scene(config: WorldConfig, seed: int, index: int, name: str) -> Scene:
    """Simulate video `index` of the dataset with `seed`; each video has its own random stream."""
    rng = np.random.default_rng([seed, index])
    # The wide world's own stream: the classic world's draws stay where they were.
    wide_rng = np.random.default_rng([seed, index, 3])
    negative = bool(wide_rng.uniform() < config.negatives)
    # Drawn even under a photo, so that the objects are the classic world's.
    stuff = _make_stuff_layout(config, rng)
    n_things = int(rng.integers((config.max_objects + 1) // 2, config.max_objects + 1))
    if negative:
        n_things = 0
    n_distractors = int(rng.integers(0, 2 + round(2 * config.difficulty)))
    depths = rng.permutation(n_things + n_distractors)
    objects = []
    for k in range(n_things + n_distractors):
        category = int(rng.choice(list(THING_CATEGORIES))) if k < n_things else None
        # The first object always starts in view, so that frame 0 has something to prompt.
        objects.append(
            _simulate_object(config, rng, category, int(depths[k]), must_start_in=k == 0)
        )
    _number_objects(objects, config)
    scene = Scene(config, name, seed, index, stuff, objects, _simulate_shake(config, rng))
    if config.world == "wide":
        _widen(scene, wide_rng, negative)
    return scene


def _make_stuff_layout(config: WorldConfig, rng: np.random.Generator) -> StuffLayout:
    n_bands = int(rng.integers(3, 5))
    cats: list[int] = []
    for _ in range(n_bands):
        choices = [c for c in STUFF_CATEGORIES if not cats or c != cats[-1]]
        cats.append(int(rng.choice(choices)))
    h = config.height
    bases = np.sort(rng.uniform(0.15, 0.85, size=n_bands - 1)) * h
    # Keep bands at least a few pixels apart, so every band shows up on the frame.
    bases = np.maximum.accumulate(bases + np.arange(n_bands - 1) * 0.08 * h) - 0.04 * h * (
        n_bands - 2
    )
    bounds = [
        (
            float(b),
            float(rng.uniform(2, 0.05 * h)),
            float(rng.uniform(0.4, 1.5) * config.width),
            float(rng.uniform(0, 2 * np.pi)),
        )
        for b in bases
    ]
    tints = [tuple(float(v) for v in rng.uniform(-0.15, 0.15, size=3)) for _ in range(n_bands)]
    return StuffLayout(cats, bounds, tints)


def _random_appearance(rng: np.random.Generator) -> Appearance:
    def color() -> tuple[int, int, int]:
        import colorsys

        r, g, b = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.45, 1), rng.uniform(0.5, 1))
        return (int(r * 255), int(g * 255), int(b * 255))

    return Appearance(str(rng.choice(TEXTURES)), color(), color(), float(rng.uniform(1.5, 3.5)))


def _random_blob(rng: np.random.Generator) -> np.ndarray:
    """An irregular polygon of unit size: the distractors' shape, unlike any category's."""
    n = int(rng.integers(7, 12))
    angles = np.sort(rng.uniform(0, 2 * np.pi, size=n))
    radii = rng.uniform(0.5, 1.0, size=n)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _simulate_object(
    config: WorldConfig,
    rng: np.random.Generator,
    category: int | None,
    depth: int,
    must_start_in: bool,
) -> SceneObject:
    w, h, n = config.width, config.height, config.frames
    short = min(w, h)
    radius0 = rng.uniform(0.07, 0.16 - 0.04 * config.difficulty) * short
    speed = (0.6 + 0.8 * config.difficulty) * short / 100.0
    starts_outside = not must_start_in and rng.uniform() < 0.25
    if starts_outside:
        side = rng.choice([-1, 1])
        x = w / 2 + side * (w / 2 + radius0 * 1.2)
        y = rng.uniform(0.25, 0.75) * h
    else:
        x = rng.uniform(radius0, w - radius0)
        y = rng.uniform(radius0, h - radius0)

    xs, ys, rs, angs, acts = (np.zeros(n) for _ in range(5))
    angle = rng.uniform(0, 2 * np.pi)
    radius = radius0
    t = 0
    action = ACTION_ID["walk"] if starts_outside else int(rng.choice(list(ACTIONS)))
    while t < n:
        duration = int(rng.integers(8, 20))
        if action == ACTION_ID["walk"]:
            if starts_outside and t == 0:
                heading = np.arctan2(h / 2 - y, w / 2 - x) + rng.uniform(-0.3, 0.3)
            else:
                heading = rng.uniform(0, 2 * np.pi)
            velocity = speed * rng.uniform(1.5, 3.0) * np.array([np.cos(heading), np.sin(heading)])
            turn_rate = rng.uniform(-0.05, 0.05)
        spin_rate = rng.choice([-1, 1]) * rng.uniform(0.25, 0.45)
        jump_height, jump_period = rng.uniform(0.8, 1.6) * radius, int(rng.integers(6, 10))
        if action == ACTION_ID["jump"]:  # whole hops only: the next action starts on the ground
            duration = jump_period * max(1, round(duration / jump_period))
        for k in range(min(duration, n - t)):
            y_offset = 0.0
            if action == ACTION_ID["walk"]:
                x, y = x + velocity[0], y + velocity[1]
                angle += turn_rate
            elif action == ACTION_ID["spin"]:
                angle += spin_rate
            elif action == ACTION_ID["jump"]:
                y_offset = -jump_height * abs(np.sin(np.pi * k / jump_period))
            radius = float(
                np.clip(radius * np.exp(rng.normal(0, 0.01)), 0.6 * radius0, 1.5 * radius0)
            )
            xs[t + k], ys[t + k], rs[t + k], angs[t + k], acts[t + k] = (
                x,
                y + y_offset,
                radius,
                angle,
                action,
            )
        t += duration
        action = int(rng.choice([a for a in ACTIONS if a != action]))

    outline = _random_blob(rng) if category is None else None
    return SceneObject(
        object_id=0,
        category_id=category,
        appearance=_random_appearance(rng),
        outline=outline,
        depth=depth,
        x=xs,
        y=ys,
        radius=rs,
        angle=angs,
        action=acts.astype(np.int64),
    )


def _in_view(obj: SceneObject, config: WorldConfig, t: int) -> bool:
    r = obj.radius[t]
    return -r < obj.x[t] < config.width + r and -r < obj.y[t] < config.height + r


def _number_objects(objects: list[SceneObject], config: WorldConfig) -> None:
    """Ids 1..N for the annotated objects, those in view on frame 0 first (DAVIS prompts them),
    then by entry; distractors come after, so ids of annotated objects stay small and dense."""

    def first_seen(obj: SceneObject) -> int:
        seen = [t for t in range(config.frames) if _in_view(obj, config, t)]
        return seen[0] if seen else config.frames

    annotated = sorted((o for o in objects if not o.is_distractor), key=first_seen)
    distractors = [o for o in objects if o.is_distractor]
    for new_id, obj in enumerate(annotated + distractors, start=1):
        obj.object_id = new_id
    objects.sort(key=lambda o: o.object_id)


def _simulate_shake(config: WorldConfig, rng: np.random.Generator) -> np.ndarray:
    amp = config.shake_amplitude
    if amp == 0:
        return np.zeros((config.frames, 2), dtype=np.int64)
    steps = rng.integers(-1, 2, size=(config.frames, 2))
    return np.clip(np.cumsum(steps, axis=0), -amp, amp).astype(np.int64)


def _widen(scene: Scene, rng: np.random.Generator, negative: bool) -> None:
    """Give a scene the wide world's photos and camera. Every draw is made whether its option is
    on or not, so turning one option off leaves the others' draws as they were."""
    cfg = scene.config
    background = _photo_background(cfg, rng)
    look = _random_look(cfg, rng)
    for obj in scene.objects:
        textured = _photo_appearance(cfg, rng, obj, avoid=background.photo)
        wears_it = rng.uniform() < 0.5
        if cfg.photo_textures and wears_it:
            obj.appearance = textured
    if cfg.photo_backgrounds:
        scene.background, scene.stuff = background, None
    scene.look = look
    scene.negative = negative


def _photo_background(config: WorldConfig, rng: np.random.Generator) -> PhotoBackground:
    """A photo scaled to hold the frame wherever a slow straight pan (and any shake) takes it."""
    photos = pool(config.photo_pool)
    photo = photos[int(rng.integers(len(photos)))]
    n, w, h = config.frames, config.width, config.height
    # A slow pan: 0.1-0.6% of the frame's short side a frame (0.2-1.4 px at 240 px).
    speed = rng.uniform(0.1, 0.6) * min(w, h) / 100
    heading = rng.uniform(0, 2 * np.pi)
    pan = np.arange(n)[:, None] * speed * np.array([np.cos(heading), np.sin(heading)])
    low = pan.min(axis=0) - config.shake_amplitude - 1  # the view's extent around frame 0's
    high = pan.max(axis=0) + config.shake_amplitude + 1 + np.array([w, h])
    photo_h, photo_w = load_photo(photo).shape[:2]
    scale = max((high - low)[0] / photo_w, (high - low)[1] / photo_h) * rng.uniform(1.0, 1.5)
    room = np.array([photo_w, photo_h]) * scale - (high - low)  # >= 0 on both axes
    origin = -low + rng.uniform(0, 1, size=2) * np.floor(room)
    return PhotoBackground(photo, float(scale), (float(origin[0]), float(origin[1])), pan)


def _random_look(config: WorldConfig, rng: np.random.Generator) -> Look:
    n = config.frames
    # Lighting: from one level to another around a random frame, over a random time: from a
    # slow drift (clouds, auto exposure) to a sudden change (a light switched on).
    start, end = rng.uniform(0.6, 1.3, size=2)
    cast_start, cast_end = rng.uniform(0.85, 1.15, size=(2, 3))
    middle, width = rng.uniform(0, n), rng.uniform(0.3, max(n / 2, 0.5))
    ramp = 1 / (1 + np.exp(-(np.arange(n) - middle) / width))
    gain = start + (end - start) * ramp
    cast = cast_start + (cast_end - cast_start) * ramp[:, None]
    blur_length = rng.uniform(0, 2 + 6 * config.difficulty)
    blur_angle = rng.uniform(0, np.pi)
    quality = int(rng.integers(15, 61))
    if not config.lighting:
        gain, cast = np.ones(n), np.ones((n, 3))
    return Look(
        gain=gain,
        cast=cast,
        blur_length=float(blur_length) if config.motion_blur else 0.0,
        blur_angle=float(blur_angle),
        jpeg_quality=quality if config.compression else None,
    )


def _photo_appearance(
    config: WorldConfig, rng: np.random.Generator, obj: SceneObject, avoid: str
) -> Appearance:
    """The object's appearance with a photo crop as its texture: a photo other than the
    background's (else an object could vanish into its own backdrop), 1-3 times the object's
    size, so the photo is shrunk little and keeps its detail."""
    photos = pool(config.photo_pool)
    k = int(rng.integers(len(photos)))
    photo = photos[(k + 1) % len(photos)] if photos[k] == avoid else photos[k]
    photo_h, photo_w = load_photo(photo).shape[:2]
    scale = float(np.mean(obj.radius) * rng.uniform(1.0, 3.0))
    scale = min(scale, min(photo_w, photo_h) / 2)
    centre = (
        float(rng.uniform(scale, photo_w - scale)),
        float(rng.uniform(scale, photo_h - scale)),
    )
    app = obj.appearance
    return Appearance("photo", app.color_a, app.color_b, app.frequency, photo, centre, scale)
