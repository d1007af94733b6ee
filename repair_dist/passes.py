"""The passes over data, as pure functions ``(nets, batches, ...) -> additive partial result``.

Each function consumes an iterable of batches and returns an object with ``merge()``; the
partial results of disjoint batch shards merge to the result over all batches. Running one
function over the whole plan (``workers=1``) or over N shards on N Ray actors gives the same
answer up to float rounding, so the science never depends on how the work is split.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .data.batches import Batch
from .perm.spec import Probe
from .stats import CoMoments, CrossMoments, StatsDict
from .taps import tap, transform_outputs


def device_of(net: nn.Module) -> torch.device:
    for p in net.parameters():
        return p.device
    return torch.device("cpu")


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
    """
    net_a.eval()
    net_b.eval()
    device = device_of(net_a)
    probes = list(dict.fromkeys(probes))
    skip = set(moments_only)
    acts_a: dict[Probe, torch.Tensor] = {}
    acts_b: dict[Probe, torch.Tensor] = {}
    out = StatsDict()
    with tap(net_a, probes, acts_a), tap(net_b, probes, acts_b):
        for x, _ in batches:
            x = x.to(device, non_blocking=True)
            net_a(x)
            net_b(x)
            for p in probes:
                part = CrossMoments.from_batch(acts_a.pop(p), acts_b.pop(p), p not in skip)
                out[p] = out[p].merge(part) if p in out else part
    return out.cpu()


@torch.no_grad()
def channel_stats_pass(
    *nets: nn.Module, batches: Iterable[Batch], modules: Sequence[str]
) -> StatsDict:
    """Joint per-channel statistics of K already-aligned nets at the outputs of ``modules``."""
    for n in nets:
        n.eval()
    device = device_of(nets[0])
    probes = [Probe(m) for m in dict.fromkeys(modules)]
    stores: list[dict[Probe, torch.Tensor]] = [{} for _ in nets]
    out = StatsDict()
    taps = [tap(n, probes, s) for n, s in zip(nets, stores, strict=True)]
    for t in taps:
        t.__enter__()
    try:
        for x, _ in batches:
            x = x.to(device, non_blocking=True)
            for n in nets:
                n(x)
            for p in probes:
                part = CoMoments.from_batch(*(s.pop(p) for s in stores))
                out[p.module] = out[p.module].merge(part) if p.module in out else part
    finally:
        for t in reversed(taps):
            t.__exit__(None, None, None)
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
    store: dict[Probe, torch.Tensor] = {}
    totals = EvalTotals()
    with tap(net, probes, store):
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits = net(x).float()
            totals.loss_sum += float(F.cross_entropy(logits, y, reduction="sum").double())
            totals.correct += int((logits.argmax(1) == y).sum())
            totals.n += int(y.numel())
            for p in probes:
                part = CoMoments.from_batch(store.pop(p))
                totals.points[p.module] = (
                    totals.points[p.module].merge(part) if p.module in totals.points else part
                )
    totals.points = totals.points.cpu()
    return totals


# --- recalibration (REPAIR / BN reset) -------------------------------------------------------

#: BatchNorm's epsilon; REPAIR's corrections use the same one so folding matches calibration.
NORM_EPS = 1e-5


@dataclass(frozen=True)
class Correction:
    """Renormalise the output channels of ``module`` towards a goal mean/std.

    ``mode``: ``full`` (standardise, then goal std and mean), ``rescale`` (multiply by goal
    std / own std, no centring, as in Qu & Horvath) or ``reshift`` (own mean -> goal mean).
    """

    module: str
    mode: str
    goal_mean: torch.Tensor
    goal_std: torch.Tensor


def correction_affine(
    mode: str,
    mean: torch.Tensor,
    var: torch.Tensor,
    goal_mean: torch.Tensor,
    goal_std: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) per channel so that ``scale * x + shift`` implements ``mode``.

    Channels that are constant in the merged net (dead) cannot be rescaled; they keep scale 1.
    """
    std = (var + NORM_EPS).sqrt()
    ratio = torch.where(var > 0, goal_std / std, torch.ones_like(std))
    if mode == "full":
        return ratio, goal_mean - mean * ratio
    if mode == "rescale":
        return ratio, torch.zeros_like(mean)
    if mode == "reshift":
        return torch.ones_like(mean), goal_mean - mean
    raise ValueError(f"unknown correction mode {mode!r}")


def _batch_corrector(c: Correction):
    def correct(out: torch.Tensor) -> torch.Tensor:
        dims = [d for d in range(out.dim()) if d != 1]
        x = out.double()
        mean = x.mean(dims)
        var = x.var(dims, unbiased=False)
        goal_mean = c.goal_mean.to(out.device)
        goal_std = c.goal_std.to(out.device)
        scale, shift = correction_affine(c.mode, mean, var, goal_mean, goal_std)
        shape = [1, -1] + [1] * (out.dim() - 2)
        return (x * scale.view(shape) + shift.view(shape)).to(out.dtype)

    return correct


@torch.no_grad()
def recalibration_pass(
    net: nn.Module,
    *,
    batches: Iterable[Batch],
    corrections: Sequence[Correction] = (),
    batchnorms: Sequence[str] = (),
    observe: Sequence[str] = (),
) -> StatsDict:
    """Statistics of a merged net's layer outputs with every correction active.

    Corrected layers are renormalised with their own *batch* statistics and the listed
    BatchNorms normalise with batch statistics (train mode), so later layers see corrected
    inputs, exactly as in the REPAIR reference; the pooled float64 statistics of each
    observed output (before its correction) are returned. Running stats are left untouched.
    """
    net.eval()
    modules = dict(net.named_modules())
    saved = {}
    for name in batchnorms:
        bn = modules[name]
        saved[name] = (bn.momentum, bn.num_batches_tracked.clone())
        bn.momentum = 0.0  # train-mode normalisation without touching running statistics
        bn.train()
    device = device_of(net)
    probes = [Probe(m) for m in dict.fromkeys([*observe, *(c.module for c in corrections)])]
    store: dict[Probe, torch.Tensor] = {}
    out = StatsDict()
    try:
        with (
            tap(net, probes, store),
            transform_outputs(net, {c.module: _batch_corrector(c) for c in corrections}),
        ):
            for x, _ in batches:
                net(x.to(device, non_blocking=True))
                for p in probes:
                    part = CoMoments.from_batch(store.pop(p))
                    out[p.module] = out[p.module].merge(part) if p.module in out else part
    finally:
        for name, (momentum, nbt) in saved.items():
            bn = modules[name]
            bn.momentum = momentum
            bn.num_batches_tracked.copy_(nbt)
            bn.eval()
    return out.cpu()
