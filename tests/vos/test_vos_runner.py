"""The STCN runner the worker calls: one key-encoder pass and one round (readout, decoder,
value encoder) over the frames of many sessions in the forward, which changes no session; each
session's commit in its step; errors kept to their own item; results in the shared schema."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from vos_fixtures import box_mask, random_frames, tiny_config

from models.data.rle import decode_rle, encode_mask
from models.vos import STCN, VosSession
from service.worker.runner import OptionError, WorkItem, run_forward, run_frames
from service.worker.runners import vos as vos_runner
from service.worker.runners.vos import VosRunner

H, W = 32, 48


@pytest.fixture
def runner():
    torch.manual_seed(0)
    return VosRunner(STCN(tiny_config()).eval(), SimpleNamespace(version="v1"), "stcn")


def count_items(monkeypatch, function: str) -> list[int]:
    """How many items (frames, plans) each call of the runner module's `function` got."""
    calls = []
    original = getattr(vos_runner, function)

    def counting(model, items):
        calls.append(len(items))
        return original(model, items)

    monkeypatch.setattr(vos_runner, function, counting)
    return calls


@pytest.fixture
def key_passes(monkeypatch):
    """How many frames each encode_key_batch call of the runner got."""
    return count_items(monkeypatch, "encode_key_batch")


def prompt_of(*masks):
    return {object_id: encode_mask(mask) for object_id, mask in enumerate(masks, start=1)}


def item(runner_state, index, frame, prompt=None, session="s"):
    return WorkItem(session, index, index / 8, frame, runner_state, prompt)


def test_sessions_share_one_key_pass_and_match_their_own_runs(runner, key_passes):
    frames = random_frames(3, H, W, seed=2)
    prompts = [prompt_of(box_mask(H, W, 4 + 6 * k, 4, 12)) for k in range(3)]
    states = [runner.open_session({}) for _ in range(3)]
    for t in range(3):
        batch = [
            item(states[k], t, frames[(t + k) % 3], prompts[k] if t == 0 else None, f"s{k}")
            for k in range(3)
        ]
        outputs = run_frames(runner, batch)
        assert all(isinstance(out, list) and len(out) == 1 for out in outputs)
    assert key_passes == [3, 3, 3]
    # Session 2 alone, frame by frame, gives the same masks.
    alone = runner.open_session({})
    for t in range(3):
        [[out]] = run_frames(
            runner, [item(alone, t, frames[(t + 2) % 3], prompts[2] if t == 0 else None)]
        )
    np.testing.assert_array_equal(
        decode_rle(out.objects[0].mask.model_dump()),
        decode_rle(outputs[2][0].objects[0].mask.model_dump()),
    )


def test_objects_are_in_the_shared_schema(runner):
    state = runner.open_session({})
    mask = box_mask(H, W, 8, 10, 12)
    [[out]] = run_frames(runner, [item(state, 0, random_frames(1, H, W)[0], prompt_of(mask))])
    [obj] = out.objects
    assert obj.track_id == 1 and obj.category == "object" and obj.actions == []
    assert obj.box == (10.0, 8.0, 22.0, 20.0) and obj.score == pytest.approx(1.0)
    assert obj.mask.size == (H, W)
    np.testing.assert_array_equal(decode_rle(obj.mask.model_dump()).astype(bool), mask)


def test_frames_before_the_first_prompt_are_empty_and_skip_the_network(runner, key_passes):
    state = runner.open_session({})
    frames = random_frames(2, H, W)
    [[first]] = run_frames(runner, [item(state, 0, frames[0])])
    assert first.objects == [] and key_passes == [0]
    [[second]] = run_frames(runner, [item(state, 1, frames[1], prompt_of(box_mask(H, W, 2, 2, 9)))])
    assert [o.track_id for o in second.objects] == [1] and key_passes == [0, 1]


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ({1: encode_mask(np.zeros((H, W), bool))}, "empty"),
        ({1: encode_mask(np.ones((H + 1, W), bool))}, "the frame is"),
        ({"one": encode_mask(np.ones((H, W), bool))}, "not valid"),
        ({1: {"size": [H, W], "counts": 7}}, "not valid"),
        ({0: encode_mask(np.ones((H, W), bool))}, ">= 1"),
    ],
    ids=["empty", "wrong-size", "id-not-a-number", "bad-rle", "id-zero"],
)
def test_a_bad_prompt_fails_its_item_only(runner, prompt, message):
    good, bad = runner.open_session({}), runner.open_session({})
    frame = random_frames(1, H, W)[0]
    outputs = run_frames(
        runner,
        [
            item(good, 0, frame, prompt_of(box_mask(H, W, 4, 4, 10)), "good"),
            item(bad, 0, frame, prompt, "bad"),
        ],
    )
    assert isinstance(outputs[1], OptionError) and message in str(outputs[1])
    assert [o.track_id for o in outputs[0][0].objects] == [1]


def test_a_frame_of_another_size_fails_its_item(runner):
    state = runner.open_session({})
    run_frames(
        runner, [item(state, 0, random_frames(1, H, W)[0], prompt_of(box_mask(H, W, 4, 4, 9)))]
    )
    [error] = run_frames(runner, [item(state, 1, random_frames(1, H + 16, W)[0])])
    assert isinstance(error, OptionError) and "differs" in str(error)


def test_unknown_options_are_refused(runner):
    with pytest.raises(OptionError, match="score_threshold"):
        runner.open_session({"score_threshold": 0.5})
    assert isinstance(runner.open_session({}), VosSession)
    assert runner.info.takes_prompt and runner.info.stateful and runner.info.one_frame_per_batch


def test_the_forward_runs_one_round_and_changes_no_session(runner, monkeypatch):
    rounds = count_items(monkeypatch, "step_round")
    frames = random_frames(3, H, W, seed=4)
    prompts = [
        prompt_of(box_mask(H, W, 4, 4, 12)),
        prompt_of(box_mask(H, W, 10, 20, 10), box_mask(H, W, 0, 0, 8)),
    ]
    states = [runner.open_session({}) for _ in range(3)]  # the third never gets a prompt

    def state(session):
        return session.next_frame_index, session.object_ids, len(session.memory)

    for t in range(3):
        batch = [
            item(states[k], t, frames[t], prompts[k] if t == 0 and k < 2 else None, f"s{k}")
            for k in range(3)
        ]
        views = [work.viewing(runner.forward_view(work.state)) for work in batch]
        before = [state(session) for session in states]
        first = run_forward(runner.forward, views)
        outputs = run_forward(runner.forward, views)  # a retried forward: nothing changed
        assert [state(session) for session in states] == before
        for work, output, again in zip(batch, outputs, first, strict=True):
            [answer] = runner.step(work, output)
            assert answer.objects == vos_runner.result_objects(again.step.results)
    assert rounds == [3] * 6
    assert [state(session) for session in states] == [(3, [1], 1), (3, [1, 2], 1), (3, [], 0)]
