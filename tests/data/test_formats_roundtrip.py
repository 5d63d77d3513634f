"""Each written format, read back by its reader, equals the generator's ground truth."""

import numpy as np
import pytest
from PIL import Image

from models.data.ava import load_action_list, load_ava_csv
from models.data.coco_panoptic import load_coco_panoptic
from models.data.davis import load_davis
from models.data.rle import mask_box_xyxy
from models.data.synthetic.export import annotation_files, generate_dataset, key_frames
from models.data.synthetic.world import ACTIONS, STUFF_CATEGORIES, THING_CATEGORIES
from models.data.video import read_video
from models.data.ytvis import load_ytvis
from tests.conftest import SMALL_SEED, SMALL_WORLD


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return float(10 * np.log10(255**2 / max(mse, 1e-9)))


def annotated(video):
    return [o for o in video.scene.objects if not o.is_distractor]


def test_ytvis_masks_tracks_and_categories(small_dataset):
    out, _, videos = small_dataset
    ds = load_ytvis(out / "ytvis" / "val.json", out / "ytvis" / "JPEGImages", check_files=True)
    assert ds.categories == THING_CATEGORIES
    assert [v.name for v in ds.videos.values()] == [v.name for v in videos]
    for video_id, video in zip(ds.videos, videos, strict=True):
        tracks = ds.tracks_of(video_id)
        expected = [o for o in annotated(video) if (video.object_map == o.object_id).any()]
        assert [t.category_id for t in tracks] == [o.category_id for o in expected]
        for track, obj in zip(tracks, expected, strict=True):
            for t in range(SMALL_WORLD.frames):
                truth = video.object_map[t] == obj.object_id
                mask = track.mask(t)
                if truth.any():
                    np.testing.assert_array_equal(mask, truth)
                else:
                    assert mask is None
        # The JPEG frames are the rendered frames, up to compression.
        jpg = np.array(Image.open(ds.frame_path(video_id, 0)))
        assert psnr(jpg, video.frames[0]) > 22  # tiny frames, sharp colour edges, 4:2:0 chroma


def test_davis_masks_follow_frame0_objects(small_dataset):
    out, _, videos = small_dataset
    ds = load_davis(out / "davis", split="val")
    assert [v.name for v in ds.videos] == [v.name for v in videos]
    for dv, video in zip(ds.videos, videos, strict=True):
        masks = dv.load_masks()
        assert masks.shape == video.object_map.shape
        first = sorted(
            {int(i) for i in np.unique(video.object_map[0])}
            & {o.object_id for o in annotated(video)}
        )
        assert dv.object_ids() == list(range(1, len(first) + 1))
        for davis_id, object_id in enumerate(first, start=1):
            np.testing.assert_array_equal(masks == davis_id, video.object_map == object_id)
        assert len(dv.frame_paths) == SMALL_WORLD.frames


def test_panoptic_segments_things_stuff_and_void(small_dataset):
    out, _, videos = small_dataset
    ds = load_coco_panoptic(out / "panoptic" / "panoptic_val.json")
    things = {c.id for c in ds.categories.values() if c.isthing}
    stuff = {c.id for c in ds.categories.values() if not c.isthing}
    assert things == set(THING_CATEGORIES) and stuff == set(STUFF_CATEGORIES)
    assert len(ds.images) == len(videos) * SMALL_WORLD.frames
    for k, image in enumerate(ds.images):
        video, t = videos[k // SMALL_WORLD.frames], k % SMALL_WORLD.frames
        ids = image.load_ids()
        category = {s.id: s.category_id for s in image.segments}
        for obj in video.scene.objects:
            visible = video.object_map[t] == obj.object_id
            if obj.is_distractor:
                assert (ids[visible] == 0).all(), "distractor pixels are void"
            elif visible.any():
                np.testing.assert_array_equal(ids == obj.object_id, visible)
                assert category[obj.object_id] == obj.category_id
        background = video.object_map[t] == 0
        np.testing.assert_array_equal(ids[background], video.stuff_category_map(t)[background])
        for seg in image.segments:
            assert seg.area == int((ids == seg.id).sum())


def test_ava_rows_at_key_frames(small_dataset):
    out, _, videos = small_dataset
    rows = load_ava_csv(out / "ava" / "annotations" / "ava_val_v2.2.csv")
    assert load_action_list(out / "ava" / "annotations" / "ava_action_list_v2.2.pbtxt") == ACTIONS
    expected = []
    for video in videos:
        for t in key_frames(SMALL_WORLD):
            for obj in annotated(video):
                box = mask_box_xyxy(video.object_map[t] == obj.object_id)
                if box is not None:
                    expected.append(
                        (video.name, t // SMALL_WORLD.fps, obj.object_id, int(obj.action[t]), box)
                    )
    assert len(rows) == len(expected) > 0
    h, w = SMALL_WORLD.height, SMALL_WORLD.width
    for row, (name, ts, person, action, box) in zip(rows, expected, strict=True):
        assert (row.video_id, row.timestamp, row.person_id, row.action_id) == (
            name,
            ts,
            person,
            action,
        )
        np.testing.assert_allclose(
            row.box, (box[0] / w, box[1] / h, box[2] / w, box[3] / h), atol=1e-3
        )


def test_mp4_decodes_to_the_frames(small_dataset):
    out, _, videos = small_dataset
    frames, fps = read_video(out / "videos" / f"{videos[0].name}.mp4")
    assert frames.shape == videos[0].frames.shape
    assert fps == SMALL_WORLD.fps
    assert psnr(frames, videos[0].frames) > 22, "H.264 frames against the rendered frames"


def test_same_seed_same_bytes_other_seed_other_bytes(small_dataset, tmp_path):
    out, meta, _ = small_dataset
    again = generate_dataset(tmp_path / "again", SMALL_WORLD, 3, SMALL_SEED, split="val")
    other = generate_dataset(tmp_path / "other", SMALL_WORLD, 3, SMALL_SEED + 1, split="val")
    for a, b in zip(
        annotation_files(out, "val"), annotation_files(tmp_path / "again", "val"), strict=True
    ):
        assert a.read_bytes() == b.read_bytes(), a.name
    for sub in [
        "davis/Annotations/480p/vid0001/00005.png",
        "panoptic/panoptic_val/vid0002/00003.png",
    ]:
        assert (out / sub).read_bytes() == (tmp_path / "again" / sub).read_bytes()
    assert again["fingerprint"] == meta["fingerprint"] != other["fingerprint"]


@pytest.mark.parametrize("bad", [0, -1])
def test_generate_rejects_bad_video_count(tmp_path, bad):
    with pytest.raises(ValueError, match="videos must be >= 1"):
        generate_dataset(tmp_path / "x", SMALL_WORLD, bad, 0)


def test_generate_refuses_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        generate_dataset(tmp_path, SMALL_WORLD, 1, 0)
    assert (tmp_path / "keep.txt").read_text() == "mine"
