"""The wide synthetic world (photos, negatives, a real camera's flaws) keeps the world's promises:
same seed, same bytes; exact masks; empty annotations that every reader takes; held-out photos."""

import dataclasses
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from models.data.ava import load_action_list, load_ava_csv
from models.data.coco_panoptic import load_coco_panoptic
from models.data.davis import load_davis
from models.data.synthetic.export import annotation_files, generate_dataset, photos_of
from models.data.synthetic.photos import PHOTOS, load_photo, pool
from models.data.synthetic.render import render_scene
from models.data.synthetic.world import WorldConfig, simulate_scene, wide_world
from models.data.video import read_video
from models.data.ytvis import load_ytvis

TINY_WIDE = wide_world(width=64, height=48, frames=4, fps=2, max_objects=2, negatives=0.5)
# The classic world's small dataset (tests/conftest.py), as the generator wrote it before the wide
# world existed: annotation fingerprint and meta.json's sha256.
CLASSIC_FINGERPRINT = "009925e65376c7c7c9cc45f80384f29feed3eb45abca77e55e9f34872cdf8623"
CLASSIC_META_SHA256 = "98be59d08a12a63733814e7b932dcf592165387c27ef1cc8d4ee437d19adb4d6"
EFFECTS_OFF = {"lighting": False, "motion_blur": False, "compression": False}


def frame_files(out):
    return sorted(p for p in (out / "ytvis" / "JPEGImages").rglob("*.jpg"))


def test_classic_world_is_byte_for_byte_what_it_was(small_dataset):
    out, meta, _ = small_dataset
    assert WorldConfig().world == "classic" and "world" not in meta
    assert meta["fingerprint"] == CLASSIC_FINGERPRINT
    assert hashlib.sha256((out / "meta.json").read_bytes()).hexdigest() == CLASSIC_META_SHA256


def test_wide_world_same_seed_same_dataset(tmp_path):
    a = generate_dataset(tmp_path / "a", TINY_WIDE, 2, 11, split="val")
    b = generate_dataset(tmp_path / "b", TINY_WIDE, 2, 11, split="val")
    c = generate_dataset(tmp_path / "c", TINY_WIDE, 2, 12, split="val")
    assert a["world"] == "wide" and a["config"]["photo_backgrounds"] is True
    assert a["fingerprint"] == b["fingerprint"] != c["fingerprint"]
    for x, y in zip(
        annotation_files(tmp_path / "a", "val"),
        annotation_files(tmp_path / "b", "val"),
        strict=True,
    ):
        assert x.read_bytes() == y.read_bytes(), x.name
    frames_a, frames_b = frame_files(tmp_path / "a"), frame_files(tmp_path / "b")
    assert len(frames_a) == 2 * TINY_WIDE.frames
    assert [p.read_bytes() for p in frames_a] == [p.read_bytes() for p in frames_b]
    assert set(a["photos"]) <= set(pool("train"))


def test_wide_world_moves_no_object_of_the_classic_world():
    """Negatives aside, a wide scene is the classic scene of its seed seen through a camera."""
    classic = WorldConfig(width=64, height=48, frames=4, max_objects=3)
    wide = wide_world(width=64, height=48, frames=4, max_objects=3, negatives=0.0)
    for index in range(3):
        a, b = simulate_scene(classic, 4, index, "v"), simulate_scene(wide, 4, index, "v")
        assert [o.category_id for o in a.objects] == [o.category_id for o in b.objects]
        for oa, ob in zip(a.objects, b.objects, strict=True):
            assert np.array_equal(oa.x, ob.x) and np.array_equal(oa.radius, ob.radius)


