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
* ``closed_form`` - no pass over the merged net: its std is predicted from the endpoint stds
  and their matched correlation, sqrt(sum_ij w_i w_j s_i s_j rho_ij).

After folding, the result is a plain net of the same architecture (no extra modules).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from .data.batches import BatchPlan, as_plan
from .execution import Workers, run_pass
from .passes import NORM_EPS, Correction, channel_stats_pass, correction_affine, recalibration_pass
from .perm.spec import PermutationSpec, RepairPoint, permutation_spec
from .stats import CoMoments, StatsDict

VARIANTS = ("reset", "full", "rescale", "reshift", "closed_form")
_BN_MODE = {"reset": "both", "full": "both", "rescale": "var", "reshift": "mean"}


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
