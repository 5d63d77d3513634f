"""`vidserve eval`: the table, the JSON, clean errors; and the shared result type."""

import json

import numpy as np
import typer
from typer.testing import CliRunner

from models.data.ava import AvaBox, write_ava_csv
from models.data.rle import encode_mask
from models.data.ytvis import YtvisTrack, YtvisVideo, write_ytvis
from models.eval.cli import eval_command
from models.eval.report import EvalResult

app = typer.Typer()
app.command("eval")(eval_command)
app.command("noop")(lambda: None)  # a second command, so that "eval" is a subcommand


def run(*args):
    return CliRunner().invoke(app, ["eval", *map(str, args)])


def write_vis(folder, results):
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:4, :4] = 1
    rle = encode_mask(mask)
    video = YtvisVideo(1, "v", 8, 8, ["v/0.jpg", "v/1.jpg"])
    write_ytvis(folder / "gt.json", [video], [YtvisTrack(1, 1, 1, 0, [rle, rle])], {1: "thing"})
    if results == "perfect":
        results = [{"video_id": 1, "category_id": 1, "score": 0.9, "segmentations": [rle, rle]}]
    (folder / "results.json").write_text(json.dumps(results))


def test_prints_a_table_and_writes_json(tmp_path):
    write_vis(tmp_path, "perfect")
    out = run(
        "--task",
        "vis",
        "--gt",
        tmp_path / "gt.json",
        "--pred",
        tmp_path / "results.json",
        "--json",
        tmp_path / "metrics.json",
    )
    assert out.exit_code == 0, out.output
    assert "AP50" in out.output and "1.0000" in out.output and "n/a" in out.output
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["task"] == "vis"
    assert abs(written["metrics"]["AP"] - 1.0) < 1e-12
    assert written["metrics"]["AP_large"] == -1.0  # no large objects: COCO's "undefined"


def test_bad_input_is_one_line_and_exit_code_2(tmp_path):
    write_vis(tmp_path, [{"video_id": 5, "category_id": 1, "score": 1, "segmentations": []}])
    out = run("--task", "vis", "--gt", tmp_path / "gt.json", "--pred", tmp_path / "results.json")
    assert out.exit_code == 2
    assert "error: result #0: video_id 5 is not in the ground truth" in out.output
    assert "Traceback" not in out.output
    out = run("--task", "vis", "--gt", tmp_path / "missing.json", "--pred", tmp_path / "x.json")
    assert out.exit_code == 2 and "missing.json: file not found" in out.output


def test_action_with_labelmap(tmp_path):
    write_ava_csv(tmp_path / "gt.csv", [AvaBox("v", 902, (0, 0, 0.5, 0.5), 1, person_id=0)])
    write_ava_csv(tmp_path / "pred.csv", [AvaBox("v", 902, (0, 0, 0.5, 0.5), 1, score=0.9)])
    out = run(
        "--task",
        "action",
        "--gt",
        tmp_path / "gt.csv",
        "--pred",
        tmp_path / "pred.csv",
        "--json",
        tmp_path / "m.json",
    )
    assert out.exit_code == 0, out.output
    assert json.loads((tmp_path / "m.json").read_text())["metrics"] == {"mAP@0.5": 1.0}


def test_unknown_task_is_a_usage_error():
    out = run("--task", "depth", "--gt", "a", "--pred", "b")
    assert out.exit_code == 2


def test_result_json_keeps_the_order(tmp_path):
    result = EvalResult("vos", {"J&F-Mean": 0.5, "J-Mean": 0.25, "F-Mean": 0.75})
    result.write_json(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert list(data["metrics"]) == ["J&F-Mean", "J-Mean", "F-Mean"]
    assert "per_class" not in data
