"""The action head of the served pipeline (service/worker/runners/action.py) on its own: which
frames are key frames, which frames make a key frame's clip, when its actions are answered, what
the session holds, and what bad options get. The head's upstream is what the tracker answers: a
FrameOutput with tracked objects, built here directly."""

import numpy as np
import pytest
import torch

from models.action.feature_bank import BankBatch
from models.action.inference import clip_offsets, prepare_clip
from models.data.rle import encode_mask
from models.train.action_data import clip_indices
from service.schemas import DetectedObject
from service.worker.runner import ActionsOutput, FrameOutput, OptionError, WorkItem
from service.worker.runners.action import ActionHead, ActionSession
from tests.action.serving_fixtures import ACTION_NAMES, TRAINING_FPS, small_action_model

CLASSES = ("disc", "square", "triangle")
SIZE = (48, 64)  # (H, W) of the test frames


@pytest.fixture(scope="module")
def head() -> ActionHead:
    model, _ = small_action_model(short_side=48)
    return ActionHead(model, "slowfast-acrn", "v1", ACTION_NAMES, TRAINING_FPS, CLASSES)


def frame(index: int) -> np.ndarray:
    return np.random.default_rng(index).integers(0, 256, (*SIZE, 3), dtype=np.uint8)


def tracked(index: int, time: float, objects=((1, "disc"), (2, "square"))) -> FrameOutput:
    """The tracker's answer for a frame: each (track id, category) with a box and its mask."""
    found = []
    for track_id, category in objects:
        x = 4 + 10 * track_id
        mask = np.zeros(SIZE, bool)
        mask[10:30, x : x + 12] = True
        box = (float(x), 10.0, float(x + 12), 30.0)
        found.append(
            DetectedObject(
                track_id=track_id, category=category, score=0.9, box=box, mask=encode_mask(mask)
            )
        )
    return FrameOutput(index, time, found)


def stream(head, state, count: int, fps: float, objects=((1, "disc"), (2, "square"))):
    """Steps `count` frames at `fps` through the head; per frame the outputs it answered."""
    answered = []
    for index in range(count):
        time = index / fps
        item = WorkItem("s", index, time, frame(index), state)
        answered.append(head.step(state, item, [tracked(index, time, objects)]))
    return answered


def key_frames(outputs) -> list[int]:
    return [o.key_frame for batch in outputs for o in batch if isinstance(o, ActionsOutput)]


def test_key_frames_fall_on_whole_seconds_and_answer_after_the_look_ahead(head):
    state = head.open_session({})
    answered = stream(head, state, 30, fps=8.0)
    # Whole seconds of an 8 fps clock: frames 0, 8, 16, 24; the small model's clip reaches 7
    # frames past its key frame (clip_len 16 at interval 1: 8 before, 7 after).
    assert head.look_ahead_s == pytest.approx(7 / 8)
    when = {o.key_frame: n for n, batch in enumerate(answered) for o in batch}
    assert when == {0: 7, 8: 15, 16: 23}
    tail = head.flush(state, [])  # key frame 24's clip is padded with the last frame (29)
    assert [o.key_frame for o in tail] == [24]
    first = answered[7][0]
    assert first.time == 0.0
    assert [t.track_id for t in first.tracks] == [1, 2]
    for track in first.tracks:
        assert sorted(a.label for a in track.actions) == sorted(ACTION_NAMES)
        scores = [a.score for a in track.actions]
        assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
        assert {a.key_frame for a in track.actions} == {0}


def test_the_stride_option_sets_the_seconds_between_key_frames(head):
    state = head.open_session({"action_stride": 0.5})
    outputs = stream(head, state, 20, fps=8.0) + [head.flush(state, [])]
    assert key_frames(outputs) == [0, 4, 8, 12, 16]


def test_a_stream_at_the_training_rate_gets_mmaction2s_clip(head):
    """At the training frame rate, the clip of the frames nearest the clip times is exactly the
    clip MMAction2's SampleAVAFrames takes around the key frame (clamped at the start), and the
    head's scores are the model's on that clip times the tracker's score of the actor."""
    state = head.open_session({})
    answered = stream(head, state, 16, fps=8.0)
    key_8 = next(o for batch in answered for o in batch if o.key_frame == 8)
    config = head.config
    frames = buffered(head, head.open_session({}), 16, fps=8.0)
    for key in (0, 8):  # key frame 0's clip is clamped at the video's start
        indices = clip_indices(key, config.clip_len, config.frame_interval, 16)
        assert [f.index for f in head.clip(frames, key / 8.0)] == indices.tolist()
    clip = prepare_clip([frame(int(i)) for i in indices], config)[None]
    box = torch.tensor([[0.0, 14, 10, 26, 30], [0.0, 24, 10, 36, 30]])
    with torch.no_grad():
        expected = head.model.action_scores(clip, box)
    by_track = {t.track_id: {a.label: a.score for a in t.actions} for t in key_8.tracks}
    for row, track_id in enumerate((1, 2)):
        for column, name in enumerate(ACTION_NAMES):
            want = float(expected[row, column]) * 0.9  # the tracker's score of the actor
            assert by_track[track_id][name] == pytest.approx(want, abs=1e-5)


