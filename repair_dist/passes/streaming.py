"""The alignment pass's statistics engine: the same moments as :class:`~.stats.CrossMoments`,
computed with as little work per batch as the math allows.

Why a separate engine: a merge trial runs this pass for every candidate, and its cost is
judged against a plain forward of the two nets (``benchmarks/bench_stats.py``). Profiling
showed the time going to (1) a dozen small per-probe tensor ops per batch (Chan merges,
float64 conversions, constant-unit checks), each costing Python/dispatch overhead comparable
to the arithmetic, and (2) first-touch page faults of per-probe centred buffers that were
kept for the whole pass. So:

* inside the hooks each probe does only the unavoidable passes over its activation: the
  per-channel sum, the centring write and the sum of squares; net B's hook runs the float32
  cross GEMM against A's centred copy at once, so only A's matching probes keep a centred
  buffer while B runs, and every other centring reuses one scratch buffer (squared in
  place) that stays hot in cache;
* after each batch, the float64 Chan update of *all* probes' means and sums of squares is a
  handful of vector ops over one flat vector (both nets, every probe), plus an in-place
  add and rank-1 update of each cross matrix;
* constant (dead) units are told from the merged moments (:func:`.stats.constant_channels`),
  not from per-channel extremes, which cost about 5% of the pass in two more reductions.

The numbers are those of :meth:`CrossMoments.from_centred` followed by :meth:`CrossMoments.merge`
per batch (float32 batch-centred moments, float64 merge across batches) up to float64
rounding, so the pass's results over shards of whole batches still merge to the whole.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .probes import Probe
from .stats import CrossMoments, StatsDict


@dataclass
class BatchProbe:
    """One batch of one probe of one net, in float32: per-channel ``s`` (sum) and ``m2`` (sum
    of squares about the batch mean); ``images`` x ``positions`` samples per channel
    (positions = 1 for a linear layer)."""

    s: torch.Tensor
    m2: torch.Tensor
    images: int
    positions: int
    kept: torch.Tensor | None = None  #: the centred copy, when the caller keeps one


class ProbeTap:
    """The forward hook of one probe of one net in the alignment pass.

    A's tap of a matching probe keeps its centred copy; B's tap of that probe (``peer`` = A's
    tap) multiplies its own centred data with it at once. Everything a call needs is bound
    here, so a hook does no lookups: with dozens of probes per batch the dict lookups and
    dataclass hashes alone cost a few percent of an MLP pass.
    """

    __slots__ = ("relu", "ws", "keep", "peer", "into", "gemm_out", "part", "cross", "_use")

    def __init__(
        self, probe: Probe, ws: Workspace, keep: bool = False, peer: ProbeTap | None = None
    ) -> None:
        self.relu = probe.relu
        self.ws = ws
        self.keep: torch.Tensor | None = None
        if keep:  # any tensor marks "keep": centre_into sizes the real one
            self.keep = torch.empty(0, dtype=torch.float32)
        self.peer = peer
        #: where the sums and the cross matrix go (set by :class:`RunningMoments`)
        self.into: tuple[torch.Tensor, torch.Tensor] | None = None
        self.gemm_out: torch.Tensor | None = None
        self.part: BatchProbe | None = None
        self.cross: torch.Tensor | None = None
        self._use = None if peer is None else self._gemm

    def _gemm(self, centred: torch.Tensor) -> torch.Tensor:
        return cross_gemm(self.peer.keep, centred, self.gemm_out)

    def __call__(self, _probe: Probe, act: torch.Tensor) -> None:
        self.part, self.cross = centre_into(
            act, self.relu, self.ws, self.keep, self._use, self.into
        )
        if self.part.kept is not None:
            self.keep = self.part.kept


class Workspace:
    """The float32 scratch of one pass: every centring consumed inside its own hook (moments
    only, or B's side of a cross matrix) is written here, so it stays hot in cache.

    Reused across batches, so a pass touches new memory once, not per batch.
    """

    def __init__(self) -> None:
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


def reuse(buf: torch.Tensor | None, shape: torch.Size, device: torch.device) -> torch.Tensor:
    """``buf`` itself, or its leading rows for a smaller last batch, or a new float32 buffer."""
    fits = buf is not None and buf.device == device and buf.shape[1:] == shape[1:]
    if fits and buf.shape[0] >= shape[0]:
        return buf[: shape[0]]
    return torch.empty(shape, dtype=torch.float32, device=device)


def centre_into(
    out: torch.Tensor,
    relu: bool,
    ws: Workspace,
    keep: torch.Tensor | None = None,
    use: Callable[[torch.Tensor], torch.Tensor] | None = None,
    into: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[BatchProbe, torch.Tensor | None]:
    """Per-channel moments of ``out`` (ReLU first if asked) about its batch mean.

    The centred float32 copy goes into ``keep`` (a buffer the caller keeps, sized by
    :func:`reuse`: A's copy, read later by B's hook), or else into the scratch, where ``use``
    may read it (B's cross GEMM) before it is squared in place. Squaring in place keeps a probe's working set to one buffer
    the size of the activation, so the nets' own layers still find their weights and inputs
    in cache (a second buffer slowed them by a fifth). (N, C) stays (N, C); (N, C, *spatial)
    is viewed as (N, C, L), never relaid out. ``into``: where to write the sum and the sum of
    squares (views of :class:`RunningMoments`' staging vector, so a batch allocates nothing
    of its own). Returns the moments and ``use``'s result.
    """
    x = out.detach()
    if x.dim() == 2:
        raw, dims, positions = x, 0, 1
    elif x.dim() > 2:
        raw = x.reshape(x.shape[0], x.shape[1], -1)
        dims, positions = (0, 2), raw.shape[2]
    else:
        raise ValueError(f"cannot take channel statistics of a tensor of shape {tuple(x.shape)}")
    buf = ws.scratch(raw.shape, raw.device) if keep is None else reuse(keep, raw.shape, raw.device)
    v = torch.clamp_min(raw, 0, out=buf) if relu else raw
    s_out, m2_out = into if into is not None else (None, None)
    s = torch.sum(v, dims, dtype=torch.float32, out=s_out)
    col = s if raw.dim() == 2 else s[:, None]
    alpha = 1.0 / (raw.shape[0] * positions)
    if relu:
        buf.sub_(col, alpha=alpha)
    else:
        torch.sub(v, col, alpha=alpha, out=buf)
    used = use(buf) if use is not None else None
    # A kept copy must stay centred: its squares go to the scratch. (vecdot would allocate
    # a fresh product per probe, which costs more in first-touch page faults than the math.)
    squares = buf if keep is None else ws.scratch(raw.shape, raw.device)
    torch.mul(buf, buf, out=squares)
    m2 = torch.sum(squares, dims, dtype=torch.float32, out=m2_out)
    return BatchProbe(s, m2, raw.shape[0], positions, buf if keep is not None else None), used


def cross_gemm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """C_a x C_b float32 sum of products of two centred batches, float32 even under autocast;
    ``out``: a buffer to write it into."""
    if torch.is_autocast_enabled(a.device.type):  # the context costs ~4 us even when off
        with torch.autocast(a.device.type, enabled=False):
            return cross_gemm(a, b, out)
    if a.dim() == 2:
        return torch.mm(a.T, b, out=out)
    # one GEMM per image, no relayout
    return torch.sum(torch.bmm(a, b.transpose(1, 2)), 0, out=out)


class RunningMoments:
    """Float64 running moments of every probe of A and B, merged batch by batch (Chan), read
    from the probes' taps after each batch.

    All means and sums of squares live in flat vectors ([A's probes..., B's probes...]), so
    one batch's update costs a fixed handful of vector ops whatever the number of probes.
    """

    def __init__(
        self,
        probes: Sequence[Probe],
        cross: Sequence[Probe],
        taps_a: dict[Probe, ProbeTap],
        taps_b: dict[Probe, ProbeTap],
    ) -> None:
        self.probes = list(probes)
        self.cross = list(cross)
        self.taps = [taps_a[p] for p in self.probes] + [taps_b[p] for p in self.probes]
        self.cross_taps = [taps_b[p] for p in self.cross]
        self.images = 0

    def _layout(self) -> None:
        n_probes = len(self.probes)
        parts = [t.part for t in self.taps[:n_probes]]
        sizes = [len(q.s) for q in parts]
        self.sizes = sizes
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        self.total = total = sum(sizes)
        device = parts[0].s.device
        self.pos = {p: q.positions for p, q in zip(self.probes, parts, strict=True)}
        pos = [torch.full((c,), float(q.positions)) for q, c in zip(parts, sizes, strict=True)]
        self.positions = torch.cat(pos * 2).to(device, torch.float64)
        self.slot = {p: i for i, p in enumerate(self.probes)}
        # From the second batch on, the taps write each probe's sums and sums of squares
        # straight into one float32 staging vector ([s of A, s of B, m2 of A, m2 of B]) and
        # each cross matrix into a buffer of its own: a batch then allocates nothing but the
        # nets' own activations. (Dozens of small tensors per batch split the heap's free
        # chunks, so the nets' layer outputs landed on cold memory: +15% on an MLP pass.)
        self.stage = torch.empty(4 * total, dtype=torch.float32, device=device)
        self.stage64 = torch.empty(4 * total, dtype=torch.float64, device=device)
        for i, tap in enumerate(self.taps):
            at = (i // n_probes) * total + self.offsets[i % n_probes]
            c = sizes[i % n_probes]
            tap.into = (self.stage[at : at + c], self.stage[2 * total + at : 2 * total + at + c])
        for tap in self.cross_taps:
            tap.gemm_out = torch.empty_like(tap.cross)

    def add(self, images: int) -> None:
        """Merge the batch of ``images`` that the taps just saw."""
        if self.images:  # the taps wrote into the staging vector
            both = self.stage64.copy_(self.stage)
        else:
            parts = [t.part for t in self.taps]
            both = torch.cat([q.s for q in parts] + [q.m2 for q in parts]).double()
            self._layout()
            self.mean = both[: 2 * self.total].div_(self.positions * images)
            self.m2 = both[2 * self.total :]
            self.delta = torch.empty_like(self.mean)
            self.deltas = []
            for p in self.cross:
                a = self.offsets[self.slot[p]]
                c = self.sizes[self.slot[p]]
                b = self.total + a
                self.deltas.append((self.delta[a : a + c], self.delta[b : b + c], self.pos[p]))
            self.c = [tap.cross.double() for tap in self.cross_taps]
            self.images = images
            return
        n0, n = self.images, self.images + images
        delta = self.delta
        torch.div(both[: 2 * self.total], self.positions * images, out=delta).sub_(self.mean)
        self.mean.add_(delta, alpha=images / n)
        w = n0 * images / n
        self.m2.add_(both[2 * self.total :]).addcmul_(delta, delta * self.positions, value=w)
        for c, tap, (da, db, pos) in zip(self.c, self.cross_taps, self.deltas, strict=True):
            c.add_(tap.cross).addr_(da, db, alpha=w * pos)
        self.images = n

    def result(self) -> StatsDict:
        """One :class:`CrossMoments` per probe (on the CPU); empty before any batch.

        Every tensor is a fresh copy, so state built under ``inference_mode`` never leaks out.
        """
        out = StatsDict()
        if self.images == 0:
            return out
        mean, m2 = self.mean.cpu(), self.m2.cpu()
        cross_c = dict(zip(self.cross, self.c, strict=True))
        for p in self.probes:
            i = self.slot[p]
            a, c = self.offsets[i], self.sizes[i]
            b = self.total + a
            n = self.images * self.pos[p]
            moments = (mean[a : a + c], mean[b : b + c], m2[a : a + c], m2[b : b + c])
            moments = tuple(t.clone() for t in moments)
            if p in cross_c:
                out[p] = CrossMoments(n, *moments, cross_c[p].cpu().clone())
            else:
                out[p] = CrossMoments(n, *moments)
        return out
