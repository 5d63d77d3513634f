"""The one rule that sums up a track over a video: its score and its category.

Every video-level summary goes through `TrackVotes`: the tracker's `Tracker.summaries()`, the
YouTube-VIS results of `models.vis.video_inference.ytvis_results` (trainer validation), the
`tracks` of the service's responses (`service.schemas.summarize_tracks`) and the files the service
writes from them (`service.writers`). So a track has the same category and score everywhere.

- score = mean of the per-frame scores (MaskTrack R-CNN's video-level score);
- category = majority vote of the per-frame categories; a tie goes to the category with the
  larger summed score, and a tie of both to the category seen first (earliest frame added).

Running totals only: a track of a long stream costs constant memory. Pure Python (no torch), so
that the service's schemas can use it.
"""

from collections.abc import Hashable
from dataclasses import dataclass, field


@dataclass
class TrackVotes:
    """Running totals of one track: frames seen, scores, and per-category votes."""

    first_frame: int | None = None
    last_frame: int | None = None
    num_frames: int = 0
    score_sum: float = 0.0
    # category -> (frames, summed score); dicts keep insertion order = first-seen order.
    counts: dict[Hashable, int] = field(default_factory=dict)
    score_sums: dict[Hashable, float] = field(default_factory=dict)

    def add(self, frame_index: int, category: Hashable, score: float) -> None:
        """One frame of the track (call once per frame the track is on)."""
        self.first_frame = (
            frame_index if self.first_frame is None else min(self.first_frame, frame_index)
        )
        self.last_frame = (
            frame_index if self.last_frame is None else max(self.last_frame, frame_index)
        )
        self.num_frames += 1
        self.score_sum += score
        self.counts[category] = self.counts.get(category, 0) + 1
        self.score_sums[category] = self.score_sums.get(category, 0.0) + score

    @property
    def score(self) -> float:
        """Mean of the frame scores (0 for a track never added to)."""
        return self.score_sum / self.num_frames if self.num_frames else 0.0

    @property
    def category(self) -> Hashable:
        """Majority vote; ties: larger summed score, then the category seen first."""
        if not self.counts:
            raise ValueError("a track without frames has no category")
        # max() keeps the first of equal keys: iteration is in first-seen order.
        return max(self.counts, key=lambda c: (self.counts[c], self.score_sums[c]))
