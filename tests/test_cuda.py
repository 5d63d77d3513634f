"""CUDA only (`pytest -m cuda`; skipped without a CUDA device): the served runners on the GPU, run
as the worker runs them (frames through pinned memory, non-blocking copies, the precision's
autocast), answer what they answer on the CPU.

benchmarks/gpu_suite.py runs this module on a GPU machine with `--noconftest` (the shared
fixtures need the network stack), so nothing here uses a fixture; where pytest is missing it calls
the test functions itself. The comparison helpers also serve tests/test_gpu_suite.py on the CPU.
"""

from functools import cache

import numpy as np
import torch

from benchmarks.gpu_suite import MODELS, load_served, stream_videos
from models.data.rle import decode_rle
from service.worker.runner import ForwardContext, WorkItem, forward_context, run_frames

try:
    import pytest
except ImportError:  # benchmarks/gpu_suite.py calls the test functions itself
    pytest = None
else:
    pytestmark = [
        pytest.mark.cuda,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    ]

FRAME_SIZE = (240, 320)  # (H, W): what the shipped checkpoints were trained on
# Objects this far above the serving threshold (0.5) must be found by both runs; nearer it, a
# last-digit difference may put one on either side.
SURE_SCORE = 0.6


@cache
def served(device: str) -> dict:
    return load_served(device)


def run_streams(
    name: str, device: str, precision: str = "fp32", frames: int = 4, streams: int = 2
) -> list:
    """The objects of each stream, one batch a round: [round][stream] -> objects."""
    runner = served(device)[name]
    context = forward_context(device, precision)
    videos = stream_videos(streams, FRAME_SIZE)
    states = [runner.open_session({}) for _ in videos]
    rounds = []
    for t in range(frames):
        prompted = t == 0 and runner.info.takes_prompt
        items = [
            WorkItem(f"s{k}", t, t / 8, video[t], state, prompt if prompted else None)
            for k, ((video, prompt), state) in enumerate(zip(videos, states, strict=True))
        ]
        results = run_frames(runner, items, context)
        for result in results:
            if isinstance(result, Exception):
                raise result
        rounds.append([result[0].objects for result in results])
    for state in states:
        runner.close_session(state)
    return rounds


def mask_iou(a, b) -> float:
    first, second = (decode_rle(o.mask.model_dump()).astype(bool) for o in (a, b))
    union = np.logical_or(first, second).sum()
    return float(np.logical_and(first, second).sum() / union) if union else 1.0


def assert_same_objects(expected: list, actual: list, min_iou: float, score_tol: float) -> None:
    """Every sure object of each run has one in the other: same category and track id, its mask
    overlapping by min_iou, its score within score_tol."""
    for frame, (want, got) in enumerate(zip(expected, actual, strict=True)):
        for stream, (objects, others) in enumerate(zip(want, got, strict=True)):
            for one, other_run in ((objects, others), (others, objects)):
                for obj in one:
                    if obj.score < SURE_SCORE:
                        continue
                    candidates = [o for o in other_run if o.category == obj.category]
                    assert candidates, f"frame {frame} stream {stream}: {obj.category} missing"
                    best = max(candidates, key=lambda o, obj=obj: mask_iou(obj, o))
                    where = f"frame {frame} stream {stream} {obj.category}"
                    assert mask_iou(obj, best) >= min_iou, where
                    assert abs(obj.score - best.score) <= score_tol, where
                    assert obj.track_id == best.track_id, where


def test_the_runners_on_cuda_answer_as_on_the_cpu():
    for name in MODELS:
        expected = run_streams(name, "cpu")
        actual = run_streams(name, "cuda")
        assert any(objects for round_ in expected for objects in round_), name
        assert_same_objects(expected, actual, min_iou=0.9, score_tol=0.02)


def test_autocast_on_cuda_stays_close_to_fp32():
    for name in MODELS:
        reference = run_streams(name, "cuda")
        for precision in ("fp16", "bf16"):
            assert_same_objects(reference, run_streams(name, "cuda", precision), 0.8, 0.05)


def test_frames_reach_the_device_through_pinned_memory():
    image = np.random.default_rng(0).integers(0, 256, (480, 854, 3), dtype=np.uint8)
    frame = ForwardContext("cuda").to_device(image)
    assert frame.is_cuda and frame.dtype == torch.uint8
    assert np.array_equal(frame.cpu().numpy(), image)


def test_fp16_autocast_is_on_inside_the_cuda_context():
    with forward_context("cuda", "fp16").autocast():
        product = torch.ones(8, 8, device="cuda") @ torch.ones(8, 8, device="cuda")
    assert product.dtype == torch.float16
