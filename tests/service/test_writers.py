"""The file writers (service.writers): a response built from known masks, written, read back by
the project's own readers, and scored by its own evaluators against ground truth made from the
same masks: a perfect score (AP, PQ, J&F, frame-mAP all 1.0) is the round trip."""

import io
import json
import zipfile

import numpy as np
import pytest

from models.data.ava import AvaBox, load_ava_csv, write_ava_csv
from models.data.coco_panoptic import (
    PanopticCategory,
    PanopticImage,
    load_coco_panoptic,
    segments_from_ids,
    write_coco_panoptic,
    write_panoptic_png,
)
from models.data.davis import read_palette_png, write_davis_split, write_palette_png
from models.data.rle import decode_rle, encode_mask, mask_box_xyxy
from models.data.track_votes import TrackVotes
from models.data.ytvis import YtvisTrack, YtvisVideo, write_ytvis
from models.eval.action import evaluate_action_files
from models.eval.davis import evaluate_davis_files
from models.eval.inputs import read_json
from models.eval.instance import check_results, evaluate_instance_files
from models.eval.panoptic import evaluate_panoptic_files
from models.eval.vis import Video, evaluate_vis_files, parse_results
from models.vis.tracker import summary_of
from models.vis.video_inference import ytvis_results as model_ytvis_results
from service.schemas import (
    ActionLabel,
    ActionsResult,
    DetectedObject,
    FrameResult,
    Mask,
    Segment,
    SegmentResponse,
    TrackActions,
    build_response,
    summarize_tracks,
)
from service.writers import (
    ava_rows,
    coco_results,
    davis_zip,
    write_ava_results,
    write_coco_panoptic_results,
    write_coco_results,
    write_davis,
    write_ytvis_results,
    ytvis_results,
)

H, W, T, FPS = 48, 64, 6, 2.0
CLASSES = ("cat", "dog", "bird")
PANOPTIC_CLASSES = ("cat", "dog", "bird", "sky", "grass")
ACTIONS = ("stand", "walk", "run")
VIDEO = "vid0000"


# --- the world: three objects that never overlap ---------------------------------------------
def track_mask(track_id: int, t: int) -> np.ndarray | None:
    mask = np.zeros((H, W), dtype=bool)
    if track_id == 1:  # a cat moving right, on every frame
        mask[5:20, 5 + 2 * t : 20 + 2 * t] = True
    elif track_id == 2 and t <= 3:  # a dog that leaves after frame 3
        mask[25:40, 30:50] = True
    elif track_id == 3 and t >= 2:  # a bird that comes at frame 2
        mask[2:10, 40 + t : 56 + t] = True
    else:
        return None
    return mask


CATEGORY = {1: "cat", 2: "dog", 3: "bird"}


def frame_category(track_id: int, t: int) -> str:
    return "dog" if (track_id, t) == (1, 1) else CATEGORY[track_id]  # one wrong vote


def score(track_id: int, t: int) -> float:
    return 0.5 + 0.05 * track_id + 0.01 * t


def objects(t: int, tracks=(1, 2, 3)) -> list[DetectedObject]:
    out = []
    for track_id in tracks:
        mask = track_mask(track_id, t)
        if mask is not None:
            out.append(
                DetectedObject(
                    track_id=track_id,
                    category=frame_category(track_id, t),
                    score=score(track_id, t),
                    box=mask_box_xyxy(mask),
                    mask=Mask(**encode_mask(mask)),
                )
            )
    return out


def frame(t: int, objs=(), segments=()) -> FrameResult:
    return FrameResult(
        frame_index=t,
        time=t / FPS,
        objects=list(objs),
        segments=list(segments),
        model="m",
        model_version="1",
    )


def response_of(events) -> SegmentResponse:
    return build_response(events, width=W, height=H, fps=FPS)


def vis_response(tracks=(1, 2, 3)):
    # In the order a session yields them: frames out of order on purpose.
    return response_of([frame(t, objects(t, tracks)) for t in (1, 0, 2, 3, 5, 4)])


# --- YouTube-VIS -----------------------------------------------------------------------------
def ytvis_ground_truth(path):
    video = YtvisVideo(1, VIDEO, W, H, [f"{VIDEO}/{t:05d}.jpg" for t in range(T)])
    tracks = []
    for track_id in (1, 2, 3):
        segs = [track_mask(track_id, t) for t in range(T)]
        segs = [None if m is None else encode_mask(m) for m in segs]
        cid = CLASSES.index(CATEGORY[track_id]) + 1
        tracks.append(YtvisTrack(track_id, 1, cid, 0, segs))
    write_ytvis(path, [video], tracks, dict(enumerate(CLASSES, start=1)))


