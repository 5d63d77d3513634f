"""The synthetic world has the properties the models' tasks rely on."""

import colorsys

import numpy as np
import pytest

from models.data.synthetic.render import render_scene
from models.data.synthetic.world import (
    ACTION_ID,
    THING_CATEGORIES,
    WorldConfig,
    simulate_scene,
)

CONFIG = WorldConfig(width=128, height=96, frames=40, fps=8, max_objects=5, difficulty=0.6)


@pytest.fixture(scope="module")
def scenes():
    return [simulate_scene(CONFIG, 3, i, f"v{i}") for i in range(40)]


def test_categories_stuff_and_actions_all_occur(scenes):
    things = {o.category_id for s in scenes for o in s.objects if not o.is_distractor}
    assert things == set(THING_CATEGORIES)
    assert any(o.is_distractor for s in scenes for o in s.objects)
    assert all(len(s.stuff.categories) >= 3 for s in scenes)
    actions = {int(a) for s in scenes for o in s.objects for a in o.action}
    assert actions == set(ACTION_ID.values())


def test_colour_does_not_tell_the_category(scenes):
    """Within every category the hues spread over most of the colour wheel."""
    hues = {c: [] for c in THING_CATEGORIES}
    for scene in scenes:
        for obj in scene.objects:
            if not obj.is_distractor:
                r, g, b = (v / 255 for v in obj.appearance.color_a)
                hues[obj.category_id].append(colorsys.rgb_to_hsv(r, g, b)[0])
    for category, values in hues.items():
        histogram = np.histogram(values, bins=4, range=(0, 1))[0]
        assert (histogram > 0).sum() >= 3, f"category {category} hues cluster: {histogram}"


def test_motion_follows_the_action(scenes):
    for scene in scenes:
        for obj in scene.objects:
            for t in range(1, CONFIG.frames):
                a = obj.action[t]
                if a != obj.action[t - 1]:
                    continue  # the first frame of an action still carries the last one's pose
                moved = np.hypot(obj.x[t] - obj.x[t - 1], obj.y[t] - obj.y[t - 1])
                turned = abs(obj.angle[t] - obj.angle[t - 1])
                if a == ACTION_ID["still"]:
                    assert moved < 1e-9 and turned < 1e-9
                elif a == ACTION_ID["spin"]:
                    assert moved < 1e-9 and turned > 0.2
                elif a == ACTION_ID["walk"]:
                    assert moved > 0.5 and turned < 0.1
                elif a == ACTION_ID["jump"]:
                    assert obj.x[t] == obj.x[t - 1] and turned == 0


def test_objects_enter_leave_and_occlude(scenes):
    entered = left = occluded = 0
    for scene in scenes[:20]:
        video = render_scene(scene)
        for obj in scene.objects:
            seen = (video.object_map == obj.object_id).reshape(CONFIG.frames, -1).any(axis=1)
            entered += int(not seen[0] and seen.any())
            left += int(seen[0] and not seen[-1])
        # Occlusion: a pixel covered by two objects' shapes shows only one of them.
        areas = [
            (video.object_map[t] == o.object_id).sum()
            for o in scene.objects
            for t in range(CONFIG.frames)
        ]
        occluded += int(min(areas) < max(areas) * 0.5)
    assert entered > 0 and left > 0 and occluded > 0


def test_deterministic_and_independent_per_video():
    a = render_scene(simulate_scene(CONFIG, 5, 2, "x"))
    b = render_scene(simulate_scene(CONFIG, 5, 2, "x"))
    c = render_scene(simulate_scene(CONFIG, 5, 3, "x"))
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.object_map, b.object_map)
    assert not np.array_equal(a.frames, c.frames)


def test_shake_and_noise_change_frames_not_geometry():
    plain = WorldConfig(width=96, height=64, frames=8)
    shaky = WorldConfig(width=96, height=64, frames=8, camera_shake=True, noise=True)
    a, b = simulate_scene(plain, 1, 0, "v"), simulate_scene(shaky, 1, 0, "v")
    assert np.array_equal(a.objects[0].x, b.objects[0].x)
    assert np.abs(b.shake).max() > 0
    ra, rb = render_scene(a), render_scene(b)
    assert not np.array_equal(ra.frames, rb.frames)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"width": 97}, "must be even"),
        ({"height": 16}, "below 32x32"),
        ({"frames": 0}, "frames"),
        ({"difficulty": 1.5}, "difficulty"),
        ({"max_objects": 0}, "max_objects"),
        ({"fps": 0}, "fps"),
    ],
)
def test_bad_config_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WorldConfig(**kwargs)