def buffered(head, state, count: int, fps: float):
    frames = []
    for index in range(count):
        frames = head._buffer(frames, WorkItem("s", index, index / fps, frame(index % 5), state))
    return frames


def test_a_faster_stream_is_sampled_on_the_training_clock(head):
    """At 24 fps the clip of an 8 fps model takes every third frame; a stream faster than four
    times the training rate is thinned to that rate as it is buffered."""
    state = head.open_session({})
    frames = buffered(head, state, 72, fps=24.0)
    clip = head.clip(frames, 48 / 24)  # the key frame at 2 s
    offsets = clip_offsets(head.config, TRAINING_FPS)
    assert [f.index for f in clip] == [48 + round(o * 24) for o in offsets]
    fast = buffered(head, state, 200, fps=100.0)
    assert np.diff([f.time for f in fast]).min() >= 1 / (4 * TRAINING_FPS) - 1e-6
    assert len(fast) <= 2 * 4 * TRAINING_FPS + 1


def test_the_buffer_stays_bounded_over_a_long_stream(head):
    """50 s at 4 fps, then 3 s at 100 fps: the buffer holds the seconds a clip can reach, at
    no more than four times the training rate."""
    state = head.open_session({})
    sizes = []
    for index in range(500):
        time = index / 4.0 if index < 200 else 50 + (index - 200) / 100.0
        item = WorkItem("s", index, time, frame(index % 7), state)
        head.step(state, item, [tracked(index, time, objects=())])  # no actor: no model pass
        sizes.append((len(state.frames), len(state.pending), state.buffered_bytes()))
    # The clip's span (15 model frames, 1.9 s) and one stride, at <= 4 x 8 frames a second.
    span = head.offsets[-1] - head.offsets[0] + 1.0
    assert max(n for n, _, _ in sizes) <= int(span * 4 * TRAINING_FPS) + 2
    assert max(p for _, p, _ in sizes) <= 2
    slow = [n for n, _, _ in sizes[20:200]]
    assert max(slow) <= int(span * 4) + 2  # flat while the stream is at 4 fps
    one_frame = sizes[-1][2] // sizes[-1][0]
    assert max(b for _, _, b in sizes) <= (int(span * 4 * TRAINING_FPS) + 2) * one_frame


def test_a_video_shorter_than_the_window_still_gets_actions(head):
    state = head.open_session({})
    answered = stream(head, state, 3, fps=8.0)
    assert key_frames(answered) == []  # its look-ahead is never reached
    tail = head.flush(state, [])
    assert [o.key_frame for o in tail] == [0] and len(tail[0].tracks) == 2
    assert state.frames == [] and state.pending == []


def test_categories_choose_the_actors_and_min_score_the_labels(head):
    state = head.open_session({"action_categories": "square", "action_min_score": 0.5})
    answered = stream(head, state, 8, fps=8.0)
    (first,) = answered[7]
    assert [t.track_id for t in first.tracks] == [2]
    assert all(a.score >= 0.5 for a in first.tracks[0].actions)


