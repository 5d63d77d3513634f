"""The one output schema REST and gRPC share (DESIGN.md, "One output schema").

Per frame: index and time, then the objects with track id, category, score, box in input pixels,
mask as COCO RLE and action labels; per video: a summary of each track; always the model name and
version that produced the result.
"""

from pydantic import BaseModel, Field


class Mask(BaseModel):
    """COCO run-length encoding; `counts` is the compressed string form."""

    size: tuple[int, int] = Field(description="[height, width] of the input frame")
    counts: str


class ActionLabel(BaseModel):
    label: str
    score: float


class DetectedObject(BaseModel):
    track_id: int | None = Field(
        None, description="Stable id of the object through the video; null for per-frame models"
    )
    category: str
    score: float
    box: tuple[float, float, float, float] = Field(description="[x1, y1, x2, y2] input pixels")
    mask: Mask
    actions: list[ActionLabel] = Field(default_factory=list)


class FrameResult(BaseModel):
    frame_index: int = Field(description="Index of the frame in the input video or stream")
    time: float = Field(description="Seconds from the start of the video")
    objects: list[DetectedObject]
    model: str
    model_version: str


class TrackSummary(BaseModel):
    track_id: int
    category: str = Field(description="Majority vote of the per-frame categories")
    score: float = Field(description="Mean of the per-frame scores")
    first_frame: int
    last_frame: int
    num_frames: int


class SegmentResponse(BaseModel):
    model: str
    model_version: str
    width: int
    height: int
    fps: float
    frames: list[FrameResult]
    tracks: list[TrackSummary]


def summarize_tracks(frames: list[FrameResult]) -> list[TrackSummary]:
    """Video-level tracks: score = mean of frame scores, category = majority vote (ties go to the
    category seen first), as the MaskTrack R-CNN reference summarises a track."""
    seen: dict[int, list[tuple[int, DetectedObject]]] = {}
    for frame in frames:
        for obj in frame.objects:
            if obj.track_id is not None:
                seen.setdefault(obj.track_id, []).append((frame.frame_index, obj))
    tracks = []
    for track_id, hits in sorted(seen.items()):
        votes: dict[str, int] = {}
        for _, obj in hits:
            votes[obj.category] = votes.get(obj.category, 0) + 1
        indices = [i for i, _ in hits]
        tracks.append(
            TrackSummary(
                track_id=track_id,
                category=max(votes, key=votes.get),
                score=sum(o.score for _, o in hits) / len(hits),
                first_frame=min(indices),
                last_frame=max(indices),
                num_frames=len(hits),
            )
        )
    return tracks
