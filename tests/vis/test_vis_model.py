"""MaskTrack R-CNN on the small backbone: config, inference output, preprocessing."""

import json

import numpy as np
import pytest
import torch
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from vis_fixtures import HEIGHT, WIDTH, tiny_config, two_rectangle_sample

from models.checkpoints import build_model
from models.common.backbones import build_backbone, count_parameters
from models.common.image import fit_size, prepare_batch
from models.vis import MaskTrackRCNN, Tracker, VisConfig, build_masktrack_rcnn


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_masktrack_rcnn(tiny_config())


def test_config_round_trips_through_the_manifest_dict():
    for config in (VisConfig(), VisConfig.small(num_classes=5), tiny_config()):
        data = json.loads(json.dumps(config.to_dict()))
        assert VisConfig.from_dict(data) == config
    assert VisConfig.from_dict({"num_classes": 3}).backbone == "resnet50_fpn"  # defaults fill in


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match="unknown VisConfig keys: colour"):
        VisConfig.from_dict({"colour": "red"})
    with pytest.raises(ValueError, match="backbone"):
        VisConfig(backbone="vgg")
    with pytest.raises(ValueError, match="num_classes must be int"):
        VisConfig.from_dict({"num_classes": "40"})
    with pytest.raises(ValueError, match="image_long_edge"):
        VisConfig(image_long_edge=100, image_short_edge=200)


def test_reference_defaults():
    config = VisConfig()
    assert (config.rpn_pre_nms_top_n_test, config.rpn_post_nms_top_n_test) == (200, 200)
    assert (config.box_score_thresh, config.box_nms_thresh) == (0.01, 0.5)
    assert (config.box_detections_per_img, config.mask_threshold) == (100, 0.5)
    assert (config.image_long_edge, config.image_short_edge) == (640, 360)
    assert config.size_divisible == 32
    assert (config.track_embed_dim, config.num_classes) == (1024, 40)


def test_track_embeddings_are_reference_dot_products_or_scaled_cosines():
    """Scale 0 (the reference): ReLU features, unbounded dot products. Scale s > 0: every
    embedding has norm sqrt(s), so dot products are s * cosine, within [-s, s]."""
    from models.vis.track_head import TrackEmbedHead, similarity_logits

    torch.manual_seed(0)
    features = {level: torch.randn(1, 8, 16, 16) for level in ("0", "1", "2", "3")}
    boxes = [torch.tensor([[0.0, 0.0, 20.0, 20.0], [30.0, 10.0, 60.0, 50.0]])]
    reference = TrackEmbedHead(8, embed_dim=32)(features, boxes, [(64, 64)])
    assert (reference >= 0).all()
    cosine = TrackEmbedHead(8, embed_dim=32, cosine_scale=16.0)(features, boxes, [(64, 64)])
    assert torch.allclose(cosine.norm(dim=1), torch.full((2,), 4.0))
    assert (cosine < 0).any()  # no ReLU: cosines may be negative
    logits = similarity_logits(cosine, cosine)
    assert torch.allclose(logits[:, 1:].diagonal(), torch.full((2,), 16.0))
    assert logits[:, 1:].abs().max() <= 16.0 + 1e-4


def test_cosine_track_embeddings_are_a_manifest_setting_and_old_manifests_keep_the_reference():
    config = VisConfig.small(track_cosine_scale=16.0)
    assert VisConfig.from_dict(config.to_dict()) == config
    assert VisConfig().track_cosine_scale == 0.0 and VisConfig.small().track_cosine_scale == 16.0
    # A manifest written before the field existed builds the reference head.
    old = {k: v for k, v in config.to_dict().items() if k != "track_cosine_scale"}
    assert VisConfig.from_dict(old).track_cosine_scale == 0.0
    with pytest.raises(ValueError, match="track_cosine_scale"):
        VisConfig(track_cosine_scale=-1.0)


def test_box_head_is_the_reference_mlp_or_convs_with_group_norm():
    small = VisConfig.small()
    assert VisConfig().box_head_convs == 0 and small.box_head_convs == 4
    convs = build_masktrack_rcnn(tiny_config(box_head_convs=2)).roi_heads.box_head
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in convs.modules()) == 2
    assert isinstance(build_masktrack_rcnn(VisConfig()).roi_heads.box_head, TwoMLPHead)
    # A manifest written before the field existed builds the reference head.
    old = {k: v for k, v in small.to_dict().items() if k != "box_head_convs"}
    assert VisConfig.from_dict(old).box_head_convs == 0


