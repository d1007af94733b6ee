"""The REPAIR family: renormalise a merged net's channels towards interpolated endpoint stats.

Variants (``VARIANTS``):

* ``reset``   - BatchNorm nets: re-estimate every BN's running statistics on data (the
  REPAIR paper's fix for BN nets). Layers without BN are left as they are.
* ``full``    - REPAIR: for every conv/linear output channel, goal mean/std are the
  interpolated endpoint means/stds; the merged net's own statistics are measured with all
  corrections active and the affine correction is folded into the layer. At BN points this
  *is* the reset (a BN net's REPAIR equals a BN statistics reset).
* ``rescale`` - only the std is matched (scale by goal std / own std, no centring: Qu &
  Horvath's RESCALE). At BN points: only ``running_var`` is re-estimated.
* ``reshift`` - only the mean is matched. At BN points: only ``running_mean``.
  At BN points both are layer-consistent: while measuring, each BN normalises with the batch
  statistic its variant re-estimates and keeps the other running one, so every BN's
  statistics describe the net that is returned (not one whose upstream BNs were fully reset).
* ``closed_form`` - no pass over the merged net: its std is predicted from the endpoint stds
  and their matched correlation, sqrt(sum_ij w_i w_j s_i s_j rho_ij).

After folding, the result is a plain net of the same architecture (no extra modules).

Why mergeable moments and not BatchNorm trackers: the REPAIR reference code inserts a
BatchNorm after each layer, runs it in train mode as a statistics tracker and affine setter,
then fuses it. A BN's running average (momentum) cannot be split across Ray workers and summed
back: it depends on batch order. We measure float64 per-channel moments instead
(:class:`~repair_dist.passes.CoMoments`, Chan's parallel merge), so statistics of shards add
up to the statistics of the whole on any number of workers, and apply the same affine: the
corrected layer normalises with its *batch* statistics during the measuring pass (as the
reference's train-mode BN does), and the pooled statistics give the folded affine.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from .data.batches import Batch, BatchPlan, as_plan
from .passes import (
    Centred,
    CoMoments,
    Probe,
    StatsDict,
    Workers,
    centred,
    channel_stats_pass,
    device_of,
    run_pass,
    tap,
    transform_outputs,
)
from .perm.spec import PermutationSpec, RepairPoint, permutation_spec
from .variants import VARIANTS

_BN_MODE = {"reset": "both", "full": "both", "rescale": "var", "reshift": "mean"}


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


def _bn_normaliser(bn: nn.Module, mode: str):
    """A forward hook that makes ``bn`` normalise as the net that ``mode`` returns will.

    ``both``: batch mean and variance (train-mode normalisation, the BN reset); ``var``: batch
    variance with the running mean kept (``rescale``); ``mean``: batch mean with the running
    variance kept (``reshift``). Only what the variant re-estimates comes from the batch, so
    every later layer is measured on the net that is returned (layer-consistent).
    """

    def normalise(_m: nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor):
        x = inputs[0]
        dims = [d for d in range(x.dim()) if d != 1]
        var, mean = torch.var_mean(x, dims, unbiased=False)
        if mode == "var":
            mean = bn.running_mean
        elif mode == "mean":
            var = bn.running_var
        return F.batch_norm(x, mean, var, bn.weight, bn.bias, training=False, eps=bn.eps)

    return normalise


@torch.no_grad()
def recalibration_pass(
    net: nn.Module,
    *,
    batches: Iterable[Batch],
    corrections: Sequence[Correction] = (),
    batchnorms: Sequence[str] = (),
    bn_mode: str = "both",
    observe: Sequence[str] = (),
) -> StatsDict:
    """Statistics of a merged net's layer outputs with every correction active.

    Corrected layers are renormalised with their own *batch* statistics and the listed
    BatchNorms normalise with the batch statistics that ``bn_mode`` re-estimates ("both",
    "var" or "mean"; the rest from their running statistics), so later layers see corrected
    inputs, exactly as in the REPAIR reference; the pooled float64 statistics of each
    observed output (before its correction) are returned. Running stats are left untouched.
    """
    if bn_mode not in ("both", "var", "mean"):
        raise ValueError(f"bn_mode must be 'both', 'var' or 'mean' (got {bn_mode!r})")
    net.eval()
    modules = dict(net.named_modules())
    device = device_of(net)
    probes = [Probe(m) for m in dict.fromkeys([*observe, *(c.module for c in corrections)])]
    store: dict[Probe, Centred] = {}
    out = StatsDict()
    handles = [
        modules[name].register_forward_hook(_bn_normaliser(modules[name], bn_mode))
        for name in batchnorms
    ]
    try:
        with (
            tap(net, probes, store, centred),
            transform_outputs(net, {c.module: _batch_corrector(c) for c in corrections}),
        ):
            for x, _ in batches:
                net(x.to(device, non_blocking=True))
                for p in probes:
                    out.add(p.module, CoMoments.from_centred(store.pop(p)))
    finally:
        for h in handles:
            h.remove()
    return out.cpu()


def endpoint_statistics(
    nets: Sequence[nn.Module],
    data: Dataset | BatchPlan,
    *,
    spec: PermutationSpec | None = None,
    batch_size: int = 500,
    workers: Workers = 1,
) -> StatsDict:
    """Joint per-channel statistics of the aligned endpoints at every REPAIR point."""
    spec = spec or permutation_spec(nets[0])
    modules = [rp.module for rp in spec.repair_points]
    return run_pass(
        channel_stats_pass, list(nets), as_plan(data, batch_size), workers, modules=modules
    )


def goal_statistics(
    stats: CoMoments, weights: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Goal mean and std: the weighted means and weighted *stds* of the endpoints."""
    w = torch.as_tensor(list(weights), dtype=torch.float64)
    mean = (w[:, None] * stats.mean).sum(0)
    std = sum(w[k] * stats.std(k) for k in range(len(w)))
    return mean, std


