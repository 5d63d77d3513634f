"""`vidserve eval`: evaluate prediction files, print a table, optionally write the numbers."""

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer


class Task(StrEnum):
    vis = "vis"
    instance = "instance"
    vos = "vos"
    panoptic = "panoptic"
    action = "action"


def eval_command(
    task: Annotated[
        Task,
        typer.Option(
            help="vis: YouTube-VIS AP; instance: COCO mask AP; "
            "vos: DAVIS J&F; panoptic: PQ; action: AVA frame-mAP."
        ),
    ],
    gt: Annotated[
        Path,
        typer.Option(
            help="Ground truth: a YouTube-VIS / COCO / COCO panoptic "
            "JSON, a DAVIS folder, or an AVA CSV."
        ),
    ],
    pred: Annotated[
        Path,
        typer.Option(
            help="Predictions in the matching format (for vos a "
            "folder of <video>/<frame>.png palette masks; for panoptic also the service's "
            "answers as they come: a POST /v1/segment JSON or its application/zip, or a folder "
            "of them named <video>.json / <video>.zip; for action also the service's JSON "
            "answers: a <video>.json or a folder of them)."
        ),
    ],
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the numbers here as JSON.")
    ] = None,
    labelmap: Annotated[
        Path | None,
        typer.Option(
            help="action: AVA action list (pbtxt) of the classes to score, and the ids of the "
            "answers' action names (default for answers: the *action_list*.pbtxt beside --gt)."
        ),
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="vos: DAVIS split (default val, or the only one listed).")
    ] = None,
) -> None:
    """Score predictions against ground truth with the task's standard metric."""
    from models.data.errors import DatasetError
    from models.eval import EvalInputError, evaluate_files

    try:
        result = evaluate_files(task.value, gt, pred, labelmap=labelmap, split=split)
    except (EvalInputError, DatasetError) as e:
        # Bad input is the user's to fix: one clear line, no traceback.
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    result.print()
    if json_out is not None:
        result.write_json(json_out)
        typer.echo(f"wrote {json_out}")
