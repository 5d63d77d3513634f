"""MaskFormer (models.panoptic): the matcher and the set loss against hand-computed cases, the
release's state dict (MMDetection's names and shapes, and the official detectron2 file's)
loading key for key, the small model's output shapes, and panoptic inference: no overlap, stuff
queries of one class merged, thing queries under the thresholds dropped."""

import math
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from models.checkpoints import CheckpointError
from models.checkpoints.importing import detect_format
from models.panoptic import MaskFormer, PanopticConfig, build_maskformer
from models.panoptic.inference import (
    InferenceSettings,
    panoptic_inference,
    probe_maskformer,
    segment_frames,
)
from models.panoptic.loss import MaskFormerLoss, PanopticTarget, total_loss
from models.panoptic.matcher import HungarianMatcher, class_cost, dice_cost, focal_cost
from models.panoptic.mmdet_weights import (
    convert_detectron2_state_dict,
    convert_release_state_dict,
    load_release_state_dict,
    to_release_state_dict,
)
from models.panoptic.model import MaskFormerOutput
from tests.vis.mmtracking_fixtures import parse_key_list, stated_parameter_count

KEY_FILE = "maskformer_r50_panoptic_coco_checkpoint_keys.txt"
# A copy of the list in the shared reference folder, so that CI never needs that folder.
KEY_LIST = Path(__file__).parent / "data" / KEY_FILE
SHARED_KEY_LIST = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / KEY_FILE
D2_PREFIX = "#d2 "
_D2_LINE = re.compile(r"^(\S+) \(([\d, ]*)\) (\w+)( \[buffer\])?$")


def log_probs(*probs: float) -> list[float]:
    """Logits whose softmax is `probs`."""
    return [math.log(p) for p in probs]


# ---- the matcher ------------------------------------------------------------------------------
def focal_positive(p: float, alpha: float = 0.25, gamma: float = 2.0) -> float:
    return -math.log(p) * alpha * (1 - p) ** gamma


def focal_negative(p: float, alpha: float = 0.25, gamma: float = 2.0) -> float:
    return -math.log(1 - p) * (1 - alpha) * p**gamma


def test_cost_matrix_of_two_queries_and_two_segments_is_the_hand_computed_one():
    # Two pixels. Query 0 says 0.5 on both; query 1 says 0.75 on the first, 0.25 on the second.
    # Segment 0 is the first pixel (class 0), segment 1 the second (class 1).
    class_logits = torch.tensor([log_probs(0.25, 0.5, 0.25), log_probs(0.6, 0.2, 0.2)])
    mask_logits = torch.tensor([[[0.0, 0.0]], [[math.log(3), -math.log(3)]]])
    labels = torch.tensor([0, 1])
    masks = torch.tensor([[[1, 0]], [[0, 1]]])

    expected_class = [[-0.25, -0.5], [-0.6, -0.2]]
    half = (focal_positive(0.5) + focal_negative(0.5)) / 2
    expected_focal = [
        [half, half],
        [
            (focal_positive(0.75) + focal_negative(0.25)) / 2,
            (focal_negative(0.75) + focal_positive(0.25)) / 2,
        ],
    ]
    # dice = 1 - (2 overlap + 1) / (|p| + |g| + 1)
    expected_dice = [[1 - 2 / 3, 1 - 2 / 3], [1 - 2.5 / 3, 1 - 1.5 / 3]]
    expected_total = [
        [expected_class[q][g] + 20 * expected_focal[q][g] + expected_dice[q][g] for g in range(2)]
        for q in range(2)
    ]

    torch.testing.assert_close(class_cost(class_logits, labels), torch.tensor(expected_class))
    torch.testing.assert_close(focal_cost(mask_logits, masks), torch.tensor(expected_focal))
    torch.testing.assert_close(dice_cost(mask_logits, masks), torch.tensor(expected_dice))
    total = HungarianMatcher().cost_matrix(class_logits, mask_logits, labels, masks)
    torch.testing.assert_close(total, torch.tensor(expected_total))


