r"""Our action detectors against MMAction2 1.2's, with the same random weights on the same clips
and boxes: the box head's class logits must agree to 1e-4 (max abs diff), for both releases
(SlowFast-ACRN R50 8x8 and SlowOnly R50 4x16, AVA v2.1 configs).

    nice -n 19 uv run python benchmarks/action_vs_mmaction.py \
        --mmaction-python /work/mmaction-venv/bin/python \
        [--seed 0] [--write benchmarks/action_vs_mmaction.txt]

The MMAction2 side runs in a venv of its own as a child process, benchmarks/_mmaction_child.py,
so neither environment needs the other's packages:

    uv venv -p 3.11 /work/mmaction-venv
    VIRTUAL_ENV=/work/mmaction-venv uv pip install --find-links /opt/wheels \
        torch==2.13.0+cpu mmaction2==1.2.0 mmdet==3.3.0 mmengine==0.10.7 mmcv-lite==2.1.0 \
        importlib_metadata

(a CPU torch wheel from the machine's wheel folder; no torchvision; mmaction.utils imports
importlib_metadata, which the wheel does not declare. mmcv-lite has no compiled
ops: the child stubs mmcv._ext so that `import mmcv.ops` works and computes RoIAlign with its
own torch transcription of mmcv's CPU kernel; the wheel lacks mmaction's DRN localizer
subpackage, which the child stands in for. Nothing in the venv is edited.) For each release:

1. builds ours (ActionConfig() / ActionConfig.slowonly_r50()), then draws every parameter and
   every batch-norm buffer at random (seeded), so no norm is the identity and no bias is zero,
   and writes to_release_state_dict() of it;
2. prepares the clips with our preprocessing (prepare_clip: the releases' normalisation, at the
   test short side 256, the config's clip length: 32 frames for SlowFast, 4 for SlowOnly) from
   seeded smooth random frames, and three boxes (fractional corners, one crossing the border);
3. has the child load that state dict strictly into MMAction2's model and run the same clips
   and boxes through its backbone and AVARoIHead._bbox_forward (data preprocessor skipped);
4. compares the backbone's maps, the RoI extractor's features and context, the shared head's
   output and the class logits, in float32 and again with both models in float64 (where only
   the architecture can differ, not rounding).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.maskformer_vs_mmdet import (  # noqa: E402
    max_diff,
    our_versions,
    randomise,
    smooth_frame,
)
from models.action import ActionConfig, build_action_model, prepare_clip  # noqa: E402
from models.action.mmaction_weights import to_release_state_dict  # noqa: E402
from models.action.model import ActionDetector  # noqa: E402

CHILD = Path(__file__).resolve().parent / "_mmaction_child.py"
TOLERANCE = 1e-4
FRAME_SIZE = (256, 320)  # (H, W): the test short side already, no side a multiple of 32 x 16
# (name, our config, clips in the batch, RoIs [batch index, x1, y1, x2, y2] in clip pixels):
# boxes of different sizes and fractional corners; the last crosses the right border.
RELEASES = (
    (
        "slowfast_acrn",
        ActionConfig.slowfast_acrn_r50(),
        1,
        [
            [0, 40.3, 30.7, 150.2, 240.9],
            [0, 170.5, 60.25, 260.75, 200.1],
            [0, 250.0, 5.5, 331.0, 120.0],
        ],
    ),
    (
        "slowonly",
        ActionConfig.slowonly_r50(),
        2,
        [
            [0, 40.3, 30.7, 150.2, 240.9],
            [0, 170.5, 60.25, 260.75, 200.1],
            [1, 250.0, 5.5, 331.0, 120.0],
        ],
    ),
)


def make_clips(config: ActionConfig, count: int, seed: int) -> Tensor:
    """(count, 3, T, H, W): seeded smooth random frames, through our preprocessing."""
    generator = torch.Generator().manual_seed(seed + 1)
    clips = []
    for _ in range(count):
        frames = [smooth_frame(*FRAME_SIZE, generator) for _ in range(config.clip_len)]
        clips.append(prepare_clip(frames, config))
    return torch.stack(clips)


def run_ours(model: ActionDetector, clips: Tensor, rois: Tensor) -> dict:
    """Our logits and the intermediates the child captures from MMAction2's model."""
    captured: dict = {}

    def keep_extractor(module, args, output):
        captured["roi_features"], captured["context"] = (t.clone() for t in output)

    def keep_shared(module, args, output):
        captured["bbox_feats"] = output.clone()

    head = model.roi_head
    handles = [head.bbox_roi_extractor.register_forward_hook(keep_extractor)]
    if head.shared_head is not None:
        handles.append(head.shared_head.register_forward_hook(keep_shared))
    try:
        with torch.no_grad():
            features = model.backbone(clips)
            logits = head(features, rois)
    finally:
        for handle in handles:
            handle.remove()
    captured.setdefault("bbox_feats", captured["roi_features"])
    return {"backbone": list(features), "logits": logits, **captured}


