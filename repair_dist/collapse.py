"""Filter collapse per layer (Zhou et al. 2020): the rows of the ``filters`` table.

A filter is *collapsed* when the |gamma| of its BatchNorm is below a threshold, and *dead*
when the unit it feeds into the ReLU is never positive on the training data (so the ReLU
output is zero for every example and every position). Both corrupt the correlations that
matching uses and the statistics that REPAIR targets, so every endpoint records them.

The dead count needs a pass over the data; it goes through the pass executor
(:func:`run_pass`), so ``workers=N`` shards it over Ray actors. Its partial result is the
per-channel "ever positive" flag, which merges across shards by logical OR.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from .data.batches import Batch, BatchPlan, as_plan
from .passes import Probe, Workers, device_of, run_pass, tap
from .perm.spec import PermutationSpec, RepairPoint, permutation_spec

#: Columns of the ``filters`` table (DESIGN.md §5).
FILTER_COLUMNS = ("endpoint_key", "layer", "channels", "collapsed", "dead", "gamma_abs_median")


@dataclass
class ChannelActivity:
    """Per module: which channels were ever positive, and how many samples were seen."""

    ever_positive: dict[str, torch.Tensor] = field(default_factory=dict)
    n: int = 0

    def merge(self, other: ChannelActivity) -> ChannelActivity:
        out = dict(self.ever_positive)
        for k, v in other.ever_positive.items():
            out[k] = out[k] | v if k in out else v
        return ChannelActivity(out, self.n + other.n)


@torch.no_grad()
def channel_activity_pass(
    net: nn.Module, *, batches: Iterable[Batch], modules: Sequence[str]
) -> ChannelActivity:
    """Eval-mode forwards; per channel of each module's output: was it ever > 0?"""
    net.eval()
    device = device_of(net)
    probes = [Probe(m) for m in dict.fromkeys(modules)]
    store: dict[Probe, torch.Tensor] = {}
    out = ChannelActivity()
    with tap(net, probes, store):
        for x, _ in batches:
            net(x.to(device, non_blocking=True))
            out.n += int(x.shape[0])
            for p in probes:
                act = store.pop(p)
                dims = [d for d in range(act.dim()) if d != 1]
                hit = (act > 0).any(dim=dims).cpu()
                prev = out.ever_positive.get(p.module)
                out.ever_positive[p.module] = hit if prev is None else prev | hit
    return out


def relu_input(rp: RepairPoint) -> str:
    """The module whose output the layer's ReLU sees: its BatchNorm if any, else the layer.

    In a residual block the branch output is added to the stream before the ReLU; this then
    counts the branch's own unit as dead when it can never contribute a positive value.
    """
    return rp.norm if rp.norm is not None else rp.module


def filter_collapse(
    net: nn.Module,
    train: Dataset | BatchPlan,
    *,
    endpoint_key: str = "",
    gamma_threshold: float = 1e-2,
    spec: PermutationSpec | None = None,
    batch_size: int = 1000,
    workers: Workers = 1,
) -> pd.DataFrame:
    """One row per prunable layer: channels, collapsed, dead, gamma_abs_median.

    ``collapsed`` counts channels whose BN |gamma| < ``gamma_threshold`` (0 and a NaN median
    for layers without BN); ``dead`` counts channels never positive before the ReLU on
    ``train``. ``endpoint_key`` is copied into every row (the sweep's key of this net).
    """
    if not gamma_threshold >= 0:
        raise ValueError(f"gamma_threshold must be >= 0 (got {gamma_threshold!r})")
    spec = spec or permutation_spec(net)
    modules = dict(net.named_modules())
    points = list(spec.repair_points)
    activity = run_pass(
        channel_activity_pass,
        [net],
        as_plan(train, batch_size),
        workers,
        modules=[relu_input(rp) for rp in points],
    )
    rows = []
    for rp in points:
        ever = activity.ever_positive[relu_input(rp)]
        bn = modules[rp.norm] if rp.norm is not None else None
        gamma = getattr(bn, "weight", None) if bn is not None else None
        if gamma is not None:
            g = gamma.detach().abs().cpu()
            collapsed, median = int((g < gamma_threshold).sum()), float(g.median())
        else:
            collapsed, median = 0, float("nan")
        rows.append(
            {
                "endpoint_key": endpoint_key,
                "layer": rp.module,
                "channels": int(ever.numel()),
                "collapsed": collapsed,
                "dead": int((~ever).sum()),
                "gamma_abs_median": median,
            }
        )
    return pd.DataFrame(rows, columns=list(FILTER_COLUMNS))