def test_vis_family_is_registered_for_checkpoints():
    model = build_model("vis", tiny_config().to_dict())
    assert isinstance(model, MaskTrackRCNN) and not model.training
    assert model.track_head.fcs[0].in_features == 64 * 7 * 7


def test_small_backbone_has_1_to_3_million_parameters():
    backbone = build_backbone("small", fpn_channels=64)
    assert 1_000_000 < count_parameters(backbone) < 3_000_000
    features = backbone(torch.zeros(1, 3, 64, 96))
    assert list(features) == ["0", "1", "2", "3", "pool"]
    assert [f.shape[-1] for f in features.values()] == [24, 12, 6, 3, 2]


def test_fit_size_keeps_aspect_ratio_within_640x360():
    assert fit_size(720, 1280, 640, 360) == (360, 640)
    assert fit_size(1280, 720, 640, 360) == (640, 360)  # portrait fits the other way round
    assert fit_size(480, 640, 640, 360) == (360, 480)
    assert fit_size(180, 320, 640, 360) == (360, 640)  # small frames are scaled up


def test_prepare_batch_pads_to_a_multiple_of_32():
    frames = [np.zeros((720, 1280, 3), np.uint8), np.zeros((480, 640, 3), np.uint8)]
    batch = prepare_batch(frames, long_edge=640, short_edge=360)
    assert batch.tensor.shape == (2, 3, 384, 640)
    assert batch.image_sizes == [(360, 640), (360, 480)]
    assert batch.input_sizes == [(720, 1280), (480, 640)]


def test_detect_batches_frames_of_different_sizes(model):
    frame, _ = two_rectangle_sample()
    frames = [
        frame,  # numpy uint8 H x W x 3
        torch.from_numpy(np.ascontiguousarray(frame[:40, :70])),  # smaller, tensor uint8
        torch.rand(3, 50, 120),  # float 3 x H x W in [0, 1]
    ]
    results = model.detect(frames, mask_probs=True)

    assert [r.image_size for r in results] == [(HEIGHT, WIDTH), (40, 70), (50, 120)]
    for result in results:
        height, width = result.image_size
        count = len(result)
        assert 0 < count <= model.config.box_detections_per_img
        assert result.boxes.shape == (count, 4) and result.boxes.dtype == torch.float32
        assert (result.boxes[:, 2] <= width).all() and (result.boxes[:, 3] <= height).all()
        assert (result.boxes >= 0).all()
        assert result.labels.dtype == torch.int64
        assert ((result.labels >= 1) & (result.labels <= model.config.num_classes)).all()
        assert (result.scores[:-1] >= result.scores[1:]).all()
        assert (result.scores > model.config.box_score_thresh).all()
        assert result.masks.shape == (count, height, width) and result.masks.dtype == torch.bool
        assert result.mask_probs.shape == (count, height, width)
        assert torch.equal(result.masks, result.mask_probs >= 0.5)
        assert result.embeddings.shape == (count, model.config.track_embed_dim)


def test_detect_is_per_frame_whatever_the_batch(model):
    frame, _ = two_rectangle_sample()
    alone = model.detect([frame])[0]
    batched = model.detect([frame, np.zeros((30, 40, 3), np.uint8)])[0]
    # The untrained model's lower scores are near ties (a few 1e-4 apart) that the float noise
    # of another batch shape may reorder or push across NMS; the leading ones are clear.
    top = 5
    assert torch.allclose(alone.scores[:top], batched.scores[:top], atol=1e-5)
    assert torch.allclose(alone.boxes[:top], batched.boxes[:top], atol=1e-3)
    assert batched.mask_probs is None


def test_min_score_keeps_the_best_detections_only(model):
    frame, _ = two_rectangle_sample()
    everything = model.detect([frame])[0]
    threshold = float(everything.scores[len(everything) // 2])
    kept = model.detect([frame], min_score=threshold)[0]
    assert 0 < len(kept) < len(everything)
    assert torch.equal(kept.masks, everything.masks[: len(kept)])
    assert torch.allclose(kept.embeddings, everything.embeddings[: len(kept)], atol=1e-5)


def test_detect_needs_eval_mode_and_tracker_gives_unique_ids(model):
    frame, _ = two_rectangle_sample()
    assert model.detect([]) == []
    model.train()
    try:
        with pytest.raises(RuntimeError, match="eval"):
            model.detect([frame])
    finally:
        model.eval()
    tracker = Tracker()
    for shift in (0, 2, 4):
        frame, _ = two_rectangle_sample(shift)
        ids = tracker.step(model.detect([frame])[0])
        assert len(ids) == len(set(ids))
