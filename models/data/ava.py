"""AVA (v2.1 / v2.2) action annotations: reader and writer.

Ground-truth CSV rows: `video_id, timestamp, x1, y1, x2, y2, action_id, person_id` with the box
normalised to [0, 1] and one row per (person, action) at each key frame (timestamps in seconds).
Prediction CSVs put a score where ground truth has the person id. The action list is a pbtxt of
`label { name: "..." label_id: N label_type: ... }` entries.
"""

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from models.data.errors import DatasetError


@dataclass
class AvaBox:
    video_id: str
    timestamp: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 normalised
    action_id: int
    person_id: int | None = None  # ground truth
    score: float | None = None  # predictions


def load_ava_csv(path: Path | str, predictions: bool = False) -> list[AvaBox]:
    """Read AVA rows; with `predictions` the 8th column is a score, else a person id."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "file not found")
    rows = []
    with open(path, newline="") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if not row or not "".join(row).strip():
                continue
            rows.append(_parse_row(path, line_no, row, predictions))
    return rows


def _parse_row(path: Path, line_no: int, row: list[str], predictions: bool) -> AvaBox:
    if len(row) not in (7, 8):
        raise DatasetError(path, f"line {line_no}: {len(row)} columns, expected 7 or 8")
    try:
        box = tuple(float(v) for v in row[2:6])
        last = row[7].strip() if len(row) == 8 else ""
        item = AvaBox(
            row[0].strip(),
            float(row[1]),
            box,
            int(row[6]),
            person_id=None if predictions or not last else int(last),
            score=float(last) if predictions and last else None,
        )
    except ValueError as e:
        raise DatasetError(path, f"line {line_no}: {e}") from None
    x1, y1, x2, y2 = box
    if not (0 <= x1 <= x2 <= 1 and 0 <= y1 <= y2 <= 1):
        raise DatasetError(
            path, f"line {line_no}: box {list(box)} is not normalised x1<=x2, y1<=y2"
        )
    return item


def write_ava_csv(path: Path | str, rows: list[AvaBox]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        for r in rows:
            last = r.person_id if r.score is None else f"{r.score:.6f}"
            ts = int(r.timestamp) if float(r.timestamp).is_integer() else r.timestamp
            writer.writerow([r.video_id, ts, *(f"{v:.3f}" for v in r.box), r.action_id, last])


_LABEL = re.compile(r'label\s*\{\s*name:\s*"([^"]*)"\s*label_id:\s*(\d+)', re.S)


def load_action_list(path: Path | str) -> dict[int, str]:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "file not found")
    labels = {int(i): name for name, i in _LABEL.findall(path.read_text())}
    if not labels:
        raise DatasetError(path, "no `label { name: ... label_id: ... }` entries")
    return labels


def write_action_list(path: Path | str, actions: dict[int, str]) -> None:
    Path(path).write_text(
        "".join(
            f'label {{\n  name: "{name}"\n  label_id: {i}\n  label_type: PERSON_MOVEMENT\n}}\n'
            for i, name in actions.items()
        )
    )
