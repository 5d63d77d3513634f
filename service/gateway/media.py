"""What a POST /v1/segment answer is made of: the request's `Accept` against what the model gives.

A request may name several media types; it gets the first of these that it names and the model
can give (the order the gateway has always used: a stream, then files, then drawn results):

    application/x-ndjson   one line per frame as it comes, then the summary   every model
    application/zip        DAVIS palette PNGs                                 VOS models
                           COCO panoptic PNGs and their JSON                  panoptic models
    image/png              the image with its results drawn                   an image upload
    video/mp4              the annotated video (a one-frame mp4 for an image) every model
    application/json       the whole answer (service.schemas.SegmentResponse) every model

No header, `*/*` or `application/*` mean JSON; `video/*` names the mp4, `image/*` the PNG. A
header that names none of what the model can give (a zip of a detector, text/csv) is refused with
406 before the upload is read.
"""

from dataclasses import dataclass

JSON = "application/json"
NDJSON = "application/x-ndjson"
ZIP = "application/zip"
PNG = "image/png"
MP4 = "video/mp4"

PRECEDENCE = (NDJSON, ZIP, PNG, MP4, JSON)
WILDCARDS = ("*/*", "application/*")
# The tasks that answer a zip, and what is in it.
ZIP_CONTENTS = {"vos": "DAVIS palette PNGs", "panoptic": "COCO panoptic PNGs and JSON"}


@dataclass
class NotAcceptable(Exception):
    detail: str


def offered(task: str) -> tuple[str, ...]:
    """The media types a model of `task` can answer, in PRECEDENCE order."""
    return tuple(media for media in PRECEDENCE if media != ZIP or task in ZIP_CONTENTS)


def media_ranges(accept: str) -> list[str]:
    """The media ranges an Accept header names with q > 0, lower-cased, without parameters."""
    ranges = []
    for part in accept.split(","):
        media, *params = (piece.strip() for piece in part.split(";"))
        if media and not any(_is_zero_q(p) for p in params):
            ranges.append(media.lower())
    return ranges


def acceptable(accept: str | None, task: str) -> list[str]:
    """The media types, in PRECEDENCE order, that both the header and the model allow (JSON
    for no header or a wildcard); NotAcceptable when there are none."""
    named = media_ranges(accept or "")
    if not (accept or "").strip() or any(w in named for w in WILDCARDS):
        named.append(JSON)
    chosen = [media for media in offered(task) if _named(media, named)]
    if chosen:
        return chosen
    if ZIP in named:
        zips = "; ".join(f"{what} of {task} models" for task, what in ZIP_CONTENTS.items())
        raise NotAcceptable(f"a {task} model answers no zip ({zips})")
    raise NotAcceptable(
        f"cannot answer Accept: {accept}; a {task} model answers {', '.join(offered(task))}"
    )


def _named(media: str, named: list[str]) -> bool:
    """Named exactly, or (an image or a video) by its type's wildcard; `application/*` means
    JSON only, not a stream or a zip nobody asked for by name."""
    kind = media.split("/")[0]
    return media in named or (kind != "application" and f"{kind}/*" in named)


def _is_zero_q(param: str) -> bool:
    name, _, value = param.partition("=")
    if name.strip().lower() != "q":
        return False
    try:
        return float(value) == 0.0
    except ValueError:
        return False
