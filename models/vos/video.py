"""A whole video through one session, as the DAVIS semi-supervised protocol runs it: the masks
of the first frame are given, every frame's id map comes back (frame 0's is the prompt)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import numpy as np

from models.common.image import Frame
from models.vos.inference import MaskLike, SessionSettings, VosSession, label_map
from models.vos.network import STCN


def segment_video(
    model: STCN,
    frames: Iterable[Frame],
    first_masks: Mapping[int, MaskLike],
    settings: SessionSettings | None = None,
) -> Iterator[np.ndarray]:
    """(H, W) int32 id maps of every frame, given {object id: mask} of frame 0. The model must
    be in eval mode (prepare_for_inference makes it fast on a CPU)."""
    session = VosSession(model, settings)
    session.add_prompt(0, first_masks)
    try:
        for frame in frames:
            results = session.step(frame)
            yield label_map(results, session.input_size)
    finally:
        session.close()
