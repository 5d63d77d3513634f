"""DAVIS J&F: hand-worked boundary and region cases, the sequence rules, a cross-check with the
vos-benchmark package, bad input."""

import numpy as np
import pytest
from PIL import Image

from models.data.davis import write_davis_split, write_palette_png
from models.eval.davis import (
    METRIC_NAMES,
    boundary_f,
    boundary_map,
    boundary_radius,
    disk,
    evaluate_davis,
    evaluate_davis_files,
    region_j,
    statistics,
)
from models.eval.errors import EvalInputError

SIZE = 20


def square(y0, x0, side=5, value=1, size=SIZE):
    ids = np.zeros((size, size), dtype=np.uint8)
    ids[y0 : y0 + side, x0 : x0 + side] = value
    return ids


def test_boundary_map_of_a_square_is_the_ring_offset_towards_the_origin():
    # A 5x5 square on rows/columns 5..9. Inside pixels whose right, lower and lower-right
    # neighbours are inside too are not boundary; row 9 and column 9 are (their neighbours fall
    # outside), and so are row 4 and column 4 outside the square (their neighbours fall inside).
    # The boundary is the ring of the 6x6 square 4..9: 4 x 6 - 4 = 20 pixels.
    edge = boundary_map(square(5, 5))
    ring = np.zeros((SIZE, SIZE), dtype=bool)
    ring[4:10, 4:10] = True
    ring[5:9, 5:9] = False
    np.testing.assert_array_equal(edge, ring)
    # At the image's last row and column only the right / lower neighbour counts: a mask filling
    # the bottom-right 3x3 corner has as boundary the ring's top row and left column only.
    corner = boundary_map(square(17, 17, 3))
    assert sorted(zip(*np.nonzero(corner), strict=True)) == (
        [(16, x) for x in range(16, 20)] + [(y, 16) for y in range(17, 20)]
    )