def test_a_key_frame_without_actors_answers_nothing(head):
    state = head.open_session({})
    assert key_frames(stream(head, state, 8, fps=8.0, objects=())) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"action_stride": 0}, "action_stride=0.0 is outside"),
        ({"action_stride": -1}, "outside"),
        ({"action_stride": "often"}, "is not a float"),
        ({"action_categories": "disc, person"}, "unknown category person"),
        ({"action_min_score": 1.5}, "outside"),
        ({"action_window": 3}, "unknown option(s) action_window"),
        ({"action_bank_window": 2}, "unknown option(s) action_bank_window"),  # no bank
    ],
)
def test_bad_options_are_the_clients_error(head, options, message):
    with pytest.raises(OptionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        head.open_session(options)


def test_frames_going_back_in_time_are_refused_and_change_nothing(head):
    state = head.open_session({})
    stream(head, state, 4, fps=8.0)
    before = (list(state.frames), list(state.pending), state.next_key_time)
    item = WorkItem("s", 4, 0.1, frame(4), state)
    with pytest.raises(OptionError, match="go forward in time"):
        head.step(state, item, [tracked(4, 0.1)])
    assert (state.frames, state.pending, state.next_key_time) == before


def test_a_step_whose_model_pass_fails_leaves_the_session_as_it_was(head, monkeypatch):
    state = head.open_session({})
    stream(head, state, 7, fps=8.0)
    before = (list(state.frames), list(state.pending), state.next_key_time)

    def fails(*args):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(head.model, "scores_from_features", fails)
    item = WorkItem("s", 7, 7 / 8, frame(7), state)
    with pytest.raises(RuntimeError):
        head.step(state, item, [tracked(7, 7 / 8)])
    assert (state.frames, state.pending, state.next_key_time) == before
    monkeypatch.undo()
    (answer,) = head.step(state, item, [tracked(7, 7 / 8)])  # the retry answers it
    assert answer.key_frame == 0 and isinstance(state, ActionSession)


# ---- a model with a feature bank -------------------------------------------------------------
@pytest.fixture(scope="module")
def bank_head() -> ActionHead:
    model, _ = small_action_model(short_side=48, lfb="avg", lfb_window_s=2.0)
    return ActionHead(model, "slowfast-acrn-lfb", "v1", ACTION_NAMES, TRAINING_FPS, CLASSES)


def test_a_track_reads_its_own_past_features_within_the_window(bank_head):
    head = bank_head
    state = head.open_session({})
    answered = stream(head, state, 40, fps=8.0)  # key frames at 0..4 s, all answered
    by_key = {o.key_frame: o for batch in answered for o in batch}
    assert sorted(by_key) == [0, 8, 16, 24, 32]
    # Recompute key frame 24 (3 s) by hand: the bank holds the track's features at 1 and 2 s
    # (the window is 2 s: 0 s has fallen out; 3 s itself is the present).
    frames = []
    for index in range(40):
        frames = head._buffer(frames, WorkItem("s", index, index / 8.0, frame(index), state))

    def features(key_time):
        clip = head.clip(frames, key_time)
        images = prepare_clip([f.image for f in clip], head.config)[None]
        box = torch.tensor([[0.0, 14, 10, 26, 30], [0.0, 24, 10, 36, 30]])
        return head.model.actor_features(images, box)  # frames at the model's short side

    with torch.inference_mode():
        past = [features(1.0), features(2.0)]
        bank = BankBatch.stack(
            [torch.stack([p[k] for p in past]) for k in (0, 1)], past[0].shape[1]
        )
        expected = head.model.scores_from_features(features(3.0), bank) * 0.9
        without = head.model.scores_from_features(features(3.0)) * 0.9
    got = {t.track_id: {a.label: a.score for a in t.actions} for t in by_key[24].tracks}
    for row, track_id in enumerate((1, 2)):
        for column, name in enumerate(ACTION_NAMES):
            assert got[track_id][name] == pytest.approx(float(expected[row, column]), abs=1e-5)
    assert not torch.allclose(expected, without)
    # What the session holds: 2 tracks x the features of 2, 3, 4 s (the window before 4 s).
    assert len(state.banks) == 6 and state.buffered_bytes() > state.banks.nbytes()


def test_the_bank_window_option(bank_head):
    assert bank_head.open_session({}).banks.window_s == 2.0
    assert bank_head.open_session({"action_bank_window": 1}).banks.window_s == 1.0
    assert bank_head.open_session({"action_bank_window": 0}).banks is None  # off
    with pytest.raises(OptionError, match=r"action_bank_window=2.5 is outside \[0.0, 2.0\]"):
        bank_head.open_session({"action_bank_window": 2.5})  # longer than it was trained with


def test_a_failed_step_leaves_the_banks_as_they_were(bank_head, monkeypatch):
    head = bank_head
    state = head.open_session({})
    stream(head, state, 15, fps=8.0)  # key frame 0 answered: its features are in the bank
    before = {k: list(e) for k, e in state.banks.banks.items()}
    assert sum(len(e) for e in before.values()) == 2

    def fails(*args):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(head.model, "scores_from_features", fails)
    item = WorkItem("s", 15, 15 / 8, frame(15), state)
    with pytest.raises(RuntimeError):
        head.step(state, item, [tracked(15, 15 / 8)])
    assert {k: list(e) for k, e in state.banks.banks.items()} == before
    monkeypatch.undo()
    (answer,) = head.step(state, item, [tracked(15, 15 / 8)])
    assert answer.key_frame == 8 and len(state.banks) == 4
