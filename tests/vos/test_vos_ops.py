"""The memory read and the soft aggregation, on examples small enough to check by hand."""

import math

import pytest
import torch

from models.vos.ops import (
    PROB_EPS,
    aggregate_logits,
    l2_affinity,
    read_memory,
    soft_aggregate,
    topk_softmax,
)


def test_soft_aggregation_of_two_objects_by_hand():
    # p = (0.8, 0.5): background = 0.2 * 0.5 = 0.1; odds p / (1 - p) are 1/9, 4 and 1, and the
    # softmax of log-odds is odds / sum(odds) = (1/9, 4, 1) / (46/9) = (1, 36, 9) / 46.
    probs = torch.tensor([0.8, 0.5]).view(2, 1, 1)
    aggregated = soft_aggregate(probs)
    assert aggregated.shape == (3, 1, 1)
    expected = torch.tensor([1.0, 36.0, 9.0]) / 46
    assert torch.allclose(aggregated.flatten(), expected, atol=1e-6)
    logits = aggregate_logits(probs).flatten()
    assert torch.allclose(logits, torch.tensor([math.log(1 / 9), math.log(4.0), 0.0]), atol=1e-6)


def test_soft_aggregation_clamps_certain_probabilities():
    # p = 1 makes background 0: both are clamped to [1e-7, 1 - 1e-7] before the logits
    # (float64 here: in float32, 1 - 1e-7 rounds and the logit is 15.94, not 16.12).
    probs = torch.tensor([1.0, 0.0], dtype=torch.float64).view(2, 1)
    logits = aggregate_logits(probs).flatten()
    assert torch.isfinite(logits).all()
    certain = math.log((1 - PROB_EPS) / PROB_EPS)
    assert logits.tolist() == pytest.approx([-certain, certain, -certain], rel=1e-5)
    aggregated = soft_aggregate(probs).flatten()
    assert aggregated[1] == pytest.approx(1.0, abs=1e-6)
    assert aggregated.sum() == pytest.approx(1.0, abs=1e-6)


def test_soft_aggregation_along_another_dimension():
    probs = torch.rand(2, 3, 4, 5)  # (batch, objects, H, W) as in training
    along_objects = soft_aggregate(probs, dim=1)
    assert along_objects.shape == (2, 4, 4, 5)
    assert torch.allclose(along_objects[1], soft_aggregate(probs[1]))


def test_l2_affinity_is_negative_squared_distance_up_to_the_query_norm():
    # Keys (0, 0), (1, 0), (3, 4) and the query (1, 0): 2 k.q - |k|^2 = 0, 1, -19.
    memory_keys = torch.tensor([[0.0, 1.0, 3.0], [0.0, 0.0, 4.0]])  # (Ck=2, M=3)
    query = torch.tensor([[1.0], [0.0]])  # (Ck=2, N=1)
    affinity = l2_affinity(memory_keys, query)
    assert affinity.shape == (3, 1)
    assert torch.allclose(affinity.flatten(), torch.tensor([0.0, 1.0, -19.0]) / math.sqrt(2))


def test_top1_readout_takes_the_value_of_the_nearest_memory_key():
    memory_keys = torch.tensor([[0.0, 1.0, 3.0], [0.0, 0.0, 4.0]])
    memory_values = torch.tensor([[[10.0, 20.0, 30.0]]])  # (K=1, Cv=1, M=3)
    queries = torch.tensor([[0.9, 2.9, -0.2], [0.1, 3.9, 0.0]])  # nearest: key 1, key 2, key 0
    weights = topk_softmax(l2_affinity(memory_keys, queries), top_k=1)
    readout = read_memory(memory_values, weights)
    assert readout.flatten().tolist() == [20.0, 30.0, 10.0]


def test_topk_softmax_weights_by_hand():
    # Affinities 0, 1, -19 (one query): the top 2 are 1 and 0 -> e / (e + 1) and 1 / (e + 1).
    affinity = torch.tensor([[0.0], [1.0], [-19.0]])
    weights = topk_softmax(affinity, top_k=2).flatten()
    e = math.e
    assert weights.tolist() == pytest.approx([1 / (e + 1), e / (e + 1), 0.0], abs=1e-6)


def test_topk_softmax_keeps_k_entries_per_query_and_sums_to_one():
    affinity = torch.randn(50, 7)
    weights = topk_softmax(affinity, top_k=20)
    assert ((weights > 0).sum(dim=0) == 20).all()
    assert torch.allclose(weights.sum(dim=0), torch.ones(7))
    # The kept entries are the largest ones of each column.
    smallest_kept = torch.where(weights > 0, affinity, torch.inf).amin(dim=0)
    largest_dropped = torch.where(weights > 0, -torch.inf, affinity).amax(dim=0)
    assert (smallest_kept >= largest_dropped).all()


def test_topk_beyond_the_memory_size_is_the_full_softmax():
    affinity = torch.randn(5, 3)
    full = torch.softmax(affinity, dim=0)
    assert torch.allclose(topk_softmax(affinity, top_k=20), full)
    assert torch.allclose(topk_softmax(affinity, top_k=None), full)


def test_topk_softmax_does_not_overflow():
    affinity = torch.tensor([[1000.0], [999.0], [-5.0]])
    weights = topk_softmax(affinity, top_k=2).flatten()
    assert torch.isfinite(weights).all()
    assert weights[0] == pytest.approx(math.e / (math.e + 1), abs=1e-6)
