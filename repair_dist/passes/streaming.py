"""The alignment pass's statistics engine: the same moments as :class:`~.stats.CrossMoments`,
computed with as little work per batch as the math allows.

Why a separate engine: a merge trial runs this pass for every candidate, and its cost is
judged against a plain forward of the two nets (``benchmarks/bench_stats.py``). Profiling
showed the time going to (1) a dozen small per-probe tensor ops per batch (Chan merges,
float64 conversions, constant-unit checks), each costing Python/dispatch overhead comparable
to the arithmetic, and (2) first-touch page faults of per-probe centred buffers that were
kept for the whole pass. So:

* inside the hooks each probe does only the unavoidable passes over its activation: the
  per-channel sum, the centring write, the sum of squares and (matching probes only) the
  per-channel min/max; net B's hook runs the float32 cross GEMM against A's centred copy
  at once, so only A's matching probes keep a centred buffer while B runs, and every other
  centring reuses one scratch buffer that stays hot in cache;
* after each batch, the float64 Chan update of *all* probes' means and sums of squares is a
  handful of vector ops over one flat vector (both nets, every probe), plus an in-place
  add and rank-1 update of each cross matrix.

The numbers are those of :meth:`CrossMoments.from_centred` followed by :meth:`CrossMoments.merge`
per batch (float32 batch-centred moments, float64 merge across batches) up to float64
rounding, so the pass's results over shards of whole batches still merge to the whole.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .probes import Probe
from .stats import CrossMoments, StatsDict


@dataclass
class BatchProbe:
    """One batch of one probe of one net, in float32: per-channel ``s`` (sum), ``m2`` (sum of
    squares about the batch mean) and, at matching probes, exact ``lo``/``hi`` extremes.
    ``images`` x ``positions`` samples per channel (positions = 1 for a linear layer)."""

    s: torch.Tensor
    m2: torch.Tensor
    images: int
    positions: int
    lo: torch.Tensor | None = None
    hi: torch.Tensor | None = None


class Workspace:
    """Float32 buffers of one pass: A's centred copy per matching probe (read by B's hook)
    and one shared scratch for every centring that is consumed inside its own hook.

    Buffers are reused across batches, so a pass touches new memory once, not per batch.
    """

    def __init__(self) -> None:
        self.kept: dict[Probe, torch.Tensor] = {}
        self._flat: torch.Tensor | None = None
        self._views: dict[tuple[torch.Size, torch.device], torch.Tensor] = {}

    def scratch(self, shape: torch.Size, device: torch.device) -> torch.Tensor:
        view = self._views.get((shape, device))
        if view is not None:
            return view
        numel = math.prod(shape)
        flat = self._flat
        if flat is None or flat.numel() < numel or flat.device != device:
            self._flat = flat = torch.empty(numel, dtype=torch.float32, device=device)
            self._views.clear()  # views of the old storage would keep it alive
        view = self._views[(shape, device)] = flat[:numel].view(shape)
        return view

    def keep(self, probe: Probe, shape: torch.Size, device: torch.device) -> torch.Tensor:
        buf = self.kept.get(probe)
        if buf is None or buf.shape != shape or buf.device != device:
            buf = self.kept[probe] = torch.empty(shape, dtype=torch.float32, device=device)
        return buf


def centre_into(
    out: torch.Tensor,
    relu: bool,
    ws: Workspace,
    keep: Probe | None = None,
    extremes: bool = False,
) -> tuple[torch.Tensor, BatchProbe]:
    """Centre ``out`` (ReLU first if asked) by its batch mean into ``ws``'s buffer kept for
    probe ``keep``, or else into the scratch; ``extremes``: also the exact per-channel min
    and max (matching probes: they tell constant units exactly).

    (N, C) stays (N, C); (N, C, *spatial) is viewed as (N, C, L), never relaid out. Returns
    the centred float32 data and its per-channel moments.
    """
    x = out.detach()
    if x.dim() == 2:
        raw, dims, positions = x, 0, 1
    elif x.dim() > 2:
        raw = x.reshape(x.shape[0], x.shape[1], -1)
        dims, positions = (0, 2), raw.shape[2]
    else:
        raise ValueError(f"cannot take channel statistics of a tensor of shape {tuple(x.shape)}")
    if keep is None:
        buf = ws.scratch(raw.shape, raw.device)
    else:
        buf = ws.keep(keep, raw.shape, raw.device)
    v = torch.clamp_min(raw, 0, out=buf) if relu else raw
    lo = hi = None
    if extremes:
        lo, hi = v.amin(dims).float(), v.amax(dims).float()
    s = v.sum(dims, dtype=torch.float32)
    flat = raw.dim() == 2
    col = s if flat else s[:, None]
    alpha = 1.0 / (raw.shape[0] * positions)
    if relu:
        buf.sub_(col, alpha=alpha)
    else:
        torch.sub(v, col, alpha=alpha, out=buf)
    if flat:
        m2 = torch.linalg.vecdot(buf, buf, dim=0)
    else:
        m2 = torch.linalg.vecdot(buf, buf, dim=-1).sum(0)
    return buf, BatchProbe(s, m2, raw.shape[0], positions, lo, hi)


def cross_gemm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """C_a x C_b float32 sum of products of two centred batches, float32 even under autocast."""
    with torch.autocast(a.device.type, enabled=False):
        if a.dim() == 2:
            return a.T @ b
        return torch.bmm(a, b.transpose(1, 2)).sum(0)  # one GEMM per image, no relayout


class RunningMoments:
    """Float64 running moments of every probe of A and B, merged batch by batch (Chan).

    All means and sums of squares live in flat vectors ([A's probes..., B's probes...]), so
    one batch's update costs a fixed handful of vector ops whatever the number of probes.
    """

    def __init__(self, probes: Sequence[Probe], cross: Sequence[Probe]) -> None:
        self.probes = list(probes)
        self.cross = list(cross)
        self.images = 0

    def _layout(self, parts_a: dict[Probe, BatchProbe]) -> None:
        sizes = [len(parts_a[p].s) for p in self.probes]
        self.sizes = sizes
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        self.total = sum(sizes)
        device = parts_a[self.probes[0]].s.device
        self.pos = {p: parts_a[p].positions for p in self.probes}
        pos = [
            torch.full((c,), float(self.pos[p])) for p, c in zip(self.probes, sizes, strict=True)
        ]
        self.positions = torch.cat(pos * 2).to(device, torch.float64)
        self.slot = {p: i for i, p in enumerate(self.probes)}

    def add(
        self,
        images: int,
        parts_a: dict[Probe, BatchProbe],
        parts_b: dict[Probe, BatchProbe],
        crosses: dict[Probe, torch.Tensor],
    ) -> None:
        order = [parts_a[p] for p in self.probes] + [parts_b[p] for p in self.probes]
        both = torch.cat([q.s for q in order] + [q.m2 for q in order]).double()
        ext = [parts_a[p] for p in self.cross] + [parts_b[p] for p in self.cross]
        lohi = torch.cat([q.lo for q in ext] + [q.hi for q in ext]) if ext else None
        if self.images == 0:
            self._layout(parts_a)
            self.mean = both[: 2 * self.total].div_(self.positions * images)
            self.m2 = both[2 * self.total :]
            self.delta = torch.empty_like(self.mean)
            self.deltas = {}
            for p in self.cross:
                a = self.offsets[self.slot[p]]
                c = self.sizes[self.slot[p]]
                b = self.total + a
                self.deltas[p] = (self.delta[a : a + c], self.delta[b : b + c])
            self.c = {p: crosses[p].double() for p in self.cross}
            self.lohi = lohi
            self.images = images
            return
        n0, n = self.images, self.images + images
        delta = self.delta
        torch.div(both[: 2 * self.total], self.positions * images, out=delta).sub_(self.mean)
        self.mean.add_(delta, alpha=images / n)
        w = n0 * images / n
        self.m2.add_(both[2 * self.total :]).addcmul_(delta, delta * self.positions, value=w)
        for p in self.cross:
            da, db = self.deltas[p]
            self.c[p].add_(crosses[p]).addr_(da, db, alpha=w * self.pos[p])
        if lohi is not None:
            e = len(lohi) // 2
            torch.minimum(self.lohi[:e], lohi[:e], out=self.lohi[:e])
            torch.maximum(self.lohi[e:], lohi[e:], out=self.lohi[e:])
        self.images = n

    def result(self) -> StatsDict:
        """One :class:`CrossMoments` per probe (on the CPU); empty before any batch.

        Every tensor is a fresh copy, so state built under ``inference_mode`` never leaks out.
        """
        out = StatsDict()
        if self.images == 0:
            return out
        mean, m2 = self.mean.cpu(), self.m2.cpu()
        ext = len(self.cross) and self.lohi.numel() // 4  # A's, then B's, lo then hi
        lohi = self.lohi.double().cpu() if self.cross else None
        lo, hi = (lohi[: 2 * ext], lohi[2 * ext :]) if self.cross else (None, None)
        cross_at: dict[Probe, int] = {}
        off = 0
        for p in self.cross:
            cross_at[p] = off
            off += self.sizes[self.slot[p]]
        empty = torch.zeros(0, dtype=torch.float64)
        for p in self.probes:
            i = self.slot[p]
            a, c = self.offsets[i], self.sizes[i]
            b = self.total + a
            n = self.images * self.pos[p]
            moments = (n, mean[a : a + c], mean[b : b + c], m2[a : a + c], m2[b : b + c])
            moments = (n, *(t.clone() for t in moments[1:]))
            if p in cross_at:
                j = cross_at[p]
                extremes = (lo[j : j + c], hi[j : j + c], lo[ext + j : ext + j + c])
                extremes = (*extremes, hi[ext + j : ext + j + c])
                cab = self.c[p].cpu().clone()
                out[p] = CrossMoments(*moments, cab, *(t.clone() for t in extremes))
            else:
                out[p] = CrossMoments(*moments, empty, empty, empty, empty, empty)
        return out
