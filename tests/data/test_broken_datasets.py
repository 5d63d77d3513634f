"""A broken or inconsistent dataset fails with a DatasetError naming the file and the problem."""

import json
import shutil

import numpy as np
import pytest

from models.data.ava import load_action_list, load_ava_csv
from models.data.coco_panoptic import load_coco_panoptic, write_panoptic_png
from models.data.davis import load_davis, read_palette_png
from models.data.errors import DatasetError
from models.data.rle import encode_mask
from models.data.ytvis import load_ytvis


@pytest.fixture
def copy_of(small_dataset, tmp_path):
    """A private copy of the small dataset, free to break."""
    out, _, _ = small_dataset
    target = tmp_path / "copy"
    shutil.copytree(out, target)
    return target


def edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_ytvis_missing_frame_file(copy_of):
    victim = copy_of / "ytvis" / "JPEGImages" / "vid0001" / "00004.jpg"
    victim.unlink()
    with pytest.raises(DatasetError, match="00004.jpg: frame file of video 2 is missing"):
        load_ytvis(
            copy_of / "ytvis" / "val.json", copy_of / "ytvis" / "JPEGImages", check_files=True
        )


def test_ytvis_annotation_for_unknown_video(copy_of):
    ann = copy_of / "ytvis" / "val.json"
    edit_json(ann, lambda d: d["annotations"][1].update(video_id=99))
    with pytest.raises(DatasetError, match=r"val.json: annotation #1 .*video_id 99 is not a known"):
        load_ytvis(ann)


def test_ytvis_rle_of_wrong_size(copy_of):
    ann = copy_of / "ytvis" / "val.json"

    def shrink(d):
        track = d["annotations"][0]
        t = next(k for k, s in enumerate(track["segmentations"]) if s is not None)
        track["segmentations"][t] = encode_mask(np.ones((10, 12), np.uint8))

    edit_json(ann, shrink)
    with pytest.raises(DatasetError, match=r"RLE size \[10, 12\] != video size \[64, 96\]"):
        load_ytvis(ann)


def test_ytvis_malformed_rle_unknown_category_and_bad_json(copy_of):
    ann = copy_of / "ytvis" / "val.json"
    original = ann.read_text()

    def garble(d):
        track = d["annotations"][0]
        t = next(k for k, s in enumerate(track["segmentations"]) if s is not None)
        track["segmentations"][t]["counts"] = 12345
        d["annotations"][1]["segmentations"][t] = {"size": [64, 96], "counts": "bad~counts"}

    edit_json(ann, garble)
    with pytest.raises(DatasetError, match="annotation #0 .* malformed RLE .*type int"):
        load_ytvis(ann)
    edit_json(ann, lambda d: d["annotations"].pop(0))
    with pytest.raises(DatasetError, match="annotation #0 .* malformed RLE .*not COCO counts"):
        load_ytvis(ann)
    ann.write_text(original)
    edit_json(ann, lambda d: d["annotations"][0].update(category_id=77))
    with pytest.raises(DatasetError, match="category_id 77 is not a known category"):
        load_ytvis(ann)
    ann.write_text(original[: len(original) // 2])
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_ytvis(ann)
    with pytest.raises(DatasetError, match="file not found"):
        load_ytvis(copy_of / "nope.json")


def test_ytvis_segmentation_count_differs_from_length(copy_of):
    ann = copy_of / "ytvis" / "val.json"
    edit_json(ann, lambda d: d["annotations"][0]["segmentations"].pop())
    with pytest.raises(DatasetError, match="11 segmentations for a video of 12 frames"):
        load_ytvis(ann)


def test_davis_missing_annotations_split_and_orphan_mask(copy_of):
    root = copy_of / "davis"
    shutil.copy(
        root / "Annotations/480p/vid0000/00000.png", root / "Annotations/480p/vid0000/00099.png"
    )
    with pytest.raises(DatasetError, match="00099.png: annotation has no frame 00099.jpg"):
        load_davis(root, "val")
    (root / "Annotations/480p/vid0000/00099.png").unlink()
    shutil.rmtree(root / "Annotations/480p/vid0002")
    with pytest.raises(DatasetError, match="annotations of video 'vid0002' are missing"):
        load_davis(root, "val")
    with pytest.raises(DatasetError, match="split file for 'test' not found"):
        load_davis(root, "test")


def test_davis_mask_saved_as_rgb_is_refused(copy_of):
    from PIL import Image

    path = copy_of / "davis/Annotations/480p/vid0000/00003.png"
    Image.open(path).convert("RGB").save(path)
    with pytest.raises(DatasetError, match="expected a palette PNG"):
        read_palette_png(path)


def test_davis_masks_of_differing_size(copy_of):
    from models.data.davis import write_palette_png

    write_palette_png(copy_of / "davis/Annotations/480p/vid0001/00002.png", np.zeros((10, 10), int))
    video = load_davis(copy_of / "davis", "val").video("vid0001")
    with pytest.raises(DatasetError, match=r"00002.png: mask size \(10, 10\)"):
        video.load_masks()


def test_panoptic_unknown_image_category_and_segment(copy_of):
    ann = copy_of / "panoptic" / "panoptic_val.json"
    original = ann.read_text()
    edit_json(ann, lambda d: d["annotations"][2].update(image_id=12345))
    with pytest.raises(DatasetError, match="annotation #2: image_id 12345 is not a known image"):
        load_coco_panoptic(ann)
    ann.write_text(original)
    edit_json(ann, lambda d: d["annotations"][0]["segments_info"][0].update(category_id=999))
    with pytest.raises(DatasetError, match="category_id 999 is not a known category"):
        load_coco_panoptic(ann)
    ann.write_text(original)
    image = load_coco_panoptic(ann).images[0]
    write_panoptic_png(image.png_path, np.full((image.height, image.width), 77))
    with pytest.raises(DatasetError, match=r"segment ids \[77\] are not in segments_info"):
        image.load_ids()
    image.png_path.unlink()
    with pytest.raises(DatasetError, match="panoptic PNG of image 1 is missing"):
        image.load_ids()


def test_ava_bad_rows_and_action_list(tmp_path):
    csv = tmp_path / "ava.csv"
    csv.write_text("vid0000,1,0.1,0.1,0.5,0.5,2,1\nvid0000,1,0.1,0.1,0.5\n")
    with pytest.raises(DatasetError, match="line 2: 5 columns, expected 7 or 8"):
        load_ava_csv(csv)
    csv.write_text("vid0000,1,0.6,0.1,0.5,0.5,2,1\n")
    with pytest.raises(DatasetError, match="line 1: box .* is not normalised"):
        load_ava_csv(csv)
    csv.write_text("vid0000,one,0.1,0.1,0.5,0.5,2,1\n")
    with pytest.raises(DatasetError, match="line 1: could not convert"):
        load_ava_csv(csv)
    pbtxt = tmp_path / "actions.pbtxt"
    pbtxt.write_text("nothing here")
    with pytest.raises(DatasetError, match="no `label"):
        load_action_list(pbtxt)