def test_tolerance_is_a_disk_of_0008_of_the_diagonal():
    assert boundary_radius((20, 20)) == 1  # ceil(0.008 x 28.3) = ceil(0.23)
    assert boundary_radius((480, 854)) == 8  # ceil(0.008 x 979.6) = ceil(7.84)
    np.testing.assert_array_equal(disk(1), [[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    assert disk(2).sum() == 13  # x^2 + y^2 <= 4 on a 5x5 grid


def test_boundary_f_of_a_shifted_square():
    # Ground truth: the 5x5 square at 5..9; prediction: the same moved 2 columns right (7..11).
    # Rings (radius 1 tolerance, a plus-shaped neighbourhood): ground truth rows 4 and 9 x 4..9,
    # columns 4 and 9 x 5..8; prediction rows 4 and 9 x 6..11, columns 6 and 11 x 5..8.
    # Predicted top row: x = 6..9 lie on the ground truth ring, x = 10 touches (4, 9), x = 11
    # nothing: 5 of 6; the same for the bottom row. Column 6: its ends (5, 6) and (8, 6) touch
    # the ground truth's top and bottom rows at (4, 6) and (9, 6), rows 6..7 nothing: 2 of 4.
    # Column 11 is 2 columns from column 9: 0 of 4. Precision = 12 / 20; recall, by symmetry,
    # 12 / 20; F = 0.6.
    gt, pred = square(5, 5) == 1, square(5, 7) == 1
    assert boundary_f(gt, pred, radius=1) == pytest.approx(0.6)
    assert boundary_f(gt, gt, radius=1) == 1.0
    assert boundary_f(gt, np.zeros_like(gt), radius=1) == 0.0  # missed: recall 0
    assert boundary_f(np.zeros_like(gt), pred, radius=1) == 0.0  # false positive: precision 0
    assert boundary_f(np.zeros_like(gt), np.zeros_like(gt), radius=1) == 1.0  # absent in both
    # With radius 2, the side columns are in reach too: F = 1.
    assert boundary_f(gt, pred, radius=2) == pytest.approx(1.0)


def test_region_j():
    # Overlap of the square and its 2-column move: 5 x 3 = 15; union 25 + 25 - 15 = 35.
    gt, pred, nothing = square(5, 5) == 1, square(5, 7) == 1, np.zeros((SIZE, SIZE), bool)
    assert region_j(gt, pred) == pytest.approx(15 / 35)
    assert region_j(gt, nothing) == 0.0
    assert region_j(nothing, nothing) == 1.0  # absent from both


def test_statistics_mean_recall_decay():
    # Nine frames: DAVIS bins at round(linspace(1, 9, 5)) - 1 = 0, 2, 4, 6, 8, the first bin
    # frames 0..2 (mean 1), the last frames 6..8 (mean 0): decay 1. Recall: 3 of 9 above 0.5.
    mean, recall, decay = statistics(np.array([1, 1, 1, 0.5, 0.5, 0.5, 0, 0, 0]))
    assert (mean, recall, decay) == pytest.approx((0.5, 1 / 3, 1.0))


def sequence():
    """Five frames, two objects; frames 0 and 4 are not scored, so the prediction leaves them
    empty. Object 1: moved 2 columns on frames 1..3 (J = 3/7, F = 0.6 each). Object 2: missed
    on frames 1 and 3 (J = F = 0), absent from both on frame 2 (J = F = 1)."""
    gt, pred = [], []
    for t in range(5):
        object_2 = square(12, 12, value=2) if t != 2 else 0
        gt.append(square(5, 5) + object_2)
        pred.append(square(5, 7) if t in (1, 2, 3) else np.zeros((SIZE, SIZE), np.uint8))
    return np.stack(gt), np.stack(pred)


def test_sequence_by_hand():
    gt, pred = sequence()
    metrics = evaluate_davis([("seq", gt, pred)]).metrics
    # Object 1: J mean 3/7, recall 0 (3/7 < 0.5), decay 0; F mean 0.6, recall 1, decay 0.
    # Object 2: J = F = [0, 1, 0]: mean 1/3, recall 1/3; 3 frames bin as 0..1 and 2..2, so
    # decay = mean(0, 1) - 0 = 0.5.
    # J-Mean = (3/7 + 1/3) / 2 = 8/21; F-Mean = (3/5 + 1/3) / 2 = 7/15;
    # J&F = (8/21 + 7/15) / 2 = (40 + 49) / 210 = 89/210.
    expected = {
        "J&F-Mean": 89 / 210,
        "J-Mean": 8 / 21,
        "J-Recall": 1 / 6,
        "J-Decay": 0.25,
        "F-Mean": 7 / 15,
        "F-Recall": 2 / 3,
        "F-Decay": 0.25,
    }
    assert list(metrics) == list(METRIC_NAMES)
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value), name


def test_perfect_prediction_scores_one_and_first_last_frames_are_left_out():
    gt, _ = sequence()
    pred = gt.copy()
    pred[0] = pred[-1] = 0  # not scored
    metrics = evaluate_davis([("seq", gt, pred)]).metrics
    assert metrics["J&F-Mean"] == metrics["J-Mean"] == metrics["F-Mean"] == 1.0
    assert metrics["J-Decay"] == metrics["F-Decay"] == 0.0


def test_void_in_the_ground_truth_is_background():
    gt, _ = sequence()
    gt[:, 0, :] = 255
    assert evaluate_davis([("seq", gt, np.where(gt == 255, 0, gt))]).metrics["J-Mean"] == 1.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda gt, pred: (gt, pred[:, :10]), "video 'seq': predicted masks (5, 10, 20) != ground"),
        (lambda gt, pred: (gt[:2], pred[:2]), "video 'seq': 2 annotated frames"),
        (
            lambda gt, pred: (gt, np.where(pred == 1, 3, pred)),
            r"video 'seq': predicted ids \[3\] are not objects of the first frame \[1, 2\]",
        ),
    ],
)
def test_bad_sequences(change, message):
    gt, pred = change(*sequence())
    with pytest.raises(EvalInputError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        evaluate_davis([("seq", gt, pred)])


def write_davis(root, videos: dict[str, np.ndarray]):
    """A DAVIS folder (val split) with these (T, H, W) ground truths; frames are empty files."""
    for name, masks in videos.items():
        (root / "JPEGImages/480p" / name).mkdir(parents=True)
        (root / "Annotations/480p" / name).mkdir(parents=True)
        for t, ids in enumerate(masks):
            (root / "JPEGImages/480p" / name / f"{t:05d}.jpg").write_bytes(b"")
            write_palette_png(root / "Annotations/480p" / name / f"{t:05d}.png", ids)
    write_davis_split(root, "val", list(videos))


def write_predictions(root, videos: dict[str, np.ndarray], frames=None):
    for name, masks in videos.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for t, ids in enumerate(masks):
            if frames is None or t in frames:
                write_palette_png(root / name / f"{t:05d}.png", ids)


def test_files(tmp_path):
    gt, pred = sequence()
    write_davis(tmp_path / "davis", {"seq": gt})
    # The first and last predictions may be missing: they are not scored.
    write_predictions(tmp_path / "pred", {"seq": pred}, frames={1, 2, 3})
    metrics = evaluate_davis_files(tmp_path / "davis", tmp_path / "pred").metrics
    assert metrics["J&F-Mean"] == pytest.approx(89 / 210)
    (tmp_path / "pred/seq/00002.png").unlink()
    with pytest.raises(
        EvalInputError, match="00002.png: prediction for frame 00002 of video 'seq' is missing"
    ):
        evaluate_davis_files(tmp_path / "davis", tmp_path / "pred")
    write_palette_png(tmp_path / "pred/seq/00002.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(EvalInputError, match=r"mask size \[10, 10\] != ground truth size"):
        evaluate_davis_files(tmp_path / "davis", tmp_path / "pred")
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(tmp_path / "pred/seq/00002.png")
    with pytest.raises(EvalInputError, match="expected a palette PNG"):
        evaluate_davis_files(tmp_path / "davis", tmp_path / "pred")


def test_empty_prediction_folder_scores_zero(tmp_path):
    write_davis(tmp_path / "davis", {"seq": sequence()[0]})
    (tmp_path / "pred").mkdir()
    metrics = evaluate_davis_files(tmp_path / "davis", tmp_path / "pred").metrics
    assert all(v == 0.0 for v in metrics.values())


def test_agrees_with_vos_benchmark(tmp_path):
    benchmark = pytest.importorskip(
        "vos_benchmark.benchmark", reason="vos-benchmark (dev dependency) is not installed"
    )
    rng = np.random.default_rng(0)
    height, width, frames = 60, 90, 7
    yy, xx = np.mgrid[:height, :width]
    gts, preds = {}, {}
    for v in range(3):  # three objects per video, moving discs; predictions noisy ellipses
        gt = np.zeros((frames, height, width), np.uint8)
        pred = np.zeros_like(gt)
        for t in range(frames):
            for o in (1, 2, 3):
                cy, cx, r = 15 + 10 * o + 2 * t, 20 + 15 * o - 3 * t + v, 6 + o
                gt[t][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = o
                dy, dx = rng.integers(-3, 4, 2)
                radius = r + rng.integers(-2, 3)
                blob = (yy - cy - dy) ** 2 + ((xx - cx - dx) * 1.2) ** 2 <= radius**2
                pred[t][blob & (rng.random((height, width)) > 0.1)] = o
        gts[f"video{v}"], preds[f"video{v}"] = gt, pred
    write_davis(tmp_path / "davis", gts)
    write_predictions(tmp_path / "pred", preds)
    ours = evaluate_davis_files(tmp_path / "davis", tmp_path / "pred").metrics
    jf, j, f, _ = benchmark.benchmark(
        [str(tmp_path / "davis/Annotations/480p")],
        [str(tmp_path / "pred")],
        num_processes=1,
        verbose=False,
    )
    assert 0.2 < ours["J&F-Mean"] < 0.8
    # vos-benchmark reports percentages.
    assert ours["J&F-Mean"] == pytest.approx(jf[0] / 100, abs=1e-3)
    assert ours["J-Mean"] == pytest.approx(j[0] / 100, abs=1e-3)
    assert ours["F-Mean"] == pytest.approx(f[0] / 100, abs=1e-3)
