"""A VOS session's mechanics: prompts, object ids, output sizes, exclusivity, memory cadence.

The model is untrained, so these tests check what must hold whatever the weights are.
"""

import numpy as np
import pytest
import torch
from vos_fixtures import (
    box_mask,
    random_frames,
    synthetic_video,
    tiny_config,
    tiny_model,
    visible_ids,
)

from models.common.image import IMAGENET_MEAN, IMAGENET_STD, normalize
from models.vos import (
    STCN,
    PromptError,
    SessionSettings,
    VosSession,
    label_map,
    masks_from_label_map,
)
from models.vos.inference import padding_for, prepare_frame, working_size


def assert_well_formed(results, object_ids, size):
    assert list(results) == object_ids
    masks = torch.stack([result.mask for result in results.values()])
    probs = torch.stack([result.prob for result in results.values()])
    assert masks.shape == probs.shape == (len(object_ids), *size)
    assert masks.dtype == torch.bool
    assert (masks.sum(dim=0) <= 1).all(), "objects overlap"
    assert (probs >= 0).all() and (probs <= 1 + 1e-6).all()
    assert (probs.sum(dim=0) <= 1 + 1e-5).all()


def test_a_synthetic_video_is_segmented_with_the_prompted_ids_at_input_size():
    video = synthetic_video()
    first_ids = video.object_map[0]
    object_ids = visible_ids(first_ids)
    session = VosSession(tiny_model())
    session.add_prompt(0, masks_from_label_map(first_ids))
    for t, frame in enumerate(video.frames):
        results = session.step(frame)
        assert_well_formed(results, object_ids, first_ids.shape)
        if t == 0:  # the prompted frame gives the prompt back exactly
            assert np.array_equal(label_map(results, first_ids.shape), first_ids)
            assert all(results[i].score == 1.0 for i in object_ids)
    assert session.next_frame_index == len(video.frames)


@pytest.mark.parametrize("short_edge", [None, 40], ids=["input-size", "resized"])
def test_perfect_information_gives_the_ground_truth_back(short_edge):
    # Every frame prompted with its ground truth: the output must be that ground truth, pixel
    # for pixel, through the resize, padding and unpadding.
    video = synthetic_video()
    session = VosSession(tiny_model(), SessionSettings(short_edge=short_edge))
    for t, frame in enumerate(video.frames):
        session.add_prompt(t, masks_from_label_map(video.object_map[t]))
        results = session.step(frame)
        assert np.array_equal(label_map(results, video.object_map[t].shape), video.object_map[t])


class BoxPainter(STCN):
    """Decodes every object as one fixed box of the padded working frame, whatever the memory
    says: lets a test see where a prediction lands in the output."""

    box = (0, 0, 0, 0)  # top, left, bottom, right in padded working pixels

    def decode(self, readout, features, frame_of=None):
        height, width = (4 * size for size in features.f4.shape[-2:])
        logits = torch.full((readout.shape[0], height, width), -20.0)
        top, left, bottom, right = self.box
        logits[:, top:bottom, left:right] = 20.0
        return logits


@pytest.mark.parametrize(
    ("short_edge", "box", "expected_box", "min_iou"),
    [
        (None, (4 + 10, 7 + 5, 4 + 20, 7 + 25), (10, 5, 20, 25), 1.0),  # padding (7, 7, 4, 4)
        (20, (6 + 5, 3 + 5, 6 + 10, 3 + 15), (10, 10, 20, 30), 0.8),  # 20 x 25, pad (3, 4, 6, 6)
    ],
    ids=["input-size", "resized"],
)
def test_predictions_come_back_unpadded_at_the_input_size(short_edge, box, expected_box, min_iou):
    model = BoxPainter(tiny_config()).eval()
    model.box = box
    session = VosSession(model, SessionSettings(short_edge=short_edge))
    frames = random_frames(2, 40, 50)
    session.add_prompt(0, {1: box_mask(40, 50, 0, 0, 8)})
    session.step(frames[0])
    predicted = session.step(frames[1])[1].mask
    expected = torch.zeros(40, 50, dtype=torch.bool)
    top, left, bottom, right = expected_box
    expected[top:bottom, left:right] = True
    iou = (predicted & expected).sum() / (predicted | expected).sum()
    assert iou >= min_iou