def three_queries_two_segments() -> tuple[torch.Tensor, ...]:
    """A 4x4 image: segment 0 (class 0) is the left half, segment 1 (class 1) the right half.
    Query 0 says "no object" with a random mask; query 1 says class 1 with the right half; query
    2 says class 0 with the left half."""
    left = torch.zeros(4, 4)
    left[:, :2] = 1
    right = 1 - left
    labels = torch.tensor([0, 1])
    masks = torch.stack([left, right])
    class_logits = torch.tensor(
        [log_probs(0.1, 0.1, 0.8), log_probs(0.1, 0.8, 0.1), log_probs(0.8, 0.1, 0.1)]
    )
    mask_logits = torch.stack(
        [torch.randn(4, 4, generator=torch.Generator().manual_seed(0)), right * 8 - 4, left * 8 - 4]
    )
    return class_logits, mask_logits, labels, masks


def test_matcher_gives_each_segment_the_query_whose_class_and_mask_agree():
    class_logits, mask_logits, labels, masks = three_queries_two_segments()
    match = HungarianMatcher().match(class_logits, mask_logits, labels, masks)
    assert match.queries.tolist() == [1, 2]
    assert match.segments.tolist() == [1, 0]


def test_matcher_samples_full_size_masks_onto_the_logits_grid():
    class_logits, mask_logits, labels, masks = three_queries_two_segments()
    full_size = masks.repeat_interleave(4, 1).repeat_interleave(4, 2)  # 16x16 ground truth
    match = HungarianMatcher().match(class_logits, mask_logits, labels, full_size)
    assert (match.queries.tolist(), match.segments.tolist()) == ([1, 2], [1, 0])


def test_matcher_with_no_segments_matches_nothing():
    class_logits, mask_logits, _, _ = three_queries_two_segments()
    match = HungarianMatcher().match(
        class_logits, mask_logits, torch.zeros(0, dtype=torch.long), torch.zeros(0, 4, 4)
    )
    assert match.queries.numel() == 0 and match.segments.numel() == 0


# ---- the set loss -----------------------------------------------------------------------------
TWO_CLASSES = PanopticConfig.small(num_things=1, num_stuff=1)  # classes 0, 1; "no object" 2


