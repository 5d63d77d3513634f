"""The online long-term feature bank (LFB, Wu et al., CVPR 2019), past-only and per actor.

The paper's bank is built offline over a whole movie: every person's features of a window
centred on the key frame, 30 s into the future too, whoever they are. Here the bank is what a
live stream can know: for each tracked actor, the features the head computed for that same
actor at earlier key frames of the session, within `window_s` seconds before the key frame and
at most `per_second` of them a second (TrackBanks). A feature-bank operator (FBO) reads an
actor's bank beside its current feature: "max" or "avg" pool it, "non_local" attends to it from
the current feature (MMAction2's FBONonLocal, as linear layers over feature vectors); its output
is concatenated to the current feature before the classifier (models.action.roi_head).

An actor's feature is the box head's pooled vector (ACRN relation map, average over time, max
over space): what the classifier reads without a bank.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import torch
from torch import Tensor, nn

OPERATORS = ("none", "max", "avg", "non_local")
# A key frame's time may sit a rounding error before the whole second it stands for.
TIME_EPSILON = 1e-6


@dataclass
class BankBatch:
    """The banks of N actors, padded to the longest: features (N, L, C), valid (N, L) bool."""

    features: Tensor
    valid: Tensor

    @classmethod
    def stack(cls, banks: list[Tensor], channels: int, device=None) -> BankBatch:
        """From each actor's bank (L_i, C) (L_i may be 0)."""
        length = max((len(b) for b in banks), default=0)
        features = torch.zeros((len(banks), length, channels), device=device)
        valid = torch.zeros((len(banks), length), dtype=torch.bool, device=device)
        for k, bank in enumerate(banks):
            if len(bank):
                features[k, : len(bank)] = bank
            valid[k, : len(bank)] = True
        return cls(features, valid)

    @classmethod
    def empty(cls, actors: int, channels: int, device=None) -> BankBatch:
        return cls.stack([torch.zeros((0, channels))] * actors, channels, device)


class PoolFBO(nn.Module):
    """ "max" or "avg": the bank pooled to one vector (zeros for an empty bank)."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode

    def forward(self, actor: Tensor, bank: BankBatch) -> Tensor:
        features, valid = bank.features.to(actor.dtype), bank.valid
        if features.shape[1] == 0:
            return actor.new_zeros(actor.shape)
        mask = valid.unsqueeze(-1)
        count = valid.sum(dim=1, keepdim=True)
        if self.mode == "avg":
            return (features * mask).sum(dim=1) / count.clamp(min=1)
        pooled = features.masked_fill(~mask, -math.inf).amax(dim=1)
        return torch.where(count > 0, pooled, torch.zeros_like(pooled))


class NonLocalLayer(nn.Module):
    """One attention from the current feature (query) to the bank (keys, values), as
    MMAction2's NonLocalLayer: scaled dot product, the result projected, layer-normed, ReLU,
    dropout, added to the query. An actor with an empty bank keeps its query."""

    def __init__(self, latent: int, dropout: float):
        super().__init__()
        self.query = nn.Linear(latent, latent)
        self.key = nn.Linear(latent, latent)
        self.value = nn.Linear(latent, latent)
        self.out = nn.Linear(latent, latent)
        self.norm = nn.LayerNorm(latent)
        self.dropout = nn.Dropout(dropout)

    def forward(self, st: Tensor, lt: Tensor, valid: Tensor) -> Tensor:
        scale = st.shape[-1] ** -0.5
        logits = torch.einsum("nc,nlc->nl", self.query(st), self.key(lt)) * scale
        weights = torch.softmax(logits.masked_fill(~valid, -math.inf), dim=1)
        weights = torch.nan_to_num(weights)  # a row with no valid entry: all zero
        read = torch.einsum("nl,nlc->nc", weights, self.value(lt))
        update = self.dropout(torch.relu(self.norm(self.out(read))))
        has_bank = valid.any(dim=1, keepdim=True)
        return st + torch.where(has_bank, update, torch.zeros_like(update))


class NonLocalFBO(nn.Module):
    """ "non_local": current feature and bank projected to `latent` channels, then `layers`
    NonLocalLayers (MMAction2: 2 layers, dropout 0.2)."""

    def __init__(self, channels: int, latent: int, layers: int = 2, dropout: float = 0.2):
        super().__init__()
        self.st_proj = nn.Linear(channels, latent)
        self.lt_proj = nn.Linear(channels, latent)
        self.layers = nn.ModuleList(NonLocalLayer(latent, dropout) for _ in range(layers))

    def forward(self, actor: Tensor, bank: BankBatch) -> Tensor:
        st = self.st_proj(actor)
        lt = self.lt_proj(bank.features.to(actor.dtype))
        for layer in self.layers:
            st = layer(st, lt, bank.valid)
        return st


def build_fbo(operator: str, channels: int, latent: int) -> nn.Module | None:
    if operator == "none":
        return None
    if operator == "non_local":
        return NonLocalFBO(channels, latent)
    return PoolFBO(operator)


def fbo_channels(operator: str, channels: int, latent: int) -> int:
    """Channels the operator adds to the classifier's input."""
    return {"none": 0, "non_local": latent}.get(operator, channels)