def test_prepared_frames_hold_the_normalised_frame_inside_the_padding():
    frame = random_frames(1, 40, 50)[0]
    prepared = prepare_frame(frame, short_edge=None)
    left, right, top, bottom = prepared.padding
    assert prepared.image.shape == (1, 3, 48, 64) and (left, right, top, bottom) == (7, 7, 4, 4)
    inside = prepared.image[0, :, top : top + 40, left : left + 50]
    expected = normalize(
        torch.from_numpy(frame).permute(2, 0, 1) / 255, IMAGENET_MEAN, IMAGENET_STD
    )
    assert torch.allclose(inside, expected, atol=1e-6)
    assert prepared.image[0, :, :top].abs().max() == 0  # padding is the mean after normalising


def test_frames_before_the_first_prompt_give_nothing():
    session = VosSession(tiny_model())
    frames = random_frames(4, 32, 48)
    session.add_prompt(2, {7: box_mask(32, 48, 4, 4, 10)})
    assert not session.needs_key_features()
    assert session.step(frames[0]) == {}
    assert session.step(frames[1]) == {}
    assert session.needs_key_features()
    assert list(session.step(frames[2])) == [7]
    assert list(session.step(frames[3])) == [7]


def test_a_prompt_on_a_later_frame_adds_an_object():
    session = VosSession(tiny_model(), SessionSettings(mem_every=2))
    frames = random_frames(8, 48, 32)
    session.add_prompt(0, {1: box_mask(48, 32, 2, 2, 12)})
    session.add_prompt(3, {5: box_mask(48, 32, 30, 16, 12)})
    seen = [list(session.step(frame)) for frame in frames]
    assert seen == [[1]] * 3 + [[1, 5]] * 5
    # Memory: prompts 0 and 3 (pinned), then every 2nd frame after the latest prompt.
    memory = [(f.frame_index, f.object_ids, f.pinned) for f in session.memory.frames]
    assert memory == [
        (0, (1,), True),
        (2, (1,), False),
        (3, (1, 5), True),
        (5, (1, 5), False),
        (7, (1, 5), False),
    ]


def test_a_later_prompt_corrects_an_object_and_wins_over_predictions():
    session = VosSession(tiny_model())
    frames = random_frames(3, 32, 32)
    session.add_prompt(0, {1: box_mask(32, 32, 0, 0, 16), 2: box_mask(32, 32, 16, 16, 16)})
    session.step(frames[0])
    corrected = box_mask(32, 32, 8, 8, 20)
    session.add_prompt(1, {1: corrected})
    results = session.step(frames[1])
    assert torch.equal(results[1].mask, torch.from_numpy(corrected))
    assert not (results[2].mask & results[1].mask).any()


def test_overlapping_prompt_masks_go_to_the_object_listed_last():
    session = VosSession(tiny_model())
    session.add_prompt(0, {1: box_mask(32, 32, 0, 0, 20), 2: box_mask(32, 32, 10, 10, 20)})
    results = session.step(random_frames(1, 32, 32)[0])
    assert results[2].mask[10:30, 10:30].all()
    assert results[1].mask.sum() == 20 * 20 - 10 * 10


def test_frames_are_processed_at_the_working_size_and_returned_at_the_input_size():
    model = tiny_model()
    session = VosSession(model, SessionSettings(short_edge=24))
    frames = random_frames(3, 60, 90)
    prepared = session.prepare(frames[0])
    assert prepared.working_size == working_size((60, 90), 24) == (24, 36)
    assert prepared.image.shape == (1, 3, 32, 48)  # padded to multiples of 16
    assert prepared.padding == padding_for((24, 36)) == (6, 6, 4, 4)
    session.add_prompt(0, {3: box_mask(60, 90, 10, 10, 30)})
    for frame in frames:
        assert_well_formed(session.step(frame), [3], (60, 90))