def test_ytvis_results_read_back_and_score_perfectly(tmp_path):
    response = vis_response()
    results_file, gt_file = tmp_path / "results.json", tmp_path / "gt.json"
    assert write_ytvis_results(results_file, response, CLASSES) == 3
    ytvis_ground_truth(gt_file)

    videos = {1: Video(1, T, H, W)}
    tracks = parse_results(read_json(results_file), videos, {1, 2, 3})  # the evaluator's reader
    summaries = {s.track_id: s for s in response.tracks}
    for track_id, track in zip((1, 2, 3), tracks, strict=True):  # by first frame
        assert track.category_id == CLASSES.index(CATEGORY[track_id]) + 1
        assert track.score == pytest.approx(summaries[track_id].score)
        for t in range(T):
            expected = track_mask(track_id, t)
            if expected is None:
                assert track.masks[t] is None
            else:
                np.testing.assert_array_equal(decode_rle(track.masks[t]), expected)
    metrics = evaluate_vis_files(gt_file, results_file).metrics
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AR100"] == pytest.approx(1.0)


def test_ytvis_untracked_objects_are_entries_of_their_own_frame():
    events = [
        frame(t, [o.model_copy(update={"track_id": None}) for o in objects(t)]) for t in (0, 1)
    ]
    results = ytvis_results(response_of(events), {"cat": 7, "dog": 8, "bird": 9}, video_id=5)
    assert len(results) == 4  # cat and dog on frames 0 and 1
    assert [r["category_id"] for r in results] == [7, 8, 8, 8]  # frame 1's cat votes dog
    assert all(r["video_id"] == 5 for r in results)
    assert [[s is not None for s in r["segmentations"]] for r in results] == [
        [True, False],
        [True, False],
        [False, True],
        [False, True],
    ]
    with pytest.raises(ValueError, match="'bird' is not in the class list"):
        ytvis_results(vis_response(), ("cat", "dog"))


def test_one_track_summary_rule_everywhere():
    """A tie (2 votes each) goes to the larger summed score, then to the category seen first,
    in the REST summary, the YouTube-VIS writer, the trainer's YouTube-VIS results and the
    tracker's summary alike."""
    cases = {
        "summed score": [("cat", 0.5), ("dog", 0.75), ("cat", 0.5), ("dog", 0.5)],
        "seen first": [("dog", 0.5), ("cat", 0.5), ("cat", 0.5), ("dog", 0.5)],
    }
    for votes in cases.values():
        frames = [
            frame(t, [objects(t, (1,))[0].model_copy(update={"category": c, "score": s})])
            for t, (c, s) in enumerate(votes)
        ]
        (summary,) = summarize_tracks(frames)
        assert summary.category == "dog"
        (written,) = ytvis_results(response_of(frames), CLASSES)
        per_frame = [[o.model_dump(mode="json") for o in f.objects] for f in frames]
        (trained,) = model_ytvis_results(per_frame, 1, {"cat": 1, "dog": 2, "bird": 3})
        tally = TrackVotes()
        for t, (c, s) in enumerate(votes):
            tally.add(t, CLASSES.index(c) + 1, s)  # the tracker votes on integer labels
        assert written["category_id"] == trained["category_id"] == 2
        assert summary_of(1, tally).category == 2
        assert written["score"] == pytest.approx(summary.score)
        assert trained["score"] == pytest.approx(summary.score)
        assert summary_of(1, tally).score == pytest.approx(summary.score)


# --- COCO instances ----------------------------------------------------------------------------
def coco_ground_truth() -> dict:
    images, annotations = [], []
    for t in range(T):
        images.append({"id": 100 + t, "height": H, "width": W, "file_name": f"{t:05d}.jpg"})
        for track_id in (1, 2, 3):
            mask = track_mask(track_id, t)
            if mask is None:
                continue
            x1, y1, x2, y2 = mask_box_xyxy(mask)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": 100 + t,
                    "category_id": CLASSES.index(CATEGORY[track_id]) + 1,
                    "segmentation": encode_mask(mask),
                    "area": int(mask.sum()),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": k + 1, "name": n} for k, n in enumerate(CLASSES)]
    return {"images": images, "annotations": annotations, "categories": categories}


