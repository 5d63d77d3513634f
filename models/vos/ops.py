"""The memory read and the multi-object merge of STCN, as plain functions of tensors.

Shapes: M memory positions (frames x h x w), N query positions (h x w), Ck key channels,
Cv value channels, K objects; the memory functions also take any leading batch dimensions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

PROB_EPS = 1e-7  # the reference clamps probabilities to [eps, 1 - eps] before taking logits


def l2_affinity(memory_keys: Tensor, query_keys: Tensor) -> Tensor:
    """Negative squared L2 distance, scaled: (2 k.q - |k|^2) / sqrt(Ck), shape (M, N).

    memory_keys (..., Ck, M), query_keys (..., Ck, N). The -|q|^2 term is left out, as in the
    reference: it is the same for every memory position of a query, so no softmax over memory
    sees it.
    """
    scale = math.sqrt(memory_keys.shape[-2])
    squared_norms = memory_keys.pow(2).sum(dim=-2).unsqueeze(-1)
    # In place on the fresh (M, N) product: one pass over the largest tensor of the memory
    # read instead of three (matmul's backward needs only its inputs, so autograd allows it).
    similarity = memory_keys.transpose(-2, -1) @ query_keys
    return similarity.mul_(2 / scale).sub_(squared_norms / scale)


def topk_softmax(affinity: Tensor, top_k: int | None) -> Tensor:
    """Softmax over memory (dim -2 of (..., M, N)) of each query column, keeping only its top_k
    largest entries; the others get weight 0.

    None (or top_k >= M) is the plain softmax over all of memory, the form used in training.
    """
    if top_k is None or top_k >= affinity.shape[-2]:
        return torch.softmax(affinity, dim=-2)
    values, indices = torch.topk(affinity, k=top_k, dim=-2)
    weights = torch.softmax(values, dim=-2)  # subtracts the max first: exp cannot overflow
    return torch.zeros_like(affinity).scatter_(-2, indices, weights)


def read_memory(memory_values: Tensor, weights: Tensor) -> Tensor:
    """Weighted sum of memory values for every query position: (K, Cv, M) x (M, N) -> (K, Cv, N).

    One affinity is shared by all objects (it broadcasts over K), as in the reference.
    """
    return memory_values @ weights


def aggregate_logits(probs: Tensor, dim: int = 0) -> Tensor:
    """Soft aggregation: K per-object probabilities along `dim` -> K + 1 logits, background first.

    Background is the probability that no object is there, prod(1 - p_k); each probability is
    clamped to [eps, 1 - eps] and turned to a logit, log(p / (1 - p)).
    """
    background = torch.prod(1 - probs, dim=dim, keepdim=True)
    with_background = torch.cat([background, probs], dim=dim).clamp(PROB_EPS, 1 - PROB_EPS)
    return torch.log(with_background / (1 - with_background))


def soft_aggregate(probs: Tensor, dim: int = 0) -> Tensor:
    """K per-object probabilities along `dim` -> a distribution over {background, objects}: the
    softmax of aggregate_logits, K + 1 entries along `dim` summing to 1 at every position."""
    return torch.softmax(aggregate_logits(probs, dim), dim=dim)
