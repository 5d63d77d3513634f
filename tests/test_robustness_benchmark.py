"""benchmarks/robustness.py's scoring, on the shared server and a few tiny videos: every figure
comes out of the service's answers and the evaluators, in range."""

import pytest

from benchmarks.robustness import (
    SPLIT,
    false_objects,
    headline,
    prompted_quality,
    tracking_quality,
)
from models.data.synthetic.export import generate_dataset
from models.data.synthetic.world import WorldConfig, wide_world

SIZE = {"width": 160, "height": 120, "frames": 5, "fps": 4, "max_objects": 2}


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    root = tmp_path_factory.mktemp("robustness")
    worlds = {
        "negatives": wide_world(photo_pool="held_out", negatives=1.0, **SIZE),
        "wide": wide_world(photo_pool="held_out", negatives=0.0, **SIZE),
        "classic": WorldConfig(**SIZE),
    }
    for name, world in worlds.items():
        generate_dataset(root / name, world, 1, 970, split=SPLIT)
    return root


def test_every_figure_from_the_served_answers(server, held_out):
    results = {
        "masktrack": {
            "negatives": false_objects(server.url, held_out / "negatives"),
            "wide": tracking_quality(server.url, held_out / "wide"),
            "classic": tracking_quality(server.url, held_out / "classic"),
        },
        "stcn": {
            "wide": prompted_quality(server.url, held_out / "wide"),
            "classic": prompted_quality(server.url, held_out / "classic"),
        },
    }
    negatives = results["masktrack"]["negatives"]
    assert negatives["videos"] == 1 and negatives["frames"] == SIZE["frames"]
    assert negatives["false_objects_per_frame"] == negatives["false_objects"] / SIZE["frames"]
    for world in ("wide", "classic"):
        assert results["masktrack"][world]["gt_tracks"] >= 1
        assert results["stcn"][world]["videos"] == 1 and results["stcn"][world]["objects"] >= 1
    figures = headline(results)
    assert len(figures) == 7
    for name, value in figures.items():
        assert value >= 0 and (value <= 1 or "per" in name), (name, value)
    # --sets classic: the figures of that set alone.
    classic = {"masktrack": {"classic": results["masktrack"]["classic"]}, "stcn": {}}
    assert set(headline(classic)) == {
        "masktrack YouTube-VIS AP (classic)",
        "masktrack id switches per track (classic)",
    }