def test_coco_results_read_back_and_score_perfectly(tmp_path):
    # Frame 1's cat is labelled dog: a per-frame format keeps per-frame categories.
    response = vis_response()
    image_ids = {t: 100 + t for t in range(T)}
    results_file, gt_file = tmp_path / "results.json", tmp_path / "gt.json"
    assert write_coco_results(results_file, response, CLASSES, image_ids) == 14
    gt = coco_ground_truth()
    images = {im["id"]: im for im in gt["images"]}
    checked = check_results(read_json(results_file), images, {1, 2, 3})  # the evaluator's reader
    first = checked[0]
    assert (first["image_id"], first["category_id"]) == (100, 1)
    np.testing.assert_array_equal(decode_rle(first["segmentation"]), track_mask(1, 0))
    assert read_json(results_file)[0]["bbox"] == [5.0, 5.0, 15.0, 15.0]
    assert read_json(results_file)[0]["score"] == pytest.approx(score(1, 0))

    # Against ground truth that agrees with the per-frame labels, AP is perfect.
    for ann in gt["annotations"]:
        if ann["image_id"] == 101 and ann["category_id"] == 1 and ann["bbox"][0] == 7.0:
            ann["category_id"] = 2  # frame 1's cat, as the model saw it
    gt_file.write_text(json.dumps(gt))
    metrics = evaluate_instance_files(gt_file, results_file).metrics
    assert metrics["AP"] == pytest.approx(1.0)
    # Frames the mapping does not name are left out.
    assert {r["image_id"] for r in coco_results(response, CLASSES, {0: 1, 2: 3})} == {1, 3}


# --- DAVIS ---------------------------------------------------------------------------------------
def id_map(t: int, tracks=(1, 2)) -> np.ndarray:
    ids = np.zeros((H, W), dtype=np.uint8)
    for track_id in tracks:
        mask = track_mask(track_id, t)
        if mask is not None:
            ids[mask] = track_id
    return ids


def test_davis_pngs_read_back_and_score_perfectly(tmp_path):
    # A VOS answer: the objects of the first frame, followed.
    response = vis_response(tracks=(1, 2))
    root = tmp_path / "davis"
    frames = root / "JPEGImages" / "480p" / VIDEO
    annotations = root / "Annotations" / "480p" / VIDEO
    frames.mkdir(parents=True)
    annotations.mkdir(parents=True)
    for t in range(T):
        (frames / f"{t:05d}.jpg").write_bytes(b"")  # the reader checks that frames exist
        write_palette_png(annotations / f"{t:05d}.png", id_map(t))
    write_davis_split(root, "val", [VIDEO])

    predictions = tmp_path / "pred"
    assert write_davis(response, predictions / VIDEO) == T
    for t in range(T):
        np.testing.assert_array_equal(
            read_palette_png(predictions / VIDEO / f"{t:05d}.png"), id_map(t)
        )
    assert evaluate_davis_files(root, predictions).metrics["J&F-Mean"] == pytest.approx(1.0)

    # The zip REST answers holds the same PNGs.
    with zipfile.ZipFile(io.BytesIO(davis_zip(response.frames, H, W))) as archive:
        assert archive.namelist() == [f"{t:05d}.png" for t in range(T)]
        for t in range(T):
            assert (
                archive.read(f"{t:05d}.png") == (predictions / VIDEO / f"{t:05d}.png").read_bytes()
            )


# --- COCO panoptic ---------------------------------------------------------------------------
SKY, GRASS = 10, 11  # segment ids of the stuff


def panoptic_ids(t: int) -> np.ndarray:
    ids = np.zeros((H, W), dtype=np.int64)
    ids[:24], ids[24:] = SKY, GRASS
    for track_id in (1, 2, 3):
        mask = track_mask(track_id, t)
        if mask is not None:
            ids[mask] = track_id
    ids[47, 63] = 0  # a void pixel
    return ids


def panoptic_frame(t: int) -> FrameResult:
    ids = panoptic_ids(t)
    segments = []
    for seg_id in (1, 2, 3, SKY, GRASS):
        mask = ids == seg_id
        if not mask.any():
            continue
        thing = seg_id < SKY
        segments.append(
            Segment(
                id=seg_id,
                category=CATEGORY[seg_id] if thing else ("sky" if seg_id == SKY else "grass"),
                isthing=thing,
                score=0.9,
                area=int(mask.sum()),
                mask=Mask(**encode_mask(mask)),
                track_id=seg_id if thing else None,
            )
        )
    return frame(t, segments=segments)


