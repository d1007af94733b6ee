"""Streaming, mergeable statistics of activations: float32 per batch, float64 across batches.

Two estimators, one definition of mean/std (population moments, divide by ``n``):

* :class:`CoMoments` - per-channel means and co-moments of K aligned nets observed jointly
  (K=1: one net's channel statistics; K=2: adds the per-channel cross co-moment that the
  closed-form REPAIR needs).
* :class:`CrossMoments` - every channel of net A against every channel of net B: the full
  cross co-moment matrix that activation matching turns into correlations.

Per batch, each probe's activations are centred by their batch mean (:func:`centre`, computed
inside the forward hook, so the centred copy is the only copy, in the activation's own layout)
and the moments are float32 GEMMs/reductions of centred data: centring removes the cancellation that makes float32
moments inaccurate, so correlations stay within ~2e-6 of a float64 computation at a fraction
of its cost. Batches then merge in float64 with Chan et al.'s parallel update, so statistics of
shards made of whole batches combine to the statistics of the whole up to float64 rounding, in
any order, and memory never depends on the dataset size. (Re-splitting *one* batch into
smaller chunks changes its float32 part at about 1e-7 relative.) Conv maps are flattened over
positions: every pixel is a sample. The alignment pass computes exactly these moments with
less work per batch (:mod:`.streaming`).

A constant (dead or collapsed) unit correlates exactly 0 (:func:`constant_channels`): its
centred values are float32 rounding noise, and a correlation read from that noise would
change with the reduction order, and with it the matching of tied units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


def flatten_channels(x: torch.Tensor) -> torch.Tensor:
    """(N, C) or (N, C, *spatial) -> (samples, C) with every position as a sample."""
    if x.dim() == 2:
        return x
    if x.dim() < 2:
        raise ValueError(f"cannot take channel statistics of a tensor of shape {tuple(x.shape)}")
    return x.movedim(1, -1).reshape(-1, x.shape[1])


@dataclass
class Centred:
    """One batch of one probe, centred by its batch ``mean``: float32 ``x`` of shape
    (N, C, L) (L = positions per channel; 1 for a linear layer), in the activation's own
    layout, so no relayout copy is needed; ``m2`` its per-channel sum of squares (float64).
    """

    mean: torch.Tensor
    x: torch.Tensor
    m2: torch.Tensor

    @property
    def n(self) -> int:
        return self.x.shape[0] * self.x.shape[2]


#: A constant channel's centred values all equal c - fl(mean): at most a few float32
#: roundings of |c| (the batch sum's error grows with log n, not n). Its m2 is therefore at
#: most n * (this * |mean|)^2, and anything above proves variation.
CONSTANT_SLACK = 64 * torch.finfo(torch.float32).eps


def constant_channels(n: int, mean: torch.Tensor, m2: torch.Tensor) -> torch.Tensor:
    """Channels whose float64-merged spread is within float32 rounding of their mean: dead
    units (exactly 0 everywhere, m2 exactly 0) and units stuck at one value.

    Why a bound and not exact extremes: it needs no extra pass over the activations (a
    per-channel min and max cost about 5% of a trial's statistics pass), and the decision
    is a property of the data, not of the reduction order. A constant channel's m2 sits
    orders of magnitude below the bound and a varying channel's above it unless its spread
    is under ~1e-5 of its mean, which float32 cannot resolve anyway; float64 merges in
    another order move m2 by 1e-16 relative, so no sharding flips the decision.
    """
    return m2 <= n * (CONSTANT_SLACK * mean.abs()) ** 2


def centre(
    x: torch.Tensor,
    relu: bool = False,
    out: torch.Tensor | None = None,
) -> Centred:
    """Batch-centred float32 copy of ``x`` as (N, C, L), ReLU applied first if asked.

    Writes one new tensor (the centred data), so it is safe against later in-place ops on
    ``x`` without a defensive clone; (N, C, *spatial) is viewed as (N, C, L), never copied
    into another layout. ``out``: a buffer from the previous batch to write into (used when
    its shape fits), which keeps a pass from allocating fresh memory per probe per batch.
    """
    if x.dim() < 2:
        raise ValueError(f"cannot take channel statistics of a tensor of shape {tuple(x.shape)}")
    raw = x.detach().reshape(x.shape[0], x.shape[1], -1)
    fits = out is not None and out.shape == raw.shape and out.device == raw.device
    buf = out if fits else torch.empty(raw.shape, dtype=torch.float32, device=raw.device)
    v = torch.clamp_min(raw, 0, out=buf) if relu else raw
    mean = v.mean((0, 2), dtype=torch.float32)
    if relu:
        buf.sub_(mean[:, None])
    else:
        torch.sub(v, mean[:, None], out=buf)
    flat = buf[:, :, 0] if buf.shape[2] == 1 else None
    if flat is not None:
        m2 = torch.linalg.vecdot(flat, flat, dim=0).double()
    else:
        m2 = torch.linalg.vecdot(buf, buf, dim=-1).sum(0).double()
    return Centred(mean, buf, m2)


def _co(a: Centred, b: Centred) -> torch.Tensor:
    """Per-channel sum of products of two centred batches (float64), without a temporary."""
    if a is b:
        return a.m2
    if a.x.shape[2] == 1:
        return torch.linalg.vecdot(a.x[:, :, 0], b.x[:, :, 0], dim=0).double()
    return torch.linalg.vecdot(a.x, b.x, dim=-1).sum(0).double()


def _m2(c: Centred) -> torch.Tensor:
    return c.m2


def _cross(a: Centred, b: Centred) -> torch.Tensor:
    """C_a x C_b sum of products over every sample (float32 GEMM, float64 result).

    Kept in float32 even inside a bf16 autocast region (amp workers): the statistics'
    precision must not follow the forward's.
    """
    with torch.autocast(a.x.device.type, enabled=False):
        if a.x.shape[2] == 1:
            out = a.x[:, :, 0].T @ b.x[:, :, 0]
        else:  # one GEMM per image over its positions, then summed: no relayout copy
            out = torch.bmm(a.x, b.x.transpose(1, 2)).sum(0)
    return out.double()


@dataclass
class CoMoments:
    """Per-channel statistics of K aligned activation sets: n, mean[K, C], cm[K, K, C]."""

    n: int
    mean: torch.Tensor
    cm: torch.Tensor

    @classmethod
    def from_batch(cls, *xs: torch.Tensor) -> CoMoments:
        return cls.from_centred(*(centre(x) for x in xs))

    @classmethod
    def from_centred(cls, *cs: Centred) -> CoMoments:
        k, ch = len(cs), cs[0].x.shape[1]
        cm = torch.empty(k, k, ch, dtype=torch.float64, device=cs[0].x.device)
        for i in range(k):
            for j in range(i, k):
                cm[i, j] = cm[j, i] = _co(cs[i], cs[j])
        mean = torch.stack([c.mean for c in cs]).double()
        return cls(cs[0].n, mean, cm)

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


_EMPTY = torch.zeros(0, dtype=torch.float64)


@dataclass
class CrossMoments:
    """All-pairs statistics of A's channels against B's: the input of activation matching.

    Constant units (:func:`constant_channels`) correlate exactly 0.
    """

    n: int
    mean_a: torch.Tensor
    mean_b: torch.Tensor
    m2_a: torch.Tensor
    m2_b: torch.Tensor
    c_ab: torch.Tensor = _EMPTY

    @classmethod
    def from_batch(cls, a: torch.Tensor, b: torch.Tensor, cross: bool = True) -> CrossMoments:
        return cls.from_centred(centre(a), centre(b), cross)

    @classmethod
    def from_centred(cls, a: Centred, b: Centred, cross: bool = True) -> CrossMoments:
        """Moments of one batch. ``cross=False`` skips the C_a x C_b co-moment GEMM (the bulk
        of the cost) when only per-channel moments are needed, e.g. REPAIR's goal statistics;
        ``c_ab`` is then empty and :meth:`corr` refuses."""
        if a.n != b.n:
            raise ValueError(f"probe sample counts disagree: {a.n} vs {b.n}")
        base = (a.n, a.mean.double(), b.mean.double(), _m2(a), _m2(b))
        return cls(*base, _cross(a, b) if cross else _EMPTY.to(a.x.device))

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
        cross = self.has_cross and other.has_cross
        empty = self.c_ab[:0]
        return CrossMoments(
            n,
            self.mean_a + da * (other.n / n),
            self.mean_b + db * (other.n / n),
            self.m2_a + other.m2_a + da * da * w,
            self.m2_b + other.m2_b + db * db * w,
            torch.addr(self.c_ab + other.c_ab, da, db, alpha=w) if cross else empty,
        )

    def cpu(self) -> CrossMoments:
        return CrossMoments(self.n, *(t.cpu() for t in self._tensors()))

    def __reduce__(self):
        """Pickle as one flat array: shards' partials travel from Ray workers, and pickling
        5 tensors per probe one by one costs several times more than the bytes. On the CPU
        it travels as a NumPy array, which pickles (and crosses Ray's object store) about
        10x faster than a tensor, whose storage pickles through ``torch.save``."""
        ts = self._tensors()
        flat = torch.cat([t.reshape(-1) for t in ts])
        packed = flat.numpy() if flat.device.type == "cpu" else flat
        return (_unpack_cross_moments, (self.n, [tuple(t.shape) for t in ts], packed))

    def _tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.mean_a, self.mean_b, self.m2_a, self.m2_b, self.c_ab)

    def corr(self) -> torch.Tensor:
        """Pearson correlation matrix [C_a, C_b]; constant (dead) units correlate exactly 0."""
        if not self.has_cross:
            raise ValueError("these moments were collected without cross terms (cross=False)")
        denom = torch.outer(self.m2_a.clamp_min(0).sqrt(), self.m2_b.clamp_min(0).sqrt())
        out = _safe_div(self.c_ab, denom).clamp(-1.0, 1.0)
        out[constant_channels(self.n, self.mean_a, self.m2_a), :] = 0.0
        out[:, constant_channels(self.n, self.mean_b, self.m2_b)] = 0.0
        return out

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


def _unpack_cross_moments(
    n: int, shapes: list[tuple[int, ...]], flat: torch.Tensor | np.ndarray
) -> CrossMoments:
    if isinstance(flat, np.ndarray):  # Ray hands out read-only arrays from its object store
        flat = torch.from_numpy(flat if flat.flags.writeable else flat.copy())
    sizes = [math.prod(shape) for shape in shapes]
    parts = [t.view(shape) for t, shape in zip(flat.split(sizes), shapes, strict=True)]
    return CrossMoments(n, *parts)


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
