"""The passes over data that every study shares, as pure functions ``(nets, batches, ...) -> additive partial result``.

Each function consumes an iterable of batches and returns an object with ``merge()``; the
partial results of disjoint batch shards merge to the result over all batches. Running one
function over the whole plan (``workers=1``) or over N shards on N Ray actors gives the same
answer up to float rounding, so the science never depends on how the work is split.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..data.batches import Batch
from .probes import Probe
from .stats import Centred, CoMoments, StatsDict, centre
from .streaming import ProbeTap, RunningMoments, Workspace
from .taps import Observe, tap


def device_of(net: nn.Module) -> torch.device:
    for p in net.parameters():
        return p.device
    return torch.device("cpu")


def _centring() -> Observe:
    """An observation that centres each probe into the buffer it used on the last batch.

    Safe because every batch's centred data is reduced to moments before the next forward.
    """
    buffers: dict[Probe, torch.Tensor] = {}

    def observe(p: Probe, act: torch.Tensor) -> Centred:
        c = centre(act, relu=p.relu, out=buffers.get(p))
        buffers[p] = c.x
        return c

    return observe


@torch.no_grad()
def alignment_stats_pass(
    net_a: nn.Module,
    net_b: nn.Module,
    *,
    batches: Iterable[Batch],
    probes: Sequence[Probe],
    moments_only: Sequence[Probe] = (),
) -> StatsDict:
    """One forward of A and B per batch; cross moments of every probe at once.

    Probes in ``moments_only`` keep per-channel moments of A and B but skip the A x B cross
    matrix (REPAIR's goal statistics need no more unless ``closed_form`` is asked for).

    Permuting B does not change its function, so the correlations of every permutation group
    (and the endpoint statistics REPAIR needs) come from this single pass over unpermuted nets.
    The moments are those of :meth:`CrossMoments.from_centred` merged batch by batch; see
    :mod:`.streaming` for how they are computed cheaply.
    """
    net_a.eval()
    net_b.eval()
    device = device_of(net_a)
    probes = list(dict.fromkeys(probes))
    skip = set(moments_only)
    cross = [p for p in probes if p not in skip]
    ws = Workspace()
    taps_a = {p: ProbeTap(p, ws, keep=p not in skip) for p in probes}
    taps_b = {p: ProbeTap(p, ws, peer=None if p in skip else taps_a[p]) for p in probes}
    running = RunningMoments(probes, cross, taps_a, taps_b)
    checks = [(p, taps_a[p], taps_b[p]) for p in probes]
    # inference_mode: the many small per-batch ops skip autograd's version counting (about
    # 8% of an MLP trial pass); result() hands back ordinary tensors.
    with (
        torch.inference_mode(),
        tap(net_a, probes, {}, taps_a),
        tap(net_b, probes, {}, taps_b),
    ):
        for x, _ in batches:
            x = x.to(device, non_blocking=True)
            net_a(x)
            net_b(x)
            for p, ta, tb in checks:
                a, b = ta.part, tb.part
                if a is None or b is None:
                    raise ValueError(f"probe {p.module!r} saw no activation in a forward")
                if (a.images, a.positions) != (b.images, b.positions) or a.images != len(x):
                    raise ValueError(
                        f"probe {p.module!r} saw {a.images}x{a.positions} samples in A and "
                        f"{b.images}x{b.positions} in B for a batch of {len(x)}"
                    )
            running.add(x.shape[0])
            for _, ta, tb in checks:
                ta.part = tb.part = None
    return running.result()


@torch.no_grad()
def channel_stats_pass(
    *nets: nn.Module, batches: Iterable[Batch], modules: Sequence[str]
) -> StatsDict:
    """Joint per-channel statistics of K already-aligned nets at the outputs of ``modules``."""
    for n in nets:
        n.eval()
    device = device_of(nets[0])
    probes = [Probe(m) for m in dict.fromkeys(modules)]
    stores: list[dict[Probe, Centred]] = [{} for _ in nets]
    out = StatsDict()
    with ExitStack() as stack:
        for n, s in zip(nets, stores, strict=True):
            stack.enter_context(tap(n, probes, s, _centring()))
        for x, _ in batches:
            x = x.to(device, non_blocking=True)
            for n in nets:
                n(x)
            for p in probes:
                out.add(p.module, CoMoments.from_centred(*(s.pop(p) for s in stores)))
    return out.cpu()


@dataclass
class EvalTotals:
    """Summed loss, correct count and examples; optionally channel stats at some modules."""

    loss_sum: float = 0.0
    correct: int = 0
    n: int = 0
    points: StatsDict = field(default_factory=StatsDict)

    def merge(self, other: EvalTotals) -> EvalTotals:
        return EvalTotals(
            self.loss_sum + other.loss_sum,
            self.correct + other.correct,
            self.n + other.n,
            self.points.merge(other.points),
        )

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.n, 1)

    @property
    def acc(self) -> float:
        return self.correct / max(self.n, 1)


@torch.no_grad()
def evaluation_pass(
    net: nn.Module, *, batches: Iterable[Batch], points: Sequence[str] = ()
) -> EvalTotals:
    """Cross-entropy and accuracy (eval mode), plus channel stats at ``points`` if asked."""
    net.eval()
    device = device_of(net)
    probes = [Probe(m) for m in dict.fromkeys(points)]
    store: dict[Probe, Centred] = {}
    totals = EvalTotals()
    with tap(net, probes, store, _centring()):
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits = net(x).float()
            totals.loss_sum += float(F.cross_entropy(logits, y, reduction="sum").double())
            totals.correct += int((logits.argmax(1) == y).sum())
            totals.n += int(y.numel())
            for p in probes:
                totals.points.add(p.module, CoMoments.from_centred(store.pop(p)))
    totals.points = totals.points.cpu()
    return totals


@dataclass
class ActiveUnits:
    """Per probe, which channels were ever > 0 on the data seen (merge: logical or)."""

    active: dict[Probe, torch.Tensor] = field(default_factory=dict)

    def merge(self, other: ActiveUnits) -> ActiveUnits:
        out = dict(self.active)
        for p, hit in other.active.items():
            out[p] = out[p] | hit if p in out else hit
        return ActiveUnits(out)

    def dead(self) -> dict[Probe, int]:
        return {p: int((~hit).sum()) for p, hit in self.active.items()}


def _any_positive(_probe: Probe, act: torch.Tensor) -> torch.Tensor:
    # relu(x) > 0 exactly where x > 0, so a probe's relu flag changes nothing here
    dims = [d for d in range(act.dim()) if d != 1]
    return (act > 0).any(dim=dims) if dims else act > 0


@torch.no_grad()
def active_units_pass(
    net: nn.Module, *, batches: Iterable[Batch], probes: Sequence[Probe]
) -> ActiveUnits:
    """Which units activate at all on the data (dead units never do): a mergeable pass."""
    net.eval()
    device = device_of(net)
    probes = list(dict.fromkeys(probes))
    store: dict[Probe, torch.Tensor] = {}
    out = ActiveUnits()
    with tap(net, probes, store, _any_positive):
        for x, _ in batches:
            net(x.to(device, non_blocking=True))
            out = out.merge(ActiveUnits({p: store.pop(p).cpu() for p in probes}))
    return out