def one_layer(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> MaskFormerOutput:
    """A batch of one image from one decoder layer."""
    return MaskFormerOutput(class_logits[None, None], mask_logits[None, None])


def test_class_loss_when_every_query_is_unmatched_is_the_no_object_cross_entropy():
    probs = [(0.1, 0.1, 0.8), (0.3, 0.2, 0.5), (0.25, 0.25, 0.5)]
    class_logits = torch.tensor([log_probs(*p) for p in probs])
    target = PanopticTarget(torch.zeros(0, dtype=torch.long), torch.zeros(0, 8, 8))
    losses = MaskFormerLoss(TWO_CLASSES)(one_layer(class_logits, torch.randn(3, 8, 8)), [target])
    # Every target is "no object": the weights (0.1 each) divide out of MMDetection's weighted
    # mean, leaving the plain mean of -log p(no object).
    expected = sum(0.1 * -math.log(p[2]) for p in probs) / (0.1 * 3)
    assert losses["loss_cls"].item() == pytest.approx(expected, rel=1e-5)
    assert losses["loss_mask"].item() == 0 and losses["loss_dice"].item() == 0


def test_class_loss_weighs_no_object_targets_by_0_1():
    left = torch.zeros(8, 8)
    left[:, :4] = 1
    probs = [(0.3, 0.6, 0.1), (0.1, 0.1, 0.8), (0.2, 0.3, 0.5)]
    class_logits = torch.tensor([log_probs(*p) for p in probs])
    mask_logits = torch.stack([left * 8 - 4, -4 * torch.ones(8, 8), -4 * torch.ones(8, 8)])
    target = PanopticTarget(torch.tensor([0]), left[None])
    losses = MaskFormerLoss(TWO_CLASSES)(one_layer(class_logits, mask_logits), [target])
    # Query 0 is matched to the segment (class 0, weight 1); queries 1 and 2 are "no object"
    # (weight 0.1 each); the mean is weighted by the same weights.
    expected = (-math.log(0.3) + 0.1 * -math.log(0.8) + 0.1 * -math.log(0.5)) / (1 + 0.1 + 0.1)
    unweighted = (-math.log(0.3) - math.log(0.8) - math.log(0.5)) / 3
    assert losses["loss_cls"].item() == pytest.approx(expected, rel=1e-5)
    assert abs(expected - unweighted) > 0.1  # the weight matters in this case


def test_perfect_predictions_cost_nothing_on_every_layer_each_with_its_own_matching():
    left = torch.zeros(8, 8)
    left[:, :4] = 1
    right = 1 - left
    confident = {0: [12.0, 0.0, 0.0], 1: [0.0, 12.0, 0.0], None: [0.0, 0.0, 12.0]}
    # Layer 0 predicts the segments with queries 0 and 2, layer 1 with queries 2 and 1.
    layers = [
        ([confident[0], confident[None], confident[1]], [left, left, right]),
        ([confident[None], confident[1], confident[0]], [right, right, left]),
    ]
    class_logits = torch.stack([torch.tensor(classes) for classes, _ in layers])
    mask_logits = torch.stack([torch.stack(masks) * 40 - 20 for _, masks in layers])
    target = PanopticTarget(torch.tensor([0, 1]), torch.stack([left, right]))
    output = MaskFormerOutput(class_logits[:, None], mask_logits[:, None])
    losses = MaskFormerLoss(TWO_CLASSES)(output, [target])
    assert set(losses) == {
        f"{prefix}loss_{kind}" for prefix in ("", "d0.") for kind in ("cls", "mask", "dice")
    }
    for name, value in losses.items():
        assert 0 <= value.item() < 1e-3, name
    assert total_loss(losses).item() < 6e-3


def test_a_wrong_mask_costs_focal_and_dice():
    left = torch.zeros(8, 8)
    left[:, :4] = 1
    class_logits = torch.tensor([[12.0, 0.0, 0.0]])
    target = PanopticTarget(torch.tensor([0]), left[None])
    wrong = MaskFormerLoss(TWO_CLASSES)(
        one_layer(class_logits, (1 - left[None]) * 40 - 20), [target]
    )
    assert wrong["loss_mask"].item() > 1 and wrong["loss_dice"].item() > 0.9


# ---- the release's state dicts load key for key ------------------------------------------------
def fill(shapes: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> dict[str, torch.Tensor]:
    """Distinct random values for every entry, counters as integers."""
    generator = torch.Generator().manual_seed(0)
    return {
        name: torch.randint(0, 9, shape, generator=generator, dtype=dtype)
        if not dtype.is_floating_point
        else torch.randn(shape, generator=generator, dtype=dtype)
        for name, (shape, dtype) in shapes.items()
    }


def parse_d2_key_list(path: Path = KEY_LIST) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """The '#d2 ' section: the official release's names and shapes."""
    entries = {}
    for line in path.read_text().splitlines():
        if not line.startswith(D2_PREFIX):
            continue
        match = _D2_LINE.match(line.removeprefix(D2_PREFIX).strip())
        assert match, f"unreadable #d2 line: {line!r}"
        name, shape, dtype, _ = match.groups()
        dims = tuple(int(d) for d in shape.replace(" ", "").split(",") if d)
        entries[name] = (dims, getattr(torch, dtype))
    return entries


@pytest.fixture(scope="module")
def release_model() -> MaskFormer:
    """The full-size model, built once: ~45M parameters."""
    return MaskFormer(PanopticConfig()).eval()


@pytest.fixture(scope="module")
def release_state() -> dict[str, torch.Tensor]:
    return fill(parse_key_list(KEY_LIST))


def test_key_list_copy_is_the_shared_one():
    if not SHARED_KEY_LIST.exists():
        pytest.skip("the shared reference folder is not here (CI)")
    assert KEY_LIST.read_text() == SHARED_KEY_LIST.read_text()


def test_release_state_dict_loads_key_for_key(release_model, release_state):
    converted = convert_release_state_dict({"meta": {}, "state_dict": release_state})
    assert set(converted) == set(release_state)
    release_model.load_state_dict(converted, strict=True)
    ours = release_model.state_dict()
    for name, tensor in release_state.items():
        assert torch.equal(ours[name], tensor), name
    assert sum(p.numel() for p in release_model.parameters()) == stated_parameter_count(KEY_LIST)
    back = to_release_state_dict(ours)
    assert set(back) == set(release_state)


def test_release_loader_builds_a_model_that_runs(release_state):
    model = load_release_state_dict(release_state)
    with torch.inference_mode():
        output = model(torch.randn(1, 3, 64, 96))
    assert output.class_logits.shape == (1, 100, 134)
    assert output.mask_logits.shape == (1, 100, 16, 24)
    assert output.layer_class_logits.shape[0] == 6


@pytest.mark.parametrize(
    ("change", "reported"),
    [
        (
            lambda s: s.pop("panoptic_head.cls_embed.bias"),
            "missing 1: panoptic_head.cls_embed.bias",
        ),
        (lambda s: s.update({"panoptic_head.extra": torch.zeros(1)}), "unexpected 1"),
        (
            lambda s: s.update({"panoptic_head.query_embed.weight": torch.zeros(50, 256)}),
            "wrong shape",
        ),
        (lambda s: s.update({"backbone.conv1.weight": [1.0]}), "no tensors"),
    ],
)
def test_release_state_dict_with_other_keys_is_refused(release_state, change, reported):
    state = dict(release_state)
    change(state)
    with pytest.raises(CheckpointError, match=re.escape(reported)):
        convert_release_state_dict(state, source="bad.pth")


def test_official_detectron2_state_dict_loads_key_for_key(release_model):
    d2_state = fill(parse_d2_key_list())
    numpy_file = {"model": {name: t.numpy() for name, t in d2_state.items()}}  # as the .pkl
    converted = convert_detectron2_state_dict(numpy_file)
    release_model.load_state_dict(converted, strict=True)
    ours = release_model.state_dict()
    same = {
        "backbone.stem.conv1.norm.running_var": "backbone.bn1.running_var",
        "backbone.res3.0.shortcut.weight": "backbone.layer2.0.downsample.0.weight",
        "backbone.res5.2.conv3.norm.bias": "backbone.layer4.2.bn3.bias",
        "sem_seg_head.pixel_decoder.adapter_1.norm.weight": (
            "panoptic_head.pixel_decoder.lateral_convs.0.gn.weight"
        ),
        "sem_seg_head.pixel_decoder.layer_4.weight": (
            "panoptic_head.pixel_decoder.encoder_out_proj.conv.weight"
        ),
        "sem_seg_head.predictor.transformer.decoder.layers.3.multihead_attn.in_proj_weight": (
            "panoptic_head.transformer_decoder.layers.3.cross_attn.attn.in_proj_weight"
        ),
        "sem_seg_head.predictor.mask_embed.layers.1.weight": "panoptic_head.mask_embed.2.weight",
        "sem_seg_head.predictor.class_embed.bias": "panoptic_head.cls_embed.bias",
    }
    for theirs, our_name in same.items():
        assert torch.equal(ours[our_name], d2_state[theirs]), theirs
    assert ours["backbone.bn1.num_batches_tracked"].item() == 0  # FrozenBatchNorm2d keeps none


def test_detectron2_state_dict_with_an_unknown_name_is_refused():
    d2_state = fill(parse_d2_key_list())
    d2_state["sem_seg_head.predictor.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="unknown names 1"):
        convert_detectron2_state_dict(d2_state, source="model_final.pkl")


def test_the_importer_recognises_both_releases(release_state):
    """`vidserve checkpoints import` tells the MMDetection file from the detectron2 one (each by
    its own names; neither is taken for the other) and gives COCO panoptic's 133 classes, the
    80 things first."""
    d2_state = fill(parse_d2_key_list())
    for state, key, convert in (
        (release_state, "mmdet-maskformer-r50-coco-panoptic", convert_release_state_dict),
        (d2_state, "maskformer-r50-coco-panoptic-d2", convert_detectron2_state_dict),
    ):
        found = detect_format(state)
        assert (found.key, found.family, found.default_name) == (key, "panoptic", "maskformer-coco")
        converted = found.convert(state, {}, Path("release.pth"))
        assert set(converted.state) == set(convert(state))
        assert PanopticConfig.from_dict(converted.architecture) == PanopticConfig()
        names = converted.class_names
        assert len(names) == 133 and names[0] == "person" and names[79] == "toothbrush"
        assert (names[80], names[-1]) == ("banner", "rug-merged")


# ---- the small model --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_model() -> MaskFormer:
    torch.manual_seed(0)
    return build_maskformer(PanopticConfig.small())


def test_small_model_gives_class_and_mask_logits_of_every_layer(small_model):
    config = small_model.config
    with torch.inference_mode():
        output = small_model(torch.randn(2, 3, 240, 320))
    queries, classes = config.num_queries, config.num_classes + 1
    assert output.class_logits.shape == (2, queries, classes)
    assert output.mask_logits.shape == (2, queries, 60, 80)
    assert output.layer_class_logits.shape == (config.decoder_layers, 2, queries, classes)
    assert output.layer_mask_logits.shape == (config.decoder_layers, 2, queries, 60, 80)


def test_a_padded_batch_answers_on_the_padded_grid(small_model):
    batch = torch.randn(2, 3, 256, 352)
    with torch.inference_mode():
        output = small_model(batch, [(240, 320), (256, 300)])  # padding masked from attention
    assert output.mask_logits.shape == (2, 30, 64, 88)
    assert torch.isfinite(output.class_logits).all() and torch.isfinite(output.mask_logits).all()


def test_decoder_reading_the_pixel_embedding_attends_to_the_stride_4_grid(small_model):
    """The official MaskFormer's TRANSFORMER_IN_FEATURE "pixel_embedding": the same weights,
    the queries attending to the mask features (60 x 80 here) instead of the stride-32 memory,
    their padding masked at that grid."""
    config = replace(small_model.config, decoder_memory="pixel_embedding")
    model = build_maskformer(config)
    model.load_state_dict(small_model.state_dict())  # strict: no weight added or dropped
    seen = []
    hook = model.panoptic_head.transformer_decoder.register_forward_hook(
        lambda _module, args, _out: seen.append((args[2].shape, args[4]))
    )
    batch = torch.randn(2, 3, 256, 352)
    with torch.inference_mode():
        output = model(batch, [(240, 320), (256, 300)])
        coarse = small_model(batch, [(240, 320), (256, 300)])
    hook.remove()
    ((tokens, padding),) = seen
    assert tokens == (2, 64 * 88, config.hidden_dim)
    assert padding.shape == (2, 64 * 88)
    assert padding.view(2, 64, 88)[0, 60:].all() and not padding.view(2, 64, 88)[0, :60, :80].any()
    assert padding.view(2, 64, 88)[1, :, 75:].all() and not padding.view(2, 64, 88)[1, :, :75].any()
    assert output.mask_logits.shape == coarse.mask_logits.shape
    assert not torch.allclose(output.class_logits, coarse.class_logits)
    with pytest.raises(ValueError, match="decoder_memory"):
        replace(config, decoder_memory="res5")


def test_small_model_trains_a_step(small_model):
    model = build_maskformer(small_model.config).train()
    left = torch.zeros(240, 320)
    left[:, :160] = 1
    target = PanopticTarget(torch.tensor([0, 7]), torch.stack([left, 1 - left]))
    losses = MaskFormerLoss(model.config)(model(torch.randn(1, 3, 240, 320)), [target])
    total = total_loss(losses)
    total.backward()
    assert len(losses) == 3 * model.config.decoder_layers and torch.isfinite(total)
    assert model.panoptic_head.query_embed.weight.grad.abs().sum() > 0


def test_segment_frames_answers_at_each_frames_size(small_model):
    frames = [torch.randint(0, 256, (240, 320, 3), dtype=torch.uint8)] * 2
    frames.append(torch.randint(0, 256, (120, 200, 3), dtype=torch.uint8))
    predictions = segment_frames(small_model, frames)
    assert [tuple(p.ids.shape) for p in predictions] == [(240, 320), (240, 320), (120, 200)]


def test_probe_runs_the_network_and_inference_on_a_noise_frame(small_model):
    with torch.inference_mode():
        output = probe_maskformer(small_model)
    assert output.mask_logits.shape == (1, 30, 60, 80)  # 240 x 320, unpadded
    assert torch.isfinite(output.layer_mask_logits).all()


# ---- panoptic inference -----------------------------------------------------------------------
def random_frame_logits(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """10 queries over 3 things + 2 stuff classes (+ no object), most of them confident, each
    mostly sure of its own random blobs (a coarse 6x8 grid of owners) and noisy elsewhere."""
    queries = 10
    class_logits = torch.randn(queries, 6, generator=generator)
    confident = torch.randint(0, 6, (queries,), generator=generator)
    boost = 6.0 * (torch.rand(queries, generator=generator) < 0.8)
    class_logits[torch.arange(queries), confident] += boost
    owner = torch.randint(0, queries, (6, 8), generator=generator)
    owned = (owner[None] == torch.arange(queries)[:, None, None]).float()
    coarse = 8 * owned - 4 + 2 * torch.randn(queries, 6, 8, generator=generator)
    mask_logits = torch.nn.functional.interpolate(coarse[None], size=(30, 40), mode="bilinear")
    return class_logits, mask_logits[0]


def test_segments_never_overlap_and_account_for_every_labelled_pixel():
    settings = InferenceSettings(num_things=3)
    generator = torch.Generator().manual_seed(0)
    segment_count = 0
    for _ in range(300):
        prediction = panoptic_inference(*random_frame_logits(generator), settings)
        ids, segments = prediction.ids, prediction.segments
        segment_ids = [segment.id for segment in segments]
        assert len(set(segment_ids)) == len(segment_ids)
        assert set(ids.unique().tolist()) <= {0, *segment_ids}
        masks = torch.stack([ids == s for s in segment_ids]) if segments else torch.zeros(0)
        assert segments == [] or masks.sum(0).max() <= 1  # no pixel in two segments
        for segment in segments:
            assert segment.area == int((ids == segment.id).sum()) > 0
            assert segment.isthing == (segment.category < 3) and segment.score > 0.8
        stuff = [segment.category for segment in segments if not segment.isthing]
        assert len(stuff) == len(set(stuff))  # one segment per stuff class
        assert sum(segment.area for segment in segments) == int((ids > 0).sum())
        segment_count += len(segments)
    assert segment_count > 1000  # the frames had segments to check


def test_stuff_queries_of_a_class_merge_and_thing_queries_under_the_thresholds_drop():
    # Classes: 0 a thing, 1 stuff; 2 is "no object". A 4x4 frame.
    settings = InferenceSettings(num_things=1)
    region = torch.zeros(4, 4, dtype=torch.bool)
    left, top_right, bottom_right = region.clone(), region.clone(), region.clone()
    left[:, :2] = True
    top_right[:2, 2:] = True
    bottom_right[2:, 2:] = True

    def logits(where: torch.Tensor, inside: float = 5.0) -> torch.Tensor:
        return torch.where(where, inside, -5.0)

    stuff_left = logits(left)
    stuff_left[0, 0] = -1.0  # the corner is the stuff query's weakest pixel
    queries = [
        (log_probs(0.025, 0.95, 0.025), stuff_left),  # stuff, kept
        (log_probs(0.05, 0.9, 0.05), logits(top_right)),  # the same stuff class: merged
        (log_probs(0.95, 0.025, 0.025), logits(bottom_right, math.log(0.6 / 0.4))),  # a thing
        # A thing scored 0.79 (< 0.8) with a sure mask: were it kept, it would take the bottom
        # right from the thing above (0.79 x 0.99 > 0.95 x 0.6) and leave that one under 0.8.
        (log_probs(0.79, 0.11, 0.1), logits(bottom_right)),
        # A thing scored 0.85 over the stuff's region: it wins only the corner, 1 of its 8
        # pixels (< 0.8 of its mask), so it is dropped and the corner stays void.
        (log_probs(0.85, 0.05, 0.1), logits(left)),
        (log_probs(0.05, 0.05, 0.9), logits(left | top_right)),  # "no object"
    ]
    class_logits = torch.tensor([classes for classes, _ in queries])
    mask_logits = torch.stack([masks for _, masks in queries])
    prediction = panoptic_inference(class_logits, mask_logits, settings)

    stuff, thing = prediction.segments
    assert (stuff.category, stuff.isthing, stuff.area) == (1, False, 7 + 4)
    assert stuff.score == pytest.approx(0.95)
    assert (thing.category, thing.isthing, thing.area) == (0, True, 4)
    assert thing.score == pytest.approx(0.95)
    expected = torch.zeros(4, 4, dtype=torch.int32)
    expected[left | top_right] = stuff.id
    expected[bottom_right] = thing.id
    expected[0, 0] = 0
    assert torch.equal(prediction.ids, expected)
