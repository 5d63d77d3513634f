"""`vidserve synth` as a user runs it: a real subprocess, real files."""

import json
import subprocess
import sys

import numpy as np
from PIL import Image


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def test_synth_writes_every_format_and_a_contact_sheet(tmp_path):
    out, sheet = tmp_path / "synth-out", tmp_path / "sheet.png"
    result = run_cli(
        "synth",
        "--out",
        str(out),
        "--videos",
        "2",
        "--frames",
        "10",
        "--seed",
        "1",
        "--size",
        "128x96",
        "--preview",
        str(sheet),
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 2 videos x 10 frames" in result.stdout
    for path in [
        "ytvis/train.json",
        "davis/ImageSets/2017/train.txt",
        "panoptic/panoptic_train.json",
        "ava/annotations/ava_train_v2.2.csv",
        "videos/vid0001.mp4",
        "meta.json",
        "ytvis/JPEGImages/vid0001/00009.jpg",
        "davis/Annotations/480p/vid0000/00000.png",
    ]:
        assert (out / path).is_file(), path
    meta = json.loads((out / "meta.json").read_text())
    assert meta["seed"] == 1 and meta["config"]["width"] == 128 and len(meta["fingerprint"]) == 64
    image = np.array(Image.open(sheet))
    assert image.shape == (2 * 96 * 2, 4 * 128 * 2, 3)  # 2 rows of 4 frames, drawn at 2x


def test_synth_bad_options_are_clear_errors(tmp_path):
    result = run_cli("synth", "--out", str(tmp_path / "a"), "--size", "big")
    assert result.returncode == 2 and "'big' is not WIDTHxHEIGHT" in result.stderr
    result = run_cli("synth", "--out", str(tmp_path / "b"), "--size", "97x64")
    assert result.returncode == 2 and "must be even" in result.stderr
    result = run_cli("synth", "--out", str(tmp_path / "c"), "--videos", "0")
    assert result.returncode == 2 and "--videos" in result.stderr
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("keep")
    result = run_cli("synth", "--out", str(tmp_path / "d"))
    assert result.returncode == 2 and "not empty" in result.stderr
    assert (tmp_path / "d" / "x").read_text() == "keep"
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_help_lists_the_commands():
    result = run_cli("--help")
    assert result.returncode == 0 and "synth" in result.stdout
