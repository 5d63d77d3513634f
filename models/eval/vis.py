"""YouTube-VIS video AP: COCO-style AP/AR where one detection is a whole track.

The IoU of a predicted and a ground-truth track is the sum over frames of their intersections
over the sum over frames of their unions (frames where a track is absent add its partner's area
to the union only). A track's area, for the small/medium/large split, is the mean of its
non-empty frame areas. Crowd ground truths are ignored and may absorb any number of detections;
their IoU is the plain one (the YouTube-VIS API does not use COCO's crowd IoU). All of it as the
YouTube-VIS API (ytvoseval.py) defines it.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from models.eval.coco_ap import (
    MAX_DETECTIONS,
    YTVIS_AREA_RANGES,
    MatchGroup,
    coco_metrics,
    zero_metrics,
)
from models.eval.errors import EvalInputError
from models.eval.inputs import read_json
from models.eval.masks import checked_rles, empty_rle
from models.eval.report import EvalResult


@dataclass(frozen=True)
class Video:
    id: int
    num_frames: int
    height: int
    width: int


@dataclass
class Track:
    """A ground-truth or predicted track; `masks` hold checked RLEs (see masks.checked_rles)."""

    video_id: int
    category_id: int
    masks: list[dict | None]  # one per frame, None where the object is absent
    score: float = 1.0
    iscrowd: bool = False


def evaluate_vis(
    gt: list[Track],
    predictions: list[Track],
    videos: dict[int, Video],
    category_ids: list[int],
    area_ranges: dict[str, tuple[float, float]] = YTVIS_AREA_RANGES,
) -> EvalResult:
    """YouTube-VIS AP/AR of `predictions` against `gt`. An empty prediction set scores 0."""
    if not predictions:
        return EvalResult("vis", zero_metrics())
    gt_by_video = _by_video(gt)
    pred_by_video = _by_video(predictions)
    groups = []
    for video_id in sorted(videos):
        gts, dts = gt_by_video.get(video_id, []), pred_by_video.get(video_id, [])
        if gts or dts:
            groups += _video_groups(gts, dts, videos[video_id])
    return EvalResult("vis", coco_metrics(groups, sorted(category_ids), area_ranges))


def evaluate_vis_files(gt_file: Path | str, results_file: Path | str) -> EvalResult:
    """YouTube-VIS AP of a results JSON against a YouTube-VIS instances JSON."""
    from models.data.ytvis import load_ytvis

    return evaluate_vis_results(load_ytvis(gt_file), read_json(results_file))


def evaluate_vis_results(dataset, results: list[dict]) -> EvalResult:
    """YouTube-VIS AP of results-JSON-style entries against a models.data.ytvis dataset."""
    videos = {v.id: Video(v.id, v.length, v.height, v.width) for v in dataset.videos.values()}
    gt = gt_tracks(dataset.tracks, videos)
    predictions = parse_results(results, videos, set(dataset.categories))
    return evaluate_vis(gt, predictions, videos, list(dataset.categories))


def gt_tracks(tracks, videos: dict[int, Video]) -> list[Track]:
    """Tracks of models.data.ytvis (str-count RLEs) as checked Tracks."""
    masks = _checked_masks(
        [t.segmentations for t in tracks],
        [t.video_id for t in tracks],
        videos,
        "ground-truth track",
    )
    return [
        Track(t.video_id, t.category_id, m, 1.0, bool(t.iscrowd))
        for t, m in zip(tracks, masks, strict=True)
    ]


def parse_results(results, videos: dict[int, Video], category_ids: set[int]) -> list[Track]:
    """Results JSON entries `{video_id, category_id, score, segmentations}` as checked Tracks;
    a bad entry raises EvalInputError naming it ("result #3: ...")."""
    if not isinstance(results, list):
        raise EvalInputError(
            "results: expected a JSON list of {video_id, category_id, score, segmentations}"
        )
    heads = [_result_head(k, r, videos, category_ids) for k, r in enumerate(results)]
    masks = _checked_masks(
        [r["segmentations"] for r in results], [h[0] for h in heads], videos, "result"
    )
    return [
        Track(video_id, category_id, m, score)
        for (video_id, category_id, score), m in zip(heads, masks, strict=True)
    ]


def mean_nonempty_area(areas: np.ndarray) -> float:
    """Mean of the non-zero frame areas, 0 for a track that is empty everywhere."""
    nonempty = areas[areas > 0]
    return float(nonempty.mean()) if nonempty.size else 0.0


def _result_head(k: int, entry, videos: dict[int, Video], category_ids: set[int]):
    where = f"result #{k}"
    if not isinstance(entry, dict):
        raise EvalInputError(f"{where}: expected an object, got {type(entry).__name__}")
    for key in ("video_id", "category_id", "score", "segmentations"):
        if key not in entry:
            raise EvalInputError(f"{where}: missing '{key}'")
    video_id, category_id, score = entry["video_id"], entry["category_id"], entry["score"]
    if video_id not in videos:
        raise EvalInputError(f"{where}: video_id {video_id!r} is not in the ground truth")
    if category_id not in category_ids:
        raise EvalInputError(f"{where}: category_id {category_id!r} is not in the ground truth")
    if not isinstance(score, int | float) or not math.isfinite(score):
        raise EvalInputError(f"{where}: score {score!r} is not a finite number")
    segmentations, length = entry["segmentations"], videos[video_id].num_frames
    if not isinstance(segmentations, list) or len(segmentations) != length:
        got = len(segmentations) if isinstance(segmentations, list) else "no list of"
        raise EvalInputError(
            f"{where}: {got} segmentations for video {video_id}, which has {length} frames"
        )
    return video_id, category_id, float(score)


def _checked_masks(
    segmentations: list[list], video_ids: list[int], videos: dict[int, Video], label: str
) -> list[list[dict | None]]:
    """All masks of all tracks checked in one batch; None frames stay None."""
    places = [
        (k, t)
        for k, segs in enumerate(segmentations)
        for t, seg in enumerate(segs)
        if seg is not None
    ]
    sizes = [(videos[video_ids[k]].height, videos[video_ids[k]].width) for k, _ in places]
    checked = checked_rles(
        [segmentations[k][t] for k, t in places],
        sizes,
        lambda i: f"{label} #{places[i][0]} frame {places[i][1]}",
    )
    masks: list[list[dict | None]] = [[None] * len(segs) for segs in segmentations]
    for (k, t), rle in zip(places, checked, strict=True):
        masks[k][t] = rle
    return masks


def _by_video(tracks: list[Track]) -> dict[int, list[Track]]:
    out: dict[int, list[Track]] = {}
    for track in tracks:
        out.setdefault(track.video_id, []).append(track)
    return out


def _video_groups(gts: list[Track], dts: list[Track], video: Video) -> list[MatchGroup]:
    """One MatchGroup per category present in this video."""
    ious, dt_areas, gt_areas = track_ious(dts, gts, video)
    groups = []
    for category in sorted({t.category_id for t in gts + dts}):
        d = [i for i, t in enumerate(dts) if t.category_id == category]
        g = [j for j, t in enumerate(gts) if t.category_id == category]
        # Highest score first (stable, like COCOeval's mergesort), at most 100 per video.
        d = sorted(d, key=lambda i: -dts[i].score)[: MAX_DETECTIONS[-1]]
        groups.append(
            MatchGroup(
                category_id=category,
                ious=ious[np.ix_(d, g)],
                scores=np.array([dts[i].score for i in d], dtype=np.float64),
                dt_areas=dt_areas[d],
                gt_areas=gt_areas[g],
                gt_crowd=np.array([gts[j].iscrowd for j in g], dtype=bool),
            )
        )
    return groups


def track_ious(dts: list[Track], gts: list[Track], video: Video):
    """Track IoUs (D, G) and the mean non-empty areas of the detections (D,) and truths (G,)."""
    empty = empty_rle(video.height, video.width)
    intersection = np.zeros((len(dts), len(gts)))
    union = np.zeros((len(dts), len(gts)))
    dt_frame_areas = np.zeros((len(dts), video.num_frames))
    gt_frame_areas = np.zeros((len(gts), video.num_frames))
    for t in range(video.num_frames):
        d = [track.masks[t] or empty for track in dts]
        g = [track.masks[t] or empty for track in gts]
        area_d = mask_utils.area(d).astype(np.float64) if d else np.zeros(0)
        area_g = mask_utils.area(g).astype(np.float64) if g else np.zeros(0)
        dt_frame_areas[:, t], gt_frame_areas[:, t] = area_d, area_g
        if not (d and g):
            continue
        iou = np.asarray(mask_utils.iou(d, g, [0] * len(g)), dtype=np.float64)
        both = area_d[:, None] + area_g[None, :]
        # pycocotools gives I / U only; since U = A + B - I, I = iou * (A + B) / (1 + iou),
        # rounded back to the exact pixel count.
        inter = np.rint(iou * both / (1.0 + iou))
        intersection += inter
        union += both - inter
    ious = np.divide(intersection, union, out=np.zeros_like(union), where=union > 0)
    dt_areas = np.array([mean_nonempty_area(a) for a in dt_frame_areas])
    gt_areas = np.array([mean_nonempty_area(a) for a in gt_frame_areas])
    return ious, dt_areas, gt_areas
