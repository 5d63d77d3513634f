"""Still images as uploads: a JPEG or PNG (also WebP or BMP) is answered as a one-frame video.

An image is told from a video by its leading bytes (service.images.image_format), never by the
file name or content type. Its header is checked before a pixel is decoded: an animated PNG or
WebP is refused (415, as a GIF is: the decoder would silently give the first frame), a side
under MIN_SIDE is refused (422), a size over the video limits is refused (413, by
service.images.decode_image, which then decodes). A 16-bit PNG and a CMYK JPEG come out as 8-bit
RGB (OpenCV keeps the high byte; it converts CMYK, Adobe's inverted form included).
"""

from pathlib import Path

from service.gateway.video_input import InputError, VideoLimits, VideoProbe
from service.images import ImageError, decode_image, image_format, image_size, is_animated

# Below this a side says nothing a model could find (and a 1x1 upload is a client's mistake):
# refused from the header, before decoding.
MIN_SIDE = 16
# A still image has no frame rate: the answer's `fps` is 0 and frame 0's time is 0.0.
STILL_FPS = 0.0
IMAGE_FORMATS = "JPEG, PNG, WebP or BMP"
_NAMES = {"jpeg": "JPEG", "png": "PNG", "webp": "WebP", "bmp": "BMP"}


def is_image(head: bytes) -> bool:
    return image_format(head) is not None


def is_gif(head: bytes) -> bool:
    return head[:6] in (b"GIF87a", b"GIF89a")


def probe_image(path: Path, limits: VideoLimits) -> VideoProbe:
    """The image's header checked, then the image decoded (in the caller's thread, as
    probe_video decodes a video's first frame): a one-frame VideoProbe that carries the pixels."""
    data = path.read_bytes()
    kind = _NAMES.get(image_format(data) or "", "image")
    size = image_size(data)
    if size is None:  # a signature and garbage after it: corrupt, as a video would be (422)
        raise InputError(
            422, "Undecodable image", f"the {kind} cannot be decoded: its header is malformed"
        )
    _check_header(data, kind, size)
    try:
        image = decode_image(data, limits.max_width, limits.max_height, what="the image")
    except ImageError as e:
        # Over the limit: 413 from the header, nothing decoded; anything else is corrupt data
        # (or data that decodes to another size than its header's): 422, as a corrupt video.
        if e.status == 413:
            raise InputError(413, "Image too large", e.message) from None
        raise InputError(
            422, "Undecodable image", f"the {kind} cannot be decoded: it is corrupt or cut"
        ) from None
    height, width = image.shape[:2]
    return VideoProbe(width, height, STILL_FPS, frames=1, image=image)


def _check_header(data: bytes, kind: str, size: tuple[int, int]) -> None:
    if is_animated(data):
        raise InputError(
            415,
            "Animated image",
            f"an animated {kind} is not a still image (it is not taken as its first frame): "
            "send it as a video",
        )
    width, height = size
    if min(width, height) < MIN_SIDE:
        raise InputError(
            422,
            "Image too small",
            f"the image is {width}x{height}: a side must be at least {MIN_SIDE} pixels",
        )


def refuse_gif() -> InputError:
    return InputError(
        415,
        "Unsupported image format",
        "GIF is not supported (an animated GIF is not taken as its first frame): send a video "
        f"or a still image ({IMAGE_FORMATS})",
    )