def test_coco_panoptic_read_back_and_score_perfectly(tmp_path):
    response = response_of([panoptic_frame(t) for t in range(T)])
    category_id = {name: k + 1 for k, name in enumerate(PANOPTIC_CLASSES)}
    categories = {
        cid: PanopticCategory(cid, name, name in CLASSES) for name, cid in category_id.items()
    }
    gt_root = tmp_path / "panoptic_gt"
    (gt_root / VIDEO).mkdir(parents=True)
    images = []
    for t in range(T):
        ids = panoptic_ids(t)
        png = gt_root / VIDEO / f"{t:05d}.png"
        write_panoptic_png(png, ids)
        category_of = {1: 1, 2: 2, 3: 3, SKY: category_id["sky"], GRASS: category_id["grass"]}
        images.append(
            PanopticImage(
                1 + t, f"{VIDEO}/{t:05d}.jpg", H, W, png, segments_from_ids(ids, category_of)
            )
        )
    write_coco_panoptic(tmp_path / "panoptic_gt.json", images, categories, gt_root)

    pred_json = tmp_path / "panoptic_pred.json"
    image_ids = {t: 1 + t for t in range(T)}
    assert (
        write_coco_panoptic_results(
            pred_json, response, PANOPTIC_CLASSES, video=VIDEO, image_ids=image_ids
        )
        == T
    )
    dataset = load_coco_panoptic(pred_json)  # the dataset reader reads it as it reads ground truth
    assert {c.id: (c.name, c.isthing) for c in dataset.categories.values()} == {
        c.id: (c.name, c.isthing) for c in categories.values()
    }
    for t, image in enumerate(dataset.images):
        assert image.id == 1 + t
        np.testing.assert_array_equal(image.load_ids(), panoptic_ids(t))
        assert {s.id: s.category_id for s in image.segments} == {
            s.id: category_id[s.category] for s in response.frames[t].segments
        }
        assert {s.id: s.area for s in image.segments} == {
            s.id: s.area for s in response.frames[t].segments
        }
    metrics = evaluate_panoptic_files(tmp_path / "panoptic_gt.json", pred_json).metrics
    assert metrics["PQ"] == pytest.approx(1.0)
    assert metrics["PQ_th"] == pytest.approx(1.0) and metrics["PQ_st"] == pytest.approx(1.0)
    # Tracked segments count in the track summary (video panoptic).
    assert [(s.track_id, s.num_frames) for s in response.tracks] == [(1, 6), (2, 4), (3, 4)]


# --- AVA -----------------------------------------------------------------------------------------
LABELS = {  # key frame -> track -> [(action, score)]
    2: {1: [("walk", 0.9)], 2: [("stand", 0.8), ("run", 0.3)], 9: [("run", 0.5)]},
    4: {1: [("run", 0.7)], 3: [("stand", 0.6)]},
}


def actions_result(key_frame: int) -> ActionsResult:
    return ActionsResult(
        key_frame=key_frame,
        time=key_frame / FPS,
        tracks=[
            TrackActions(
                track_id=track_id, actions=[ActionLabel(label=a, score=s) for a, s in labels]
            )
            for track_id, labels in LABELS[key_frame].items()
        ],
        model="m",
        model_version="1",
    )


def test_ava_results_read_back_and_score_perfectly(tmp_path):
    events = [frame(t, objects(t)) for t in range(T)]
    events[3:3] = [actions_result(2)]  # a key frame's actions come after its frame
    events.append(actions_result(4))
    response = response_of(events)

    gt_rows = []
    for key_frame, tracks in LABELS.items():
        for track_id, labels in tracks.items():
            mask = track_mask(track_id, key_frame)
            if mask is None:
                continue  # track 9 is not on its key frame: no box, no row
            x1, y1, x2, y2 = mask_box_xyxy(mask)
            box = (x1 / W, y1 / H, x2 / W, y2 / H)
            for action, _ in labels:
                gt_rows.append(
                    AvaBox(
                        VIDEO, key_frame / FPS, box, ACTIONS.index(action) + 1, person_id=track_id
                    )
                )
    write_ava_csv(tmp_path / "gt.csv", gt_rows)

    pred = tmp_path / "pred.csv"
    assert write_ava_results(pred, response, ACTIONS, VIDEO) == len(gt_rows) == 5
    rows = load_ava_csv(pred, predictions=True)

    def key(r):
        return (r.timestamp, r.action_id, *(round(v, 3) for v in r.box))  # the CSV's precision

    assert sorted(map(key, rows)) == sorted(map(key, gt_rows))
    assert sorted(r.score for r in rows) == pytest.approx([0.3, 0.6, 0.7, 0.8, 0.9])
    assert {r.video_id for r in rows} == {VIDEO}
    assert {r.person_id for r in ava_rows(response, ACTIONS, VIDEO)} == {1, 2, 3}
    metrics = evaluate_action_files(tmp_path / "gt.csv", pred).metrics
    assert metrics["mAP@0.5"] == pytest.approx(1.0)
