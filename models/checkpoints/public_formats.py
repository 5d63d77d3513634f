"""The published checkpoints `vidserve checkpoints import` recognises, by their keys and shapes.

Each format says which family it becomes, under which default name it is served, which entry
names a file of it holds (for detection: the nearest format is the one sharing the most names),
and how its state dict converts into ours:

- torchvision's COCO Mask R-CNN (MaskRCNN_ResNet50_FPN_Weights.COCO_V1): the detector as it is
  (models.vis.torchvision_weights), cut to the 80 COCO categories (torchvision's 91 outputs
  include the background and 10 "N/A" ids no image is labelled with); no track head in the file,
  so it is initialised at random and the tracked model needs training to track by appearance.
- the official STCN file (hkchengrex/STCN stcn.pth): models.vos.checkpoint; class-agnostic, every
  object is DAVIS's "object".
- MMTracking's MaskTrack R-CNN for YouTube-VIS 2019: models.vis.mmtracking_weights, detector and
  track head, 40 YouTube-VIS classes.
- the Cascade Mask R-CNN Swin-B COCO release (Swin-Transformer-Object-Detection):
  models.instance.swin_weights, the whole detector, COCO's 80 classes.
- MaskFormer R50 for COCO panoptic, MMDetection's release (our names) and the official
  detectron2-named file: models.panoptic.mmdet_weights, COCO panoptic's 80 things then 53 stuff.

Family packages are imported when a format is used, so that reading this module costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from models.checkpoints.checkpoint import describe_mismatch
from models.checkpoints.errors import CheckpointError

BATCH_COUNT_SUFFIX = "num_batches_tracked"
VOS_OBJECT_CLASS = "object"  # DAVIS-style: an object is whatever its prompt marks


@dataclass
class Converted:
    """A published state dict in our layout, with what the manifest needs."""

    state: dict[str, Tensor]
    architecture: dict[str, Any]
    class_names: list[str]
    # Submodules the file has no weights for: initialised at random when the entry is written.
    initialised: tuple[str, ...] = ()
    notes: dict[str, Any] = field(default_factory=dict)


# convert(state, file meta (the mmcv 'meta' dict or {}), path) -> Converted
Converter = Callable[[dict[str, Tensor], Mapping[str, Any], Path], Converted]


@dataclass(frozen=True)
class PublicFormat:
    key: str  # short identifier, printed in summaries and recorded in the manifest
    title: str
    family: str
    default_name: str  # the store name, i.e. the served model's name
    dataset_fingerprint: str
    expected_keys: Callable[[], frozenset[str]]  # the names a file of this format holds
    convert: Converter
    # A file's entry name as this format's expected_keys spell it (prefixes, legacy names).
    normalise: Callable[[str], str] = lambda name: name
    # Entries a file of this format may leave out (compared without them).
    optional: Callable[[str], bool] = lambda name: False


# ---- torchvision COCO Mask R-CNN ------------------------------------------------------------

COCO_UNUSED_ID = "N/A"


def _torchvision_name(name: str) -> str:
    from models.vis.torchvision_weights import current_name

    return current_name(name)


@cache
def _torchvision_keys() -> frozenset[str]:
    from models.vis.torchvision_weights import TRACK_HEAD_PREFIX

    shapes = _vis_reference_shapes(_coco_architecture(90))
    return frozenset(name for name in shapes if not name.startswith(TRACK_HEAD_PREFIX))


def _coco_architecture(num_classes: int) -> dict[str, Any]:
    from models.vis.config import VisConfig

    # torchvision trained its COCO_V1 Mask R-CNN with batch-norm epsilon 0 (its own loader sets
    # it); the other settings are the VIS reference's test settings (640x360, as masktrack).
    return VisConfig(
        backbone="resnet50_fpn", num_classes=num_classes, backbone_bn_eps=0.0
    ).to_dict()


def coco_kept_labels() -> list[int]:
    """torchvision's COCO output indices worth keeping: background (0) and the 80 categories,
    without the 10 unused ids ("N/A") in between."""
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

    categories = MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    return [0] + [index for index, name in enumerate(categories) if index and name != "N/A"]


def coco_80_class_names() -> list[str]:
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

    categories = MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    return [categories[index] for index in coco_kept_labels()[1:]]


def keep_class_rows(state: dict[str, Tensor], kept: list[int]) -> dict[str, Tensor]:
    """torchvision's class-indexed outputs (classifier rows, 4 box deltas a class, a mask
    channel a class) cut to the classes `kept`, in that order."""
    rows = torch.tensor(kept)
    box_rows = (rows[:, None] * 4 + torch.arange(4)).flatten()
    selected = {
        "roi_heads.box_predictor.cls_score.": rows,
        "roi_heads.box_predictor.bbox_pred.": box_rows,
        "roi_heads.mask_predictor.mask_fcn_logits.": rows,
    }
    result = dict(state)
    for prefix, index in selected.items():
        for suffix in ("weight", "bias"):
            result[prefix + suffix] = state[prefix + suffix].index_select(0, index)
    return result


def convert_torchvision_coco(
    state: dict[str, Tensor], meta: Mapping[str, Any], path: Path
) -> Converted:
    from models.vis.torchvision_weights import CLASSIFIER_KEY, TRACK_HEAD_PREFIX

    renamed = {_torchvision_name(name): tensor for name, tensor in state.items()}
    outputs = renamed.get(CLASSIFIER_KEY)
    if outputs is None or outputs.shape[0] != 91:
        found = "none" if outputs is None else str(outputs.shape[0])
        raise CheckpointError(
            path,
            f"{CLASSIFIER_KEY} has {found} rows; torchvision's COCO Mask R-CNN has 91 "
            "(background + 90 COCO ids)",
        )
    converted = keep_class_rows(renamed, coco_kept_labels())
    architecture = _coco_architecture(80)
    reference = {
        name: shape
        for name, shape in _vis_reference_shapes(architecture).items()
        if not name.startswith(TRACK_HEAD_PREFIX)
    }
    _fill_batch_counts(converted, reference)
    _raise_on_mismatch(converted, reference, path, "torchvision Mask R-CNN")
    return Converted(
        converted,
        architecture,
        coco_80_class_names(),
        initialised=(TRACK_HEAD_PREFIX.rstrip("."),),
        notes={"track_head": "random initialisation (not in the file)"},
    )


# ---- STCN -----------------------------------------------------------------------------------


def _strip_data_parallel(name: str) -> str:
    from models.vos.checkpoint import DATA_PARALLEL_PREFIX

    return name.removeprefix(DATA_PARALLEL_PREFIX)


@cache
def _stcn_reference() -> dict[str, Tensor]:
    from models.vos.config import VosConfig
    from models.vos.network import STCN

    with torch.device("meta"):
        return STCN(VosConfig()).state_dict()


def _stcn_keys() -> frozenset[str]:
    return frozenset(_stcn_reference())


def convert_stcn(state: dict[str, Tensor], meta: Mapping[str, Any], path: Path) -> Converted:
    from models.vos.checkpoint import StateDictMismatchError, convert_official_state_dict
    from models.vos.config import VosConfig

    reference = _stcn_reference()
    try:
        converted = convert_official_state_dict(state, reference)
    except StateDictMismatchError as error:
        raise CheckpointError(path, str(error)) from None
    return Converted(converted, VosConfig().to_dict(), [VOS_OBJECT_CLASS])


# ---- MMTracking MaskTrack R-CNN -------------------------------------------------------------


def _mmtracking_keys() -> frozenset[str]:
    from models.vis.mmtracking_weights import expected_mmtracking_keys

    return frozenset(expected_mmtracking_keys())


def convert_mmtracking(state: dict[str, Tensor], meta: Mapping[str, Any], path: Path) -> Converted:
    from models.vis.mmtracking_weights import CLASSIFIER, convert_mmtracking_masktrack

    classes = _classes_from_meta(meta)
    classifier = state.get(f"{CLASSIFIER}.weight")
    if classes and (classifier is None or len(classes) != classifier.shape[0] - 1):
        classes = None  # not this classifier's: the dataset's own names apply
    converted, architecture, classes = convert_mmtracking_masktrack(state, classes, path)
    return Converted(converted, architecture, classes)


def _classes_from_meta(meta: Mapping[str, Any]) -> list[str] | None:
    """The class names an mmcv checkpoint records (meta['CLASSES']), when it does."""
    names = meta.get("CLASSES") if isinstance(meta, Mapping) else None
    if isinstance(names, list | tuple) and names and all(isinstance(n, str) for n in names):
        return list(names)
    return None


# ---- Cascade Mask R-CNN Swin-B (Swin-Transformer-Object-Detection) -------------------------


@cache
def _cascade_swin_keys() -> frozenset[str]:
    from models.instance.swin_weights import expected_release_keys

    return expected_release_keys()


def convert_cascade_swin(
    state: dict[str, Tensor], meta: Mapping[str, Any], path: Path
) -> Converted:
    from models.instance.swin_weights import (
        RELEASE_CLASSES,
        convert_release_state_dict,
        release_architecture,
    )

    classes = _classes_from_meta(meta)
    if not classes or len(classes) != RELEASE_CLASSES:
        classes = coco_80_class_names()  # the same 80 COCO categories, in the same order
    converted = convert_release_state_dict(state, source=path)
    return Converted(converted, release_architecture().to_dict(), classes)


# ---- MaskFormer R50, COCO panoptic (MMDetection's release and the official detectron2 file) -----
# COCO panoptic's 53 stuff categories in MMDetection's order (CocoPanopticDataset.METAINFO, after
# the 80 things), which is the order of the release's class logits.
COCO_PANOPTIC_STUFF = (
    "banner", "blanket", "bridge", "cardboard", "counter", "curtain", "door-stuff", "floor-wood",
    "flower", "fruit", "gravel", "house", "light", "mirror-stuff", "net", "pillow", "platform",
    "playingfield", "railroad", "river", "road", "roof", "sand", "sea", "shelf", "snow", "stairs",
    "tent", "towel", "wall-brick", "wall-stone", "wall-tile", "wall-wood", "water-other",
    "window-blind", "window-other", "tree-merged", "fence-merged", "ceiling-merged",
    "sky-other-merged", "cabinet-merged", "table-merged", "floor-other-merged", "pavement-merged",
    "mountain-merged", "grass-merged", "dirt-merged", "paper-merged", "food-other-merged",
    "building-other-merged", "rock-merged", "wall-other-merged", "rug-merged",
)  # fmt: skip


@cache
def _maskformer_keys() -> frozenset[str]:
    from models.panoptic.mmdet_weights import reference_shapes

    return frozenset(reference_shapes())


def _detectron2_maskformer_name(name: str) -> str:
    from models.panoptic.mmdet_weights import detectron2_to_our_name

    try:
        return detectron2_to_our_name(name)
    except KeyError:
        # Not a detectron2 name (an MMDetection file's, say): it must not count as ours.
        return f"(not detectron2) {name}"


def _coco_panoptic_classes(meta: Mapping[str, Any]) -> list[str]:
    from models.panoptic.mmdet_weights import release_architecture

    classes = _classes_from_meta(meta)
    if classes and len(classes) == release_architecture().num_classes:
        return classes
    return coco_80_class_names() + list(COCO_PANOPTIC_STUFF)


def _maskformer_converter(converter_name: str) -> Converter:
    """The import of one of the MaskFormer files: models.panoptic.mmdet_weights' converter of
    that name, the release's architecture, COCO panoptic's classes."""

    def convert(state: dict[str, Tensor], meta: Mapping[str, Any], path: Path) -> Converted:
        from models.panoptic import mmdet_weights

        converted = getattr(mmdet_weights, converter_name)(state, source=path)
        architecture = mmdet_weights.release_architecture().to_dict()
        return Converted(converted, architecture, _coco_panoptic_classes(meta))

    return convert


# ---- shared ---------------------------------------------------------------------------------


def _vis_reference_shapes(architecture: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    from models.vis.model import build_masktrack_rcnn

    with torch.device("meta"):
        model = build_masktrack_rcnn(architecture)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def _fill_batch_counts(state: dict[str, Tensor], reference: Mapping[str, tuple]) -> None:
    """Files saved from FrozenBatchNorm2d models have no num_batches_tracked; the counter only
    matters for momentum-free training."""
    for name in reference:
        if name.endswith(BATCH_COUNT_SUFFIX) and name not in state:
            state[name] = torch.zeros((), dtype=torch.int64)


def _raise_on_mismatch(
    state: Mapping[str, Tensor], reference: Mapping[str, tuple], path: Path, what: str
) -> None:
    problems = describe_mismatch({n: tuple(t.shape) for n, t in state.items()}, dict(reference))
    if problems:
        raise CheckpointError(path, f"not a {what} state dict: {problems}")


FORMATS: tuple[PublicFormat, ...] = (
    PublicFormat(
        key="torchvision-maskrcnn-coco",
        title="torchvision Mask R-CNN ResNet-50-FPN, COCO (MaskRCNN_ResNet50_FPN_Weights.COCO_V1)",
        family="vis",
        default_name="maskrcnn-coco",
        dataset_fingerprint="torchvision:maskrcnn_resnet50_fpn:COCO_V1",
        expected_keys=_torchvision_keys,
        convert=convert_torchvision_coco,
        normalise=_torchvision_name,
        optional=lambda name: name.endswith(BATCH_COUNT_SUFFIX),
    ),
    PublicFormat(
        key="stcn",
        title="STCN, official weights (hkchengrex/STCN stcn.pth)",
        family="vos",
        default_name="stcn",
        dataset_fingerprint="hkchengrex/STCN:stcn.pth",
        expected_keys=_stcn_keys,
        convert=convert_stcn,
        normalise=_strip_data_parallel,
        optional=lambda name: name.endswith(BATCH_COUNT_SUFFIX),
    ),
    PublicFormat(
        key="mmtracking-masktrack-rcnn",
        title="MMTracking MaskTrack R-CNN R50-FPN, YouTube-VIS 2019",
        family="vis",
        default_name="masktrack",
        dataset_fingerprint="mmtracking:masktrack_rcnn_r50_fpn_12e_youtubevis2019",
        expected_keys=_mmtracking_keys,
        convert=convert_mmtracking,
    ),
    PublicFormat(
        key="cascade-mask-rcnn-swin-b-coco",
        title="Cascade Mask R-CNN Swin-B, COCO (Swin-Transformer-Object-Detection, 3x, 4conv1f)",
        family="instance",
        default_name="cascade-swin-b",
        dataset_fingerprint=(
            "swin-transformer-object-detection:cascade_mask_rcnn_swin_base_patch4_window7:coco"
        ),
        expected_keys=_cascade_swin_keys,
        convert=convert_cascade_swin,
    ),
    PublicFormat(
        key="mmdet-maskformer-r50-coco-panoptic",
        title="MaskFormer R50, COCO panoptic (MMDetection maskformer_r50_ms-16xb1-75e_coco)",
        family="panoptic",
        default_name="maskformer-coco",
        dataset_fingerprint="mmdetection:maskformer_r50_ms-16xb1-75e_coco",
        expected_keys=_maskformer_keys,
        convert=_maskformer_converter("convert_release_state_dict"),
    ),
    PublicFormat(
        key="maskformer-r50-coco-panoptic-d2",
        title="MaskFormer R50, COCO panoptic (facebookresearch/MaskFormer, detectron2 names)",
        family="panoptic",
        default_name="maskformer-coco",
        dataset_fingerprint="facebookresearch/MaskFormer:maskformer_panoptic_R50_bs64_554k",
        expected_keys=_maskformer_keys,
        convert=_maskformer_converter("convert_detectron2_state_dict"),
        normalise=_detectron2_maskformer_name,
        optional=lambda name: name.endswith(BATCH_COUNT_SUFFIX),
    ),
)
