"""Action labels as an AVA v2.2 results CSV: per labelled person at a key frame and per action,
`video_id, timestamp, x1, y1, x2, y2, action_id, score` (the box normalised to [0, 1]), as the
official AVA evaluation (and models.data.ava, models.eval.action) reads.

The rows are models.eval.action.answer_rows of the response, the very rows `vidserve eval`
scores when given the response's JSON:
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
from models.eval.action import answer_rows
from service.schemas import SegmentResponse
from service.writers.common import category_ids


def ava_rows(
    response: SegmentResponse, actions: Sequence[str] | Mapping[str, int], video_id: str
) -> list[AvaBox]:
    # A label not in `actions` raises models.eval.errors.EvalInputError (a ValueError).
    return answer_rows(response.model_dump(), category_ids(actions), video_id)


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