class TrackBanks:
    """One session's banks: per track, its past features (time, vector) within `window_s`
    seconds, at most `per_second` a second (a feature closer than 1 / per_second to the last one
    kept is not stored). Entries older than the window are dropped as time moves on, and so is
    a track's bank once empty (a lost track); `max_bytes` caps the whole: over it, the oldest
    entries go first. Memory is bounded by tracks x window x per_second x channels."""

    def __init__(self, window_s: float, per_second: float, max_bytes: int):
        self.window_s = window_s
        self.min_gap_s = 1.0 / per_second
        self.max_bytes = max_bytes
        self.banks: dict[int, deque[tuple[float, Tensor]]] = {}

    def read(self, track_ids: list[int], time: float) -> list[Tensor]:
        """Each track's features from [time - window, time): strictly the past."""
        reads = []
        for track_id in track_ids:
            entries = self.banks.get(track_id, ())
            kept = [
                f
                for t, f in entries
                if time - self.window_s - TIME_EPSILON <= t < time - TIME_EPSILON
            ]
            reads.append(torch.stack(kept) if kept else torch.zeros((0, 0)))
        return reads

    def write(self, track_ids: list[int], features: Tensor, time: float) -> None:
        """Store the actors' features of the key frame at `time` (after reading: the bank of a
        key frame never holds its own features), then forget what fell out of the window."""
        for track_id, feature in zip(track_ids, features.detach().cpu(), strict=True):
            entries = self.banks.setdefault(track_id, deque())
            if not entries or time - entries[-1][0] >= self.min_gap_s - TIME_EPSILON:
                entries.append((time, feature.clone()))
        self._forget(time)

    def _forget(self, time: float) -> None:
        for track_id in list(self.banks):
            entries = self.banks[track_id]
            while entries and entries[0][0] < time - self.window_s - TIME_EPSILON:
                entries.popleft()
            if not entries:
                del self.banks[track_id]
        while self.nbytes() > self.max_bytes:
            oldest = min(self.banks, key=lambda k: self.banks[k][0][0])
            self.banks[oldest].popleft()
            if not self.banks[oldest]:
                del self.banks[oldest]

    def copy(self) -> TrackBanks:
        """A copy whose writes leave this one as it is (the features themselves are shared:
        nothing changes a stored feature)."""
        copied = TrackBanks(self.window_s, 1.0 / self.min_gap_s, self.max_bytes)
        copied.banks = {k: deque(e) for k, e in self.banks.items()}
        return copied

    def nbytes(self) -> int:
        return sum(f.numel() * f.element_size() for e in self.banks.values() for _, f in e)

    def __len__(self) -> int:
        return sum(len(e) for e in self.banks.values())
