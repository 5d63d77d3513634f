"""Results as a YouTube-VIS results JSON: a list of `{video_id, category_id, score,
segmentations}`, one entry per track, as the YouTube-VIS evaluation (and models.eval.vis) reads.

- `segmentations`: one compressed RLE per frame of the response, in frame order (the frames
  sent, so a video sent with a stride matches ground truth of those frames), null where the
  track is absent;
- `score` and `category_id`: the track's summary (service.schemas.summarize_tracks: mean score,
  majority-vote category), so the file agrees with REST's `tracks`; category ids are the 1-based
  positions in the model's class list unless a {name: id} mapping is given;
- an object without a track id (a per-frame model) is an entry of its own, on its frame only;
- a panoptic model's thing segments are its instances (service.writers.common.frame_instances).
"""

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from service.schemas import SegmentResponse, summarize_tracks
from service.writers.common import category_id, category_ids, frame_instances


def ytvis_results(
    response: SegmentResponse, classes: Sequence[str] | Mapping[str, int], video_id: int = 1
) -> list[dict]:
    """The response as YouTube-VIS results entries, in order of the tracks' first frame."""
    ids = category_ids(classes)
    frames = sorted(response.frames, key=lambda f: f.frame_index)
    summaries = {t.track_id: t for t in summarize_tracks(frames)}
    entries: dict = {}  # track id (or a key of an untracked object) -> (category, score, masks)
    for t, frame in enumerate(frames):
        for k, instance in enumerate(frame_instances(frame)):
            if instance.track_id is None:
                key, category, score = ("untracked", t, k), instance.category, instance.score
            else:
                summary = summaries[instance.track_id]
                key, category, score = instance.track_id, summary.category, summary.score
            _, _, masks = entries.setdefault(key, (category, score, {}))
            masks[t] = instance.mask.model_dump(mode="json")
    return [
        {
            "video_id": video_id,
            "category_id": category_id(ids, category),
            "score": float(score),
            "segmentations": [masks.get(t) for t in range(len(frames))],
        }
        for category, score, masks in entries.values()
    ]


def write_ytvis_results(
    path: Path | str,
    response: SegmentResponse,
    classes: Sequence[str] | Mapping[str, int],
    video_id: int = 1,
) -> int:
    """Write ytvis_results as JSON; returns the number of entries."""
    results = ytvis_results(response, classes, video_id)
    Path(path).write_text(json.dumps(results, separators=(",", ":")))
    return len(results)
