"""The tiny training runs that tests/train/test_distributed.py trains once plainly and once under
`torchrun --nproc-per-node 2`: `python tests/train/ddp_runs.py ROOT` trains both families on the
datasets under ROOT (vis-data, vos-data) into ROOT/<label>/<family>/ (work dir with losses.tsv,
store), then resumes each for one more step (published into store-resumed). One process group
for all the runs: it is joined once (process_group), not per trainer."""

import dataclasses
import sys
from pathlib import Path

import torch

from models.train.distributed import process_group
from models.train.vis import VisTrainConfig, train_vis
from models.train.vos import VosTrainConfig, train_vos

STEPS = 2  # then one more, resumed
GLOBAL_BATCH = 2  # one sample a rank under two processes

# The VIS small model at its test size (tests/vis/vis_fixtures.tiny_config), the VOS one
# tinier still (tests/vos/vos_fixtures.tiny_config): these runs check mechanics, not accuracy.
VIS_MODEL = dict(image_long_edge=96, image_short_edge=64, box_detections_per_img=20)
VOS_MODEL = dict(
    key_stem_width=8,
    key_widths=(8, 16, 16),
    key_dim=16,
    key_comp_dim=16,
    value_stem_width=8,
    value_widths=(8, 8, 16),
    value_dim=16,
    cbam_reduction=4,
    decoder_widths=(16, 8, 8),
    short_edge=None,
)


def common(data: Path, out: Path) -> dict:
    return dict(
        data=data,
        store=out / "store",
        work_dir=out / "work",
        iters=STEPS,
        batch_size=GLOBAL_BATCH,
        val_videos=0,  # no validation: the runs compare training steps
        seed=3,
        show_progress=False,
    )


def vis_config(root: Path, label: str, **overrides) -> VisTrainConfig:
    settings = common(root / "vis-data", root / label / "vis")
    settings.update(model_overrides=VIS_MODEL, loader_workers=0)
    return dataclasses.replace(VisTrainConfig(**settings), **overrides)


def vos_config(root: Path, label: str, **overrides) -> VosTrainConfig:
    settings = common(root / "vos-data", root / label / "vos")
    settings.update(model_overrides=VOS_MODEL, crop=(48, 64))
    return dataclasses.replace(VosTrainConfig(**settings), **overrides)


def losses(work_dir: Path) -> dict[int, float]:
    """{step: loss} from a run's loss log."""
    lines = (work_dir / "losses.tsv").read_text().splitlines()
    return {int(step): float(loss) for step, loss in (line.split("\t") for line in lines)}


def main(root: Path, label: str) -> None:
    torch.set_num_threads(1)
    with process_group():
        for train, config in ((train_vis, vis_config), (train_vos, vos_config)):
            train(config(root, label))
            resumed_store = config(root, label).store.with_name("store-resumed")
            train(config(root, label, iters=STEPS + 1, resume=True, store=resumed_store))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
