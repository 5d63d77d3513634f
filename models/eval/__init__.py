"""Evaluation: the standard metric of each task, shared by `vidserve eval`, the trainers and the
tests. Each task module has an in-memory entry point (evaluate_vis, evaluate_instances,
evaluate_davis, evaluate_panoptic, evaluate_actions) and a file-level one; `evaluate_files`
picks the latter by task name. Modules are imported on use: some pull in pycocotools or cv2."""

from pathlib import Path

from models.eval.errors import EvalInputError
from models.eval.report import EvalResult

TASKS = ("vis", "instance", "vos", "panoptic", "action")

__all__ = ["TASKS", "EvalInputError", "EvalResult", "evaluate_files"]


def evaluate_files(
    task: str,
    gt: Path | str,
    pred: Path | str,
    *,
    labelmap: Path | str | None = None,
    split: str | None = None,
) -> EvalResult:
    """Evaluate prediction files against ground-truth files in the task's standard formats:

    vis       YouTube-VIS instances JSON        | results JSON list
    instance  COCO instances JSON               | COCO results JSON list
    vos       DAVIS root (`split`, default val) | folder of <video>/<frame>.png palette masks
    panoptic  COCO panoptic JSON (+ PNG folder) | COCO panoptic JSON (+ PNG folder)
    action    AVA CSV (`labelmap`: class list)  | AVA CSV with scores, or the service's answers
              (<video>.json or a folder of them; `labelmap` by default the one beside the CSV)
    """
    if task == "vis":
        from models.eval.vis import evaluate_vis_files

        return evaluate_vis_files(gt, pred)
    if task == "instance":
        from models.eval.instance import evaluate_instance_files

        return evaluate_instance_files(gt, pred)
    if task == "vos":
        from models.eval.davis import evaluate_davis_files

        return evaluate_davis_files(gt, pred, split)
    if task == "panoptic":
        from models.eval.panoptic import evaluate_panoptic_files

        return evaluate_panoptic_files(gt, pred)
    if task == "action":
        from models.eval.action import evaluate_action_files

        return evaluate_action_files(gt, pred, labelmap)
    raise EvalInputError(f"unknown task '{task}'; one of {', '.join(TASKS)}")
