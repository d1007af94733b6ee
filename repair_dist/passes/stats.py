"""Streaming, mergeable float64 statistics of activations.

Two estimators, one definition of mean/std (population moments, divide by ``n``):

* :class:`CoMoments` - per-channel means and co-moments of K aligned nets observed jointly
  (K=1: one net's channel statistics; K=2: adds the per-channel cross co-moment that the
  closed-form REPAIR needs).
* :class:`CrossMoments` - every channel of net A against every channel of net B: the full
  cross co-moment matrix that activation matching turns into correlations.

Both merge with Chan et al.'s parallel update, so statistics of shards combine to the
statistics of the whole up to float64 rounding, in any order, and memory never depends on the
dataset size. Conv maps are flattened over positions: every pixel is a sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def flatten_channels(x: torch.Tensor) -> torch.Tensor:
    """(N, C) or (N, C, *spatial) -> (samples, C) with every position as a sample."""
    if x.dim() == 2:
        return x
    if x.dim() < 2:
        raise ValueError(f"cannot take channel statistics of a tensor of shape {tuple(x.shape)}")
    return x.movedim(1, -1).reshape(-1, x.shape[1])


def _centered(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.to(torch.float64)
    mean = x.mean(0)
    return mean, x - mean


@dataclass
class CoMoments:
    """Per-channel statistics of K aligned activation sets: n, mean[K, C], cm[K, K, C]."""

    n: int
    mean: torch.Tensor
    cm: torch.Tensor

    @classmethod
    def from_batch(cls, *xs: torch.Tensor) -> CoMoments:
        flats = [flatten_channels(x) for x in xs]
        centered = [_centered(f) for f in flats]
        mean = torch.stack([m for m, _ in centered])
        xc = torch.stack([c for _, c in centered])  # K, S, C
        cm = torch.einsum("isc,jsc->ijc", xc, xc)
        return cls(flats[0].shape[0], mean, cm)

    def merge(self, other: CoMoments) -> CoMoments:
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        corr = delta[:, None, :] * delta[None, :, :] * (self.n * other.n / n)
        return CoMoments(n, mean, self.cm + other.cm + corr)

    def cpu(self) -> CoMoments:
        return CoMoments(self.n, self.mean.cpu(), self.cm.cpu())

    def var(self, k: int = 0) -> torch.Tensor:
        return self.cm[k, k] / self.n

    def std(self, k: int = 0) -> torch.Tensor:
        return self.var(k).clamp_min(0).sqrt()

    def unbiased_var(self, k: int = 0) -> torch.Tensor:
        return self.cm[k, k] / max(self.n - 1, 1)

    def corr(self, i: int, j: int) -> torch.Tensor:
        """Per-channel Pearson correlation between set i and set j (0 where a std is 0)."""
        denom = (self.cm[i, i] * self.cm[j, j]).clamp_min(0).sqrt()
        return _safe_div(self.cm[i, j], denom)


@dataclass
class CrossMoments:
    """All-pairs statistics of A's channels against B's: the input of activation matching."""

    n: int
    mean_a: torch.Tensor
    mean_b: torch.Tensor
    m2_a: torch.Tensor
    m2_b: torch.Tensor
    c_ab: torch.Tensor

    @classmethod
    def from_batch(cls, a: torch.Tensor, b: torch.Tensor, cross: bool = True) -> CrossMoments:
        """Moments of one batch. ``cross=False`` skips the C_a x C_b co-moment GEMM (the bulk
        of the cost) when only per-channel moments are needed, e.g. REPAIR's goal statistics;
        ``c_ab`` is then empty and :meth:`corr` refuses."""
        fa, fb = flatten_channels(a), flatten_channels(b)
        if fa.shape[0] != fb.shape[0]:
            raise ValueError(f"probe shapes disagree: {tuple(a.shape)} vs {tuple(b.shape)}")
        mean_a, ca = _centered(fa)
        mean_b, cb = _centered(fb)
        return cls(
            fa.shape[0],
            mean_a,
            mean_b,
            (ca * ca).sum(0),
            (cb * cb).sum(0),
            ca.T @ cb if cross else torch.zeros(0, dtype=ca.dtype, device=ca.device),
        )

    @property
    def has_cross(self) -> bool:
        return self.c_ab.numel() > 0

    def merge(self, other: CrossMoments) -> CrossMoments:
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        w = self.n * other.n / n
        da = other.mean_a - self.mean_a
        db = other.mean_b - self.mean_b
        return CrossMoments(
            n,
            self.mean_a + da * (other.n / n),
            self.mean_b + db * (other.n / n),
            self.m2_a + other.m2_a + da * da * w,
            self.m2_b + other.m2_b + db * db * w,
            self.c_ab + other.c_ab + torch.outer(da, db) * w
            if self.has_cross and other.has_cross
            else self.c_ab[:0],
        )

    def cpu(self) -> CrossMoments:
        return CrossMoments(
            self.n, *(t.cpu() for t in (self.mean_a, self.mean_b, self.m2_a, self.m2_b, self.c_ab))
        )

    def corr(self) -> torch.Tensor:
        """Pearson correlation matrix [C_a, C_b]; dead (zero-variance) units correlate 0."""
        if not self.has_cross:
            raise ValueError("these moments were collected without cross terms (cross=False)")
        denom = torch.outer(self.m2_a.clamp_min(0).sqrt(), self.m2_b.clamp_min(0).sqrt())
        return _safe_div(self.c_ab, denom).clamp(-1.0, 1.0)

    def aligned(self, perm_b: torch.Tensor) -> CoMoments:
        """Per-channel joint statistics of A and of B permuted by ``perm_b`` (REPAIR goals)."""
        idx = torch.arange(len(self.mean_a))
        mean = torch.stack([self.mean_a, self.mean_b[perm_b]])
        cm = torch.empty(2, 2, len(self.mean_a), dtype=torch.float64)
        cm[0, 0] = self.m2_a
        cm[1, 1] = self.m2_b[perm_b]
        # Without cross terms the A-B co-moment is unknown: NaN, refused by closed_form.
        cross = self.c_ab[idx, perm_b] if self.has_cross else torch.full_like(self.m2_a, math.nan)
        cm[0, 1] = cm[1, 0] = cross
        return CoMoments(self.n, mean, cm)


def _safe_div(num: torch.Tensor, denom: torch.Tensor) -> torch.Tensor:
    tiny = torch.finfo(num.dtype).tiny
    out = torch.where(denom > tiny, num / denom.clamp_min(tiny), torch.zeros_like(num))
    return torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


class StatsDict(dict):
    """A dict of mergeable statistics that is itself mergeable (key by key)."""

    def add(self, key: object, part: object) -> None:
        """Merge one partial result into ``self[key]`` in place (the per-batch update)."""
        self[key] = self[key].merge(part) if key in self else part

    def merge(self, other: dict) -> StatsDict:
        out = StatsDict(self)
        for k, v in other.items():
            out.add(k, v)
        return out

    def cpu(self) -> StatsDict:
        return StatsDict({k: v.cpu() for k, v in self.items()})
