r"""Our MaskFormer against MMDetection 3.3's, with the same random weights on the same images:
every decoder layer's class and mask logits must agree to 1e-4 (max abs diff).

    uv run python benchmarks/maskformer_vs_mmdet.py --mmdet-python /work/mmdet-venv/bin/python \
        [--seed 0] [--write benchmarks/maskformer_vs_mmdet.txt]

The MMDetection side runs in a venv of its own as a child process,
benchmarks/_mmdet_maskformer_child.py, so neither environment needs the other's packages:

    uv venv -p 3.11 /work/mmdet-venv
    VIRTUAL_ENV=/work/mmdet-venv uv pip install torch==2.13.0+cpu mmengine==0.10.7 \
        mmcv-lite==2.1.0 mmdet==3.3.0 scipy shapely pycocotools terminaltables

(a CPU torch wheel; mmcv-lite has no compiled ops: the child stubs mmcv._ext so that `import
mmcv.ops` works, and MaskFormer calls none of them). Both build the release configuration (our
PanopticConfig() defaults; MMDetection's maskformer_r50_ms-16xb1-75e_coco.py). This script:

1. builds ours, then draws every parameter and every batch-norm buffer at random (seeded), so
   no norm is the identity and no bias is zero, and writes to_release_state_dict() of it;
2. prepares one batch of two seeded random frames of different sizes with our preprocessing
   (the release's normalisation, zero padding to the larger image without rounding up), so the
   smaller image's padding is masked in the attention and no side is a multiple of 32;
3. has the child load that state dict strictly into MMDetection's model and run the same tensor
   through its backbone and MaskFormerHead.forward (data preprocessor skipped; batch_input_shape
   and img_shape given as our batch has them);
4. compares the padding mask and its sine encoding, the backbone's four maps, the pixel
   decoder's mask features and memory, and each layer's class and mask logits, in float32 and
   again with both models in float64 (where only the architecture can differ, not rounding).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.common.image import normalize, pad_batch, to_float_image  # noqa: E402
from models.panoptic.config import PanopticConfig  # noqa: E402
from models.panoptic.mmdet_weights import to_release_state_dict  # noqa: E402
from models.panoptic.model import (  # noqa: E402
    MaskFormer,
    build_maskformer,
    padding_mask,
    sine_positions,
)

SCRIPT = "benchmarks/maskformer_vs_mmdet.py"
CHILD = Path(__file__).resolve().parent / "_mmdet_maskformer_child.py"
TOLERANCE = 1e-4
# Two frames (H, W) of different sizes, no side a multiple of 32, batched without resizing: the
# second's padding covers whole cells of the stride-32 grid (rows 6-7, columns 9-10 of 8 x 11),
# so the attention's padding masks are exercised, not only the padded pixels.
FRAME_SIZES = ((250, 330), (180, 250))


def randomise(model: nn.Module, seed: int) -> None:
    """Every parameter and batch-norm statistic drawn at random, moderate in scale: weights
    normal with std 1 / sqrt(fan in) (activations stay of order 1, so float32 rounding is
    relative to values near 1), norm scales and running variances in [0.5, 1.5], biases and
    running means small but non-zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            if name.endswith("num_batches_tracked"):
                continue
            if tensor.dim() > 1:  # conv, linear, attention projections, query embedding
                fan_in = tensor[0].numel()
                drawn = torch.randn(tensor.shape, generator=generator) / fan_in**0.5
            elif name.endswith(("running_var", "weight")):  # norm scales (1-d weights)
                drawn = 0.5 + torch.rand(tensor.shape, generator=generator)
            else:  # biases and running means
                drawn = 0.1 * torch.randn(tensor.shape, generator=generator)
            tensor.copy_(drawn)