def predicted_std(stats: CoMoments, weights: Sequence[float]) -> torch.Tensor:
    """Closed-form std of the merged pre-activation from endpoint covariances."""
    w = torch.as_tensor(list(weights), dtype=torch.float64)
    var = torch.einsum("i,j,ijc->c", w, w, stats.cm) / stats.n
    return var.clamp_min(0).sqrt()


def fold_affine(layer: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """Replace ``layer(x)`` by ``scale * layer(x) + shift`` per output channel, in its weights."""
    w = layer.weight
    shape = (-1,) + (1,) * (w.dim() - 1)
    with torch.no_grad():
        w.mul_(scale.to(w.dtype).view(shape))
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))
        layer.bias.mul_(scale.to(w.dtype)).add_(shift.to(w.dtype))


def _set_bn(bn: nn.Module, stats: CoMoments, mode: str) -> None:
    with torch.no_grad():
        if mode in ("both", "mean"):
            bn.running_mean.copy_(stats.mean[0])
        if mode in ("both", "var"):
            bn.running_var.copy_(stats.unbiased_var(0))


def repair(
    merged: nn.Module,
    endpoints: Sequence[nn.Module],
    weights: Sequence[float],
    data: Dataset | BatchPlan,
    variant: str = "full",
    *,
    spec: PermutationSpec | None = None,
    goal_stats: StatsDict | None = None,
    batch_size: int = 500,
    workers: Workers = 1,
) -> nn.Module:
    """A renormalised copy of ``merged`` (see the module docstring for the variants).

    ``endpoints`` must already be aligned to each other (``merged`` is their interpolation
    with ``weights``). ``goal_stats`` (from :func:`endpoint_statistics`, or from the
    alignment pass via ``CrossMoments.aligned``) saves the pass over the endpoints.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown REPAIR variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    spec = spec or permutation_spec(merged)
    if len(weights) != len(endpoints):
        raise ValueError("need one weight per endpoint")
    net = copy.deepcopy(merged).eval()
    modules = dict(net.named_modules())
    bn_points = [rp for rp in spec.repair_points if rp.norm is not None]
    plain_points = [rp for rp in spec.repair_points if rp.norm is None]
    needs_goals = variant == "closed_form" or (variant != "reset" and plain_points)
    if needs_goals and goal_stats is None:
        goal_stats = endpoint_statistics(
            endpoints, data, spec=spec, batch_size=batch_size, workers=workers
        )

    if variant == "closed_form":
        _closed_form(modules, spec.repair_points, goal_stats, weights)
        return net

    corrections = []
    if variant != "reset":
        for rp in plain_points:
            mean, std = goal_statistics(goal_stats[rp.module], weights)
            corrections.append(Correction(rp.module, variant, mean, std))
    if not corrections and not bn_points:
        return net
    measured = run_pass(
        recalibration_pass,
        [net],
        as_plan(data, batch_size),
        workers,
        corrections=corrections,
        batchnorms=[rp.norm for rp in bn_points],
        bn_mode=_BN_MODE[variant],
        observe=[rp.module for rp in bn_points],
    )
    for rp in bn_points:
        _set_bn(modules[rp.norm], measured[rp.module], _BN_MODE[variant])
    for c in corrections:
        m = measured[c.module]
        scale, shift = correction_affine(c.mode, m.mean[0], m.var(0), c.goal_mean, c.goal_std)
        fold_affine(modules[c.module], scale, shift)
    return net


def _closed_form(
    modules: dict[str, nn.Module],
    points: Sequence[RepairPoint],
    goal_stats: StatsDict,
    weights: Sequence[float],
) -> None:
    for rp in points:
        stats = goal_stats[rp.module]
        if torch.isnan(stats.cm).any():
            raise ValueError(
                f"closed_form needs the endpoints' cross moments at {rp.module}, but they were "
                "collected without them (alignment_statistics(..., repair_cross=False))"
            )
        goal_mean, goal_std = goal_statistics(stats, weights)
        pred_std = predicted_std(stats, weights)
        if rp.norm is not None:
            bn = modules[rp.norm]
            with torch.no_grad():
                bn.running_mean.copy_(goal_mean)
                bn.running_var.copy_(pred_std.square())
            continue
        # predicted merged mean = goal mean, so only the spread around it is rescaled
        scale, shift = correction_affine(
            "full", goal_mean, pred_std.square() - NORM_EPS, goal_mean, goal_std
        )
        fold_affine(modules[rp.module], scale, shift)