def run_reference(
    python: str, workdir: Path, release: str, state: dict, clips: Tensor, rois: Tensor, dtype: str
) -> dict:
    torch.save(state, workdir / "state_dict.pt")
    inputs = {"release": release, "clips": clips, "rois": rois, "dtype": dtype}
    torch.save(inputs, workdir / "inputs.pt")
    subprocess.run([python, str(CHILD), str(workdir)], check=True)
    return torch.load(workdir / "outputs.pt", weights_only=False)


def compare(ours: dict, theirs: dict) -> tuple[list[str], bool]:
    """Report lines and whether the class logits are within TOLERANCE."""
    rows = [
        (f"backbone pathway {index}", a, b)
        for index, (a, b) in enumerate(zip(ours["backbone"], theirs["backbone"], strict=True))
    ]
    rows += [
        ("RoI features (RoIAlign)", ours["roi_features"], theirs["roi_features"]),
        ("context (time-pooled maps)", ours["context"], theirs["context"]),
        ("box head input (ACRN or RoI)", ours["bbox_feats"], theirs["bbox_feats"]),
        ("class logits", ours["logits"], theirs["logits"]),
    ]
    lines = [f"  {'tensor':<30} {'shape':<22} {'max |ref|':>10} {'max abs diff':>13}"]
    passed = True
    for label, a, b in rows:
        diff = max_diff(a, b)
        mark = ""
        if label == "class logits":
            passed = diff <= TOLERANCE
            mark = "  ok" if passed else "  OVER"
        shape = "x".join(str(s) for s in b.shape)
        scale = float(b.double().abs().max())
        lines.append(f"  {label:<30} {shape:<22} {scale:>10.4g} {diff:>13.3e}{mark}")
    return lines, passed


def compare_release(python: str, name: str, config, count: int, boxes, seed: int) -> tuple:
    model = build_action_model(config)
    randomise(model, seed)
    model.eval()
    clips = make_clips(config, count, seed)
    rois = torch.tensor(boxes, dtype=torch.float32)
    state = to_release_state_dict(model.state_dict())
    report = [
        f"== {name}: clips {tuple(clips.shape)} (B, 3, T, H, W), {len(rois)} boxes; "
        f"{len(state)} state-dict entries, loaded strict=True"
    ]
    passed = True
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("float32", "float64"):
            torch_dtype = getattr(torch, dtype)
            ours = run_ours(model.to(torch_dtype), clips.to(torch_dtype), rois.to(torch_dtype))
            theirs = run_reference(python, Path(tmp), name, state, clips, rois, dtype)
            if dtype == "float32":
                report.append(f"MMAction2 model: {theirs['model']}")
                report.append(f"MMAction2: {json.dumps(theirs['versions'])}")
            lines, ok = compare(ours, theirs)
            report.append(f"{dtype}: {'PASS' if ok else 'FAIL'}")
            report.extend(lines)
            passed &= ok
    return report, passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mmaction-python", required=True, help="python of the mmaction venv")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", type=Path, default=None, help="also write the report here")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    report = [
        "SlowFast-ACRN R50 and SlowOnly R50 (MMAction2 1.2 AVA v2.1 configs): ours vs MMAction2, "
        "same random weights",
        "command: nice -n 19 uv run python "
        + shlex.join(["benchmarks/action_vs_mmaction.py", *sys.argv[1:]]),
        f"ours: {json.dumps(our_versions())}",
        "MMAction2 venv: torch==2.13.0+cpu mmaction2==1.2.0 mmdet==3.3.0 mmengine==0.10.7 "
        "mmcv-lite==2.1.0; mmcv._ext stubbed (RoIAlign: the child's transcription of mmcv's CPU "
        "kernel), mmaction's missing DRN localizer stood in for",
        f"seed {args.seed}; frames {FRAME_SIZE} (H, W); tolerance {TOLERANCE:g} on the logits",
    ]
    passed = True
    for name, config, count, boxes in RELEASES:
        lines, ok = compare_release(args.mmaction_python, name, config, count, boxes, args.seed)
        report.extend(lines)
        passed &= ok
    report.append(f"RESULT: {'PASS' if passed else 'FAIL'} (class logits <= {TOLERANCE:g})")
    text = "\n".join(report) + "\n"
    print(text, end="")
    if args.write:
        args.write.write_text(text)
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
