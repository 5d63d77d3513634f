"""Action labels as an AVA v2.2 results CSV: per labelled person at a key frame and per action,
`video_id, timestamp, x1, y1, x2, y2, action_id, score` (the box normalised to [0, 1]), as the
official AVA evaluation (and models.data.ava, models.eval.action) reads.

- rows come from the labels on the key frames' objects (service.schemas.build_response puts
  each ActionsResult there, with `key_frame` set); a track absent from its key frame has no box,
  so no row;
- `timestamp`: the key frame's time in seconds; the box: the object's, over the frame's width
  and height, clipped to [0, 1];
- `action_id`: the 1-based position in the model's action list (as AVA's label map numbers
  them) unless a {label: id} mapping is given.

The results format has no person id (ground truth puts it where results put the score);
`ava_rows` keeps the track id as `person_id` of each row for callers that want it.
"""

from collections.abc import Mapping, Sequence
from pathlib import Path

from models.data.ava import AvaBox, write_ava_csv
from service.schemas import SegmentResponse
from service.writers.common import category_id, category_ids


def ava_rows(
    response: SegmentResponse, actions: Sequence[str] | Mapping[str, int], video_id: str
) -> list[AvaBox]:
    ids = category_ids(actions)
    rows = []
    for frame in sorted(response.frames, key=lambda f: f.frame_index):
        for obj in frame.objects:
            labels = [a for a in obj.actions if a.key_frame in (None, frame.frame_index)]
            if not labels:
                continue
            x1, y1, x2, y2 = obj.box
            box = (
                _unit(x1 / response.width),
                _unit(y1 / response.height),
                _unit(x2 / response.width),
                _unit(y2 / response.height),
            )
            for label in labels:
                rows.append(
                    AvaBox(
                        video_id,
                        frame.time,
                        box,
                        category_id(ids, label.label),
                        person_id=obj.track_id,
                        score=float(label.score),
                    )
                )
    return rows


def write_ava_results(
    path: Path | str,
    response: SegmentResponse,
    actions: Sequence[str] | Mapping[str, int],
    video_id: str,
) -> int:
    """Write ava_rows as a results CSV; returns the number of rows."""
    rows = ava_rows(response, actions, video_id)
    write_ava_csv(path, rows)
    return len(rows)


def _unit(value: float) -> float:
    return min(max(float(value), 0.0), 1.0)
