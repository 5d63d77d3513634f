"""The MMAction2 half of benchmarks/action_vs_mmaction.py: run by that script with the Python of
a venv that has mmaction2 1.2, mmdet 3.3, mmengine and mmcv-lite (and none of vidserve's
packages).

    python _mmaction_child.py WORKDIR

WORKDIR holds what the parent wrote: state_dict.pt (our weights in the release's names) and
inputs.pt ({'release': 'slowfast_acrn' | 'slowonly', 'clips': the normalised (B, 3, T, H, W)
clips, 'rois': (N, 5), 'dtype': 'float32' | 'float64'}). This script builds MMAction2's model
from the release config bundled with mmaction2 (mmaction/.mim/configs/...) as the reference key
lists were built: every `pretrained` key and Pretrained init_cfg removed, MODELS.build(cfg.model).
It loads the weights strictly, runs the clips through the backbone and the AVARoIHead's
_bbox_forward (no data preprocessor, no detector: the parent normalised the clips and gives the
boxes) and writes outputs.pt: the backbone's maps, the RoI extractor's features, the shared
head's output and the box head's class logits, and versions.

Two things the wheel cannot run as it ships, handled here without editing the venv:
- mmcv-lite has no compiled ops (mmcv._ext); a stand-in module whose every function raises lets
  `import mmcv.ops` succeed. The one op these models call, RoIAlign, is replaced by
  `reference_roi_align` below: mmcv's CPU kernel (roi_align_forward, avg mode) written out in
  torch, independently of torchvision (which the parent uses, and which this venv lacks).
- mmaction/models/localizers/__init__.py imports the DRN localizer, a subpackage the wheel lacks;
  an empty stand-in module is registered under that name first (DRN is unrelated to AVA).
"""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

from _mmcv_lite import stub_compiled_ops

CONFIGS = {
    "slowfast_acrn": "detection/acrn/"
    "slowfast-acrn_kinetics400-pretrained-r50_8xb8-8x8x1-cosine-10e_ava21-rgb.py",
    "slowonly": "detection/slowonly/"
    "slowonly_kinetics400-pretrained-r50_8xb16-4x16x1-20e_ava21-rgb.py",
}


def stub_missing_drn() -> None:
    """`from .drn.drn import DRN` finds an (unregistered) placeholder class."""
    package = types.ModuleType("mmaction.models.localizers.drn")
    package.__path__ = []  # type: ignore[attr-defined]
    module = types.ModuleType("mmaction.models.localizers.drn.drn")
    module.DRN = type("DRN", (), {})  # type: ignore[attr-defined]
    sys.modules[package.__name__] = package
    sys.modules[module.__name__] = module


def _bilinear(feature, ys, xs):
    """mmcv's bilinear_interpolate for every (y, x) pair of the grids ys (P,) x xs (Q,) on one
    (C, H, W) map: zero outside [-1, size]; clamped to 0 below; the last row or column
    repeated past size - 1. Returns (C, P, Q)."""
    import torch

    height, width = feature.shape[-2:]
    y_out = (ys < -1.0) | (ys > height)
    x_out = (xs < -1.0) | (xs > width)
    ys, xs = ys.clamp(min=0), xs.clamp(min=0)
    y_low = ys.floor().long().clamp(max=height - 1)
    x_low = xs.floor().long().clamp(max=width - 1)
    ys = torch.where(y_low >= height - 1, y_low.to(ys.dtype), ys)
    xs = torch.where(x_low >= width - 1, x_low.to(xs.dtype), xs)
    y_high = (y_low + 1).clamp(max=height - 1)
    x_high = (x_low + 1).clamp(max=width - 1)
    ly, lx = ys - y_low, xs - x_low
    hy, hx = 1 - ly, 1 - lx

    def at(rows, cols):
        return feature[:, rows][:, :, cols]

    value = (
        hy[:, None] * hx[None] * at(y_low, x_low)
        + hy[:, None] * lx[None] * at(y_low, x_high)
        + ly[:, None] * hx[None] * at(y_high, x_low)
        + ly[:, None] * lx[None] * at(y_high, x_high)
    )
    inside = ~(y_out[:, None] | x_out[None])
    return value * inside