def test_negative_video_exports_empty_and_every_reader_loads_it(tmp_path):
    config = dataclasses.replace(TINY_WIDE, negatives=1.0)
    meta = generate_dataset(tmp_path, config, 1, 5, split="val")
    assert meta["negative_videos"] == ["vid0000"] == meta["videos"]
    ytvis = load_ytvis(tmp_path / "ytvis" / "val.json", tmp_path / "ytvis" / "JPEGImages", True)
    assert len(ytvis.videos) == 1 and ytvis.tracks == []
    assert json.loads((tmp_path / "ytvis" / "val.json").read_text())["annotations"] == []
    (davis_video,) = load_davis(tmp_path / "davis", split="val").videos
    assert davis_video.object_ids() == [] and not davis_video.load_masks().any()
    panoptic = load_coco_panoptic(tmp_path / "panoptic" / "panoptic_val.json")
    assert len(panoptic.images) == config.frames
    for image in panoptic.images:  # the photo and any distractor: void
        assert image.segments == [] and not image.load_ids().any()
    assert load_ava_csv(tmp_path / "ava" / "annotations" / "ava_val_v2.2.csv") == []
    assert load_action_list(tmp_path / "ava" / "annotations" / "ava_action_list_v2.2.pbtxt")
    frames, _ = read_video(tmp_path / "videos" / "vid0000.mp4")
    assert frames.shape == (config.frames, config.height, config.width, 3)


def test_held_out_pool_shares_no_photo_with_training():
    train, held_out = set(pool("train")), set(pool("held_out"))
    assert train and held_out and not train & held_out
    assert train | held_out == set(PHOTOS)
    for licence, _ in PHOTOS.values():
        assert "CC0" in licence or "public domain" in licence
    for name in PHOTOS:
        assert load_photo(name).ndim == 3
    for photo_pool, photos in (("train", train), ("held_out", held_out)):
        config = dataclasses.replace(TINY_WIDE, photo_pool=photo_pool, **EFFECTS_OFF)
        for index in range(4):
            video = render_scene(simulate_scene(config, 3, index, "v"))
            assert photos_of(video) and photos_of(video) <= photos


def test_masks_are_the_drawn_pixels_under_camera_pan():
    """Recolour one object at a time: the pixels that change are exactly its mask, on every
    frame of a panning camera (the photo and the objects move together)."""
    config = wide_world(
        width=96,
        height=64,
        frames=8,
        max_objects=3,
        negatives=0.0,
        camera_shake=True,
        **EFFECTS_OFF,
    )
    scene = next(
        s
        for s in (simulate_scene(config, 8, i, "v") for i in range(20))
        if np.abs(s.background.pan[-1]).max() > 2
    )
    video = render_scene(scene)
    still = dataclasses.replace(
        scene, background=dataclasses.replace(scene.background, pan=0 * scene.background.pan)
    )
    assert not np.array_equal(render_scene(still).object_map, video.object_map), "no pan seen"
    for obj in scene.objects:
        renders = []
        for colour in ((255, 0, 0), (0, 0, 255)):
            obj_before = obj.appearance
            obj.appearance = dataclasses.replace(
                obj_before, texture="two_tone", color_a=colour, color_b=colour
            )
            renders.append(render_scene(scene))
            obj.appearance = obj_before
        assert all(np.array_equal(r.object_map, video.object_map) for r in renders)
        changed = (renders[0].frames != renders[1].frames).any(axis=-1)
        np.testing.assert_array_equal(changed, video.object_map == obj.object_id)


def test_camera_flaws_change_pixels_not_the_truth():
    plain = wide_world(width=64, height=48, frames=6, negatives=0.0, **EFFECTS_OFF)
    flawed = dataclasses.replace(plain, lighting=True, motion_blur=True, compression=True)
    a = render_scene(simulate_scene(plain, 2, 1, "v"))
    b = render_scene(simulate_scene(flawed, 2, 1, "v"))
    assert np.array_equal(a.object_map, b.object_map) and not np.array_equal(a.frames, b.frames)
    assert b.scene.look.jpeg_quality is not None and not np.allclose(b.scene.look.gain, 1)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"photo_pool": "test"}, "photo_pool"), ({"negatives": 1.5}, "negatives")],
)
def test_bad_wide_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        wide_world(**kwargs)


def test_synth_cli_wide_world_recorded_in_meta(tmp_path):
    out = tmp_path / "wide"
    args = ["synth", "--out", str(out), "--videos", "2", "--frames", "3", "--size", "64x48"]
    args += ["--world", "wide", "--negatives", "1", "--photo-pool", "held_out"]
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", *args], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["world"] == "wide" and meta["config"]["photo_pool"] == "held_out"
    assert meta["negative_videos"] == ["vid0000", "vid0001"]
    assert set(meta["photos"]) <= set(pool("held_out"))