@pytest.mark.parametrize(
    ("size", "short_edge", "upscale", "expected"),
    [
        ((60, 90), 24, False, (24, 36)),  # larger frames shrink either way
        ((60, 90), 24, True, (24, 36)),
        ((20, 30), 40, False, (20, 30)),  # smaller ones stay as they are
        ((20, 30), 40, True, (40, 60)),  # unless the model works upscaled
        ((40, 60), 40, True, (40, 60)),
        ((20, 30), None, False, (20, 30)),
    ],
)
def test_working_size(size, short_edge, upscale, expected):
    assert working_size(size, short_edge, upscale) == expected


def test_an_upscaling_model_works_at_its_short_edge_and_answers_at_the_input_size():
    from dataclasses import replace

    model = STCN(replace(tiny_config(), short_edge=48, upscale=True)).eval()
    session = VosSession(model)
    frames = random_frames(2, 32, 40)
    assert session.prepare(frames[0]).working_size == (48, 60)
    session.add_prompt(0, {1: box_mask(32, 40, 4, 4, 12)})
    for frame in frames:
        assert_well_formed(session.step(frame), [1], (32, 40))


def test_upscale_needs_a_short_edge():
    from dataclasses import replace

    with pytest.raises(ValueError, match="upscale needs a short_edge"):
        replace(tiny_config(), short_edge=None, upscale=True)


@pytest.mark.parametrize(
    ("masks", "message"),
    [
        ({}, "at least one"),
        ({0: np.ones((32, 32), bool)}, ">= 1"),
        ({"a": np.ones((32, 32), bool)}, "integers"),
        ({4: np.ones((16, 32), bool)}, r"\(32, 32\)"),
        ({4: np.ones((32, 32, 1), bool)}, r"\(H, W\)"),
        ({4: np.zeros((32, 32), bool)}, "new and its mask is empty"),
        ({4: [[1, 0]]}, "array"),
    ],
)
def test_prompts_that_do_not_fit_are_refused(masks, message):
    session = VosSession(tiny_model())
    session.add_prompt(0, {1: box_mask(32, 32, 0, 0, 8)})
    session.step(random_frames(1, 32, 32)[0])
    with pytest.raises(PromptError, match=message):
        session.add_prompt(1, masks)
    assert session.object_ids == [1]


def test_a_prompt_for_a_processed_frame_is_refused():
    session = VosSession(tiny_model())
    session.add_prompt(0, {1: box_mask(32, 32, 0, 0, 8)})
    session.step(random_frames(1, 32, 32)[0])
    with pytest.raises(PromptError, match="already processed"):
        session.add_prompt(0, {2: box_mask(32, 32, 8, 8, 8)})


def test_a_frame_of_another_size_is_refused():
    session = VosSession(tiny_model())
    session.add_prompt(0, {1: box_mask(32, 32, 0, 0, 8)})
    with pytest.raises(ValueError, match="differs"):
        session.step(random_frames(1, 32, 48)[0])


def test_masks_may_be_uint8_float_or_tensors():
    session = VosSession(tiny_model())
    region = box_mask(32, 32, 4, 4, 8)
    session.add_prompt(
        0,
        {
            1: region.astype(np.uint8) * 255,
            2: torch.from_numpy(np.roll(region, 12, axis=0)).float(),
            3: torch.from_numpy(np.roll(region, 12, axis=1)),
        },
    )
    results = session.step(random_frames(1, 32, 32)[0])
    assert results[1].mask.sum() == results[2].mask.sum() == results[3].mask.sum() == 64


def test_a_session_needs_a_model_in_eval_mode():
    model = STCN(tiny_model().config)  # a new module is in training mode
    with pytest.raises(ValueError, match="eval"):
        VosSession(model)


def test_closing_frees_the_memory():
    session = VosSession(tiny_model())
    session.add_prompt(0, {1: box_mask(32, 32, 0, 0, 8)})
    session.step(random_frames(1, 32, 32)[0])
    assert session.memory_bytes() > 0
    session.close()
    assert session.memory_bytes() == 0 and session.object_ids == []
