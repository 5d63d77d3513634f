"""The MMDetection half of benchmarks/maskformer_vs_mmdet.py: run by that script with the Python
of a venv that has mmdet 3.3, mmengine and mmcv-lite (and none of vidserve's packages).

    python _mmdet_maskformer_child.py WORKDIR

WORKDIR holds what the parent wrote: state_dict.pt (our weights in the release's names),
inputs.pt ({'images': the normalised padded batch, 'image_sizes': [(h, w), ...],
'dtype': 'float32' | 'float64'}). This script builds MMDetection's MaskFormer from the release
config bundled with mmdet (mmdet/.mim/configs/maskformer/maskformer_r50_ms-16xb1-75e_coco.py),
as the reference key list was built: init_cfg Pretrained removed, MODELS.build(cfg.model). It
loads the weights strictly, runs the batch through backbone and MaskFormerHead.forward (no data
preprocessor: the parent normalised and padded it) and writes outputs.pt: every decoder layer's
class and mask logits, the intermediate tensors the parent compares too, and versions.
"""

from __future__ import annotations

import sys
from pathlib import Path

from _mmcv_lite import stub_compiled_ops

CONFIG = "maskformer/maskformer_r50_ms-16xb1-75e_coco.py"


def build_reference():
    import mmdet
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    register_all_modules()
    config_path = Path(mmdet.__file__).parent / ".mim" / "configs" / CONFIG
    cfg = Config.fromfile(str(config_path))
    cfg.model.backbone.init_cfg = None  # no torchvision download; weights come from the parent
    return MODELS.build(cfg.model), str(config_path.relative_to(Path(mmdet.__file__).parent))


def run(workdir: Path) -> None:
    import mmcv
    import mmdet
    import mmengine
    import torch
    from mmdet.structures import DetDataSample

    torch.manual_seed(0)
    model, config_path = build_reference()
    state = torch.load(workdir / "state_dict.pt", weights_only=True)
    model.load_state_dict(state, strict=True)
    inputs = torch.load(workdir / "inputs.pt", weights_only=True)
    dtype = {"float32": torch.float32, "float64": torch.float64}[inputs["dtype"]]
    model = model.to(dtype).eval()
    images = inputs["images"].to(dtype)
    batch_input_shape = tuple(images.shape[-2:])
    samples = []
    for height, width in inputs["image_sizes"]:
        sample = DetDataSample()
        sample.set_metainfo(
            {
                "batch_input_shape": batch_input_shape,
                "img_shape": (height, width),
                "pad_shape": batch_input_shape,
                "ori_shape": (height, width),
                "scale_factor": (1.0, 1.0),
            }
        )
        samples.append(sample)

    captured = capture_intermediates(model.panoptic_head)
    with torch.no_grad():
        features = model.extract_feat(images)
        all_cls_scores, all_mask_preds = model.panoptic_head(features, samples)
    torch.save(
        {
            "layer_class_logits": all_cls_scores,
            "layer_mask_logits": all_mask_preds,
            "backbone": list(features),
            **captured,
            "metainfo": [sample.metainfo for sample in samples],
            "versions": {
                "python": sys.version.split()[0],
                "torch": torch.__version__,
                "mmdet": mmdet.__version__,
                "mmengine": mmengine.__version__,
                "mmcv": mmcv.__version__,
                "config": config_path,
            },
        },
        workdir / "outputs.pt",
    )


def capture_intermediates(head) -> dict:
    """Hooks that keep the head's padding mask (what its decoder_pe encodes), that encoding, and
    the pixel decoder's mask features and memory, so a disagreement can be placed."""
    captured: dict = {}

    def keep_mask(module, args):
        captured["padding_mask"] = args[0].clone()

    def keep_positions(module, args, output):
        captured["positions"] = output.clone()

    def keep_pixel_decoder(module, args, output):
        captured["mask_features"], captured["memory"] = (t.clone() for t in output)

    head.decoder_pe.register_forward_pre_hook(keep_mask)
    head.decoder_pe.register_forward_hook(keep_positions)
    head.pixel_decoder.register_forward_hook(keep_pixel_decoder)
    return captured


if __name__ == "__main__":
    stub_compiled_ops()
    run(Path(sys.argv[1]))
