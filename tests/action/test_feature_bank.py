"""The online long-term feature bank: the operators, the per-track rings, and a model with one."""

import pytest
import torch

from models.action import ActionConfig, build_action_model
from models.action.feature_bank import BankBatch, NonLocalFBO, PoolFBO, TrackBanks

C = 6


def test_pool_operators_read_only_the_valid_entries():
    actor = torch.zeros((2, C))
    bank = BankBatch.stack([torch.tensor([[1.0] * C, [3.0] * C]), torch.zeros((0, C))], C)
    assert bank.features.shape == (2, 2, C) and bank.valid.tolist() == [[True, True], [0, 0]]
    mean = PoolFBO("avg")(actor, bank)
    top = PoolFBO("max")(actor, bank)
    assert mean[0].tolist() == [2.0] * C and top[0].tolist() == [3.0] * C
    # An empty bank reads as zeros, not as -inf or the padding.
    assert mean[1].tolist() == [0.0] * C and top[1].tolist() == [0.0] * C
    negative = BankBatch.stack([-torch.ones((1, C)), torch.zeros((0, C))], C)
    assert PoolFBO("max")(actor, negative)[0].tolist() == [-1.0] * C


def test_non_local_ignores_padding_and_keeps_the_query_without_a_bank():
    torch.manual_seed(0)
    fbo = NonLocalFBO(C, latent=4).eval()
    actor = torch.randn(1, C)
    entries = torch.randn(2, C)
    alone = fbo(actor, BankBatch.stack([entries], C))
    padded = fbo(actor.repeat(2, 1), BankBatch.stack([entries, torch.randn(5, C)], C))
    assert torch.allclose(alone[0], padded[0], atol=1e-6)
    empty = fbo(actor, BankBatch.empty(1, C))
    assert torch.allclose(empty, fbo.st_proj(actor), atol=1e-6)
    assert not torch.allclose(alone, empty)


def test_banks_read_the_past_window_only_and_cap_the_rate():
    banks = TrackBanks(window_s=2.0, per_second=1.0, max_bytes=1 << 20)
    feature = torch.ones((1, C))
    for time in [0.0, 0.5, 1.0, 2.0, 3.0]:  # 0.5 is closer than 1 s to 0: not kept
        assert all(len(r) == 0 or r.shape[1] == C for r in banks.read([7], time))
        banks.write([7], feature * time, time)
    (read,) = banks.read([7], 3.0)  # [1, 3): 1 and 2, not 3 itself (the present)
    assert read[:, 0].tolist() == [1.0, 2.0]
    (read,) = banks.read([7], 4.0)  # [2, 4)
    assert read[:, 0].tolist() == [2.0, 3.0]
    assert banks.read([8], 3.0)[0].shape[0] == 0  # another track: its own (empty) bank


def test_lost_tracks_are_forgotten_and_the_budget_holds():
    feature_bytes = C * 4
    banks = TrackBanks(window_s=3.0, per_second=1.0, max_bytes=5 * feature_bytes)
    for time in range(10_000):
        # A new track every second, each seen for 3 s: the rings of lost tracks must go.
        tracks = [time, time - 1, time - 2]
        banks.write(
            [t for t in tracks if t >= 0], torch.ones((sum(t >= 0 for t in tracks), C)), float(time)
        )
        assert banks.nbytes() <= 5 * feature_bytes
    assert len(banks.banks) <= 5


def test_an_unknown_operator_is_refused():
    with pytest.raises(ValueError, match="lfb must be one of"):
        ActionConfig.small(lfb="mean")
    with pytest.raises(ValueError, match="lfb_window_s"):
        ActionConfig.small(lfb="max", lfb_window_s=0)


@pytest.mark.parametrize("operator", ["max", "non_local"])
def test_a_model_with_a_bank_scores_as_its_features_say(operator):
    torch.manual_seed(0)
    config = ActionConfig.small(
        num_classes=3, depth=14, base_channels=8, clip_len=4, test_short_side=32, lfb=operator
    )
    model = build_action_model(config)
    clips = torch.randn(1, 3, 4, 32, 48)
    rois = torch.tensor([[0, 2.0, 2.0, 20.0, 20.0], [0, 10.0, 4.0, 40.0, 30.0]])
    channels = config.feature_channels
    bank = BankBatch.stack([torch.randn(3, channels), torch.zeros((0, channels))], channels)
    with torch.inference_mode():
        direct = model.action_scores(clips, rois, bank)
        features = model.actor_features(clips, rois)
        assert features.shape == (2, channels)
        assert torch.allclose(model.scores_from_features(features, bank), direct, atol=1e-6)
        # The bank changes the first actor's scores, and an empty bank is the default.
        assert not torch.allclose(model.action_scores(clips, rois)[0], direct[0])
        assert torch.allclose(model.action_scores(clips, rois)[1], direct[1], atol=1e-6)
    assert model.roi_head.bbox_head.fc_cls.in_features == config.head_in_channels