def reference_roi_align(
    features, rois, output_size, spatial_scale=1.0, sampling_ratio=0, pool_mode="avg", aligned=True
):
    """mmcv's roi_align_forward (CPU), avg mode: per RoI, bins of size roi / output, each the
    mean of a grid of bilinear samples (sampling_ratio per side, or ceil(bin size) when 0)."""
    import torch

    if pool_mode != "avg":
        raise ValueError(
            f"pool_mode {pool_mode!r}: the AVA configs pool by avg, the only mode transcribed"
        )
    out_h, out_w = output_size if isinstance(output_size, tuple) else (output_size,) * 2
    offset = 0.5 if aligned else 0.0
    pooled = []
    for roi in rois:
        index = int(roi[0])
        x1, y1, x2, y2 = (float(v) * spatial_scale - offset for v in roi[1:])
        width, height = x2 - x1, y2 - y1
        if not aligned:
            width, height = max(width, 1.0), max(height, 1.0)
        bin_h, bin_w = height / out_h, width / out_w
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(height / out_h)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(width / out_w)
        count = max(grid_h * grid_w, 1)
        dtype = features.dtype
        ys = torch.tensor(
            [
                y1 + p * bin_h + (i + 0.5) * bin_h / grid_h
                for p in range(out_h)
                for i in range(grid_h)
            ],
            dtype=dtype,
        )
        xs = torch.tensor(
            [
                x1 + p * bin_w + (i + 0.5) * bin_w / grid_w
                for p in range(out_w)
                for i in range(grid_w)
            ],
            dtype=dtype,
        )
        samples = _bilinear(features[index], ys, xs)  # (C, out_h * grid_h, out_w * grid_w)
        channels = samples.shape[0]
        samples = samples.reshape(channels, out_h, grid_h, out_w, grid_w)
        pooled.append(samples.sum(dim=(2, 4)) / count)
    return torch.stack(pooled)


def use_reference_roi_align() -> None:
    """RoIAlign.forward calls the module-level roi_align of mmcv.ops.roi_align: point it here."""
    sys.modules["mmcv.ops.roi_align"].roi_align = reference_roi_align


def build_reference(release: str):
    import mmaction
    from mmaction.registry import MODELS
    from mmaction.utils import register_all_modules
    from mmengine.config import Config

    register_all_modules()
    config_path = Path(mmaction.__file__).parent / ".mim" / "configs" / CONFIGS[release]
    cfg = Config.fromfile(str(config_path))
    cfg.model.init_cfg = None  # the Kinetics-pretrained backbone: weights come from the parent
    drop_pretrained(cfg.model)
    return MODELS.build(cfg.model), str(config_path.relative_to(Path(mmaction.__file__).parent))


def drop_pretrained(node) -> None:
    """Every `pretrained` key of the model config gone (none downloads anything)."""
    if isinstance(node, dict):
        node.pop("pretrained", None)
        for value in node.values():
            drop_pretrained(value)


def run(workdir: Path) -> None:
    import mmaction
    import mmcv
    import mmdet
    import mmengine
    import torch

    torch.manual_seed(0)
    inputs = torch.load(workdir / "inputs.pt", weights_only=True)
    model, config_path = build_reference(inputs["release"])
    state = torch.load(workdir / "state_dict.pt", weights_only=True)
    model.load_state_dict(state, strict=True)
    dtype = {"float32": torch.float32, "float64": torch.float64}[inputs["dtype"]]
    model = model.to(dtype).eval()
    clips, rois = inputs["clips"].to(dtype), inputs["rois"].to(dtype)

    captured = capture_intermediates(model.roi_head)
    with torch.no_grad():
        features = model.extract_feat(clips)
        result = model.roi_head._bbox_forward(features, rois, [{} for _ in range(len(clips))])
    features = features if isinstance(features, tuple) else (features,)
    torch.save(
        {
            "backbone": list(features),
            **captured,
            "bbox_feats": result["bbox_feats"],
            "logits": result["cls_score"],
            "model": f"{type(model).__name__}({type(model.backbone).__name__}, "
            f"{type(model.roi_head).__name__})",
            "versions": {
                "python": sys.version.split()[0],
                "torch": torch.__version__,
                "mmaction2": mmaction.__version__,
                "mmdet": mmdet.__version__,
                "mmengine": mmengine.__version__,
                "mmcv": mmcv.__version__,
                "config": config_path,
            },
        },
        workdir / "outputs.pt",
    )


def capture_intermediates(roi_head) -> dict:
    """The RoI extractor's output (RoI features, pooled context), to place a disagreement."""
    captured: dict = {}

    def keep_extractor(module, args, output):
        captured["roi_features"], captured["context"] = (t.clone() for t in output)

    roi_head.bbox_roi_extractor.register_forward_hook(keep_extractor)
    return captured


if __name__ == "__main__":
    stub_compiled_ops()
    stub_missing_drn()
    import mmcv.ops  # noqa: F401  (loads mmcv.ops.roi_align, patched next)

    use_reference_roi_align()
    run(Path(sys.argv[1]))