def smooth_frame(height: int, width: int, generator: torch.Generator) -> Tensor:
    """A uint8 RGB frame (H, W, 3) of blurred colour noise: structure at several scales."""
    coarse = torch.rand((1, 3, height // 16, width // 16), generator=generator)
    fine = torch.rand((1, 3, height, width), generator=generator)
    smooth = nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")
    image = (0.8 * smooth + 0.2 * fine)[0].permute(1, 2, 0)
    return (image * 255).round().to(torch.uint8)


def make_batch(config: PanopticConfig, seed: int) -> tuple[Tensor, list[tuple[int, int]]]:
    """The normalised batch (our preprocessing: the release's mean and std, zero padding after
    normalisation at the bottom and right, to the larger image's size) and the image sizes."""
    generator = torch.Generator().manual_seed(seed + 1)
    frames = [smooth_frame(h, w, generator) for h, w in FRAME_SIZES]
    images = [normalize(to_float_image(f), config.image_mean, config.image_std) for f in frames]
    return pad_batch(images, config.size_divisible), [tuple(image.shape[-2:]) for image in images]


def run_ours(model: MaskFormer, images: Tensor, image_sizes: list[tuple[int, int]]) -> dict:
    """Our logits and the same intermediates the child captures from MMDetection's model."""
    captured: dict = {}

    def keep_pixel_decoder(module, args, output):
        captured["mask_features"], captured["memory"] = (t.clone() for t in output)

    handle = model.panoptic_head.pixel_decoder.register_forward_hook(keep_pixel_decoder)
    try:
        with torch.no_grad():
            features = list(model.backbone(images).values())
            output = model(images, image_sizes)
    finally:
        handle.remove()
    mask = padding_mask(
        images.shape[0],
        tuple(images.shape[-2:]),
        image_sizes,
        tuple(features[-1].shape[-2:]),
        images.device,
    )
    return {
        "layer_class_logits": output.layer_class_logits,
        "layer_mask_logits": output.layer_mask_logits,
        "backbone": features,
        "padding_mask": mask,
        "positions": sine_positions(mask, model.config.hidden_dim),
        **captured,
    }


def run_reference(
    mmdet_python: str, workdir: Path, state: dict, images: Tensor, sizes: list, dtype: str
) -> dict:
    torch.save(state, workdir / "state_dict.pt")
    torch.save({"images": images, "image_sizes": sizes, "dtype": dtype}, workdir / "inputs.pt")
    subprocess.run([mmdet_python, str(CHILD), str(workdir)], check=True)
    return torch.load(workdir / "outputs.pt", weights_only=False)


def max_diff(ours: Tensor, theirs: Tensor) -> float:
    if ours.shape != theirs.shape:
        raise ValueError(f"shapes differ: ours {tuple(ours.shape)}, MMDetection's {theirs.shape}")
    if ours.dtype == torch.bool:
        return float((ours != theirs).sum())
    return float((ours.double() - theirs.double()).abs().max())


def compare(ours: dict, theirs: dict) -> tuple[list[str], bool]:
    """Report lines and whether every layer's logits are within TOLERANCE."""
    rows: list[tuple[str, Tensor, Tensor]] = [
        ("padding mask stride 32 (padded / differ)", ours["padding_mask"], theirs["padding_mask"]),
        ("decoder positions", ours["positions"], theirs["positions"]),
    ]
    for level, (a, b) in enumerate(zip(ours["backbone"], theirs["backbone"], strict=True)):
        rows.append((f"backbone res{level + 2}", a, b))
    rows.append(("pixel decoder memory", ours["memory"], theirs["memory"]))
    rows.append(("pixel decoder mask features", ours["mask_features"], theirs["mask_features"]))
    checked = []
    for kind in ("class", "mask"):
        key = f"layer_{kind}_logits"
        for layer, (a, b) in enumerate(zip(ours[key], theirs[key], strict=True)):
            checked.append(len(rows))
            rows.append((f"layer {layer} {kind} logits", a, b))
    lines = [f"  {'tensor':<42} {'shape':<24} {'max |ref|':>10} {'max abs diff':>13}"]
    passed = True
    for index, (label, a, b) in enumerate(rows):
        diff = max_diff(a, b)
        scale = float(b.double().abs().max()) if b.dtype != torch.bool else float(b.sum())
        mark = ""
        if index in checked:
            ok = diff <= TOLERANCE
            passed &= ok
            mark = "  ok" if ok else "  OVER"
        shape = "x".join(str(s) for s in b.shape)
        lines.append(f"  {label:<42} {shape:<24} {scale:>10.4g} {diff:>13.3e}{mark}")
    return lines, passed


def our_versions() -> dict:
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "commit": commit,
    }  # dirty: this script not yet committed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mmdet-python", required=True, help="python of the mmdet venv")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", type=Path, default=None, help="also write the report here")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = PanopticConfig()
    model = build_maskformer(config)
    randomise(model, args.seed)
    model.eval()
    images, sizes = make_batch(config, args.seed)
    state = to_release_state_dict(model.state_dict())

    report = [
        "MaskFormer R50 (MMDetection maskformer_r50_ms-16xb1-75e_coco): ours vs MMDetection, "
        "same random weights",
        "command: uv run python "
        + shlex.join(["benchmarks/maskformer_vs_mmdet.py", *sys.argv[1:]]),
        f"ours: {json.dumps(our_versions())}",
        "MMDetection venv: torch==2.13.0+cpu mmengine==0.10.7 mmcv-lite==2.1.0 mmdet==3.3.0 "
        "(+ scipy shapely pycocotools terminaltables); mmcv._ext stubbed, no op of it called",
    ]
    report.append(
        f"batch: {len(sizes)} seeded random frames {sizes} (H, W), padded to "
        f"{tuple(images.shape[-2:])}; seed {args.seed}; {len(state)} state-dict entries, "
        f"loaded strict=True; tolerance {TOLERANCE:g}"
    )
    passed = True
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("float32", "float64"):
            torch_dtype = getattr(torch, dtype)
            ours = run_ours(model.to(torch_dtype), images.to(torch_dtype), sizes)
            theirs = run_reference(
                args.mmdet_python,
                Path(tmp),
                state,
                images,
                sizes,
                dtype,
            )
            if dtype == "float32":
                report.append(f"MMDetection: {json.dumps(theirs['versions'])}")
                report.append(f"MMDetection metainfo: {theirs['metainfo']}")
            lines, ok = compare(ours, theirs)
            report.append(f"{dtype}: {'PASS' if ok else 'FAIL'}")
            report.extend(lines)
            passed &= ok
    report.append(f"RESULT: {'PASS' if passed else 'FAIL'} (every layer's logits <= {TOLERANCE:g})")
    text = "\n".join(report) + "\n"
    print(text, end="")
    if args.write:
        args.write.write_text(text)
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
