"""Measurements of a net or of a curve table: evaluation, barriers, variance-collapse ratios,
collapsed filters. Nothing here orchestrates merges (that is :mod:`repair_dist.pipeline`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from .data.batches import BatchPlan, as_plan
from .passes import StatsDict, Workers, active_units_pass, evaluation_pass, run_pass
from .perm.spec import PermutationSpec, permutation_spec
from .repair import goal_statistics


def evaluate(
    net: nn.Module, data: Dataset | BatchPlan, *, batch_size: int = 1000, workers: Workers = 1
) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``net`` (eval mode) on ``data``."""
    totals = run_pass(evaluation_pass, [net], as_plan(data, batch_size), workers)
    return {"loss": totals.loss, "acc": totals.acc}


def variance_ratios(
    merged_stats: StatsDict, goal_stats: StatsDict, weights: Sequence[float]
) -> list[tuple[str, float, float]]:
    """(layer, std ratio, mean shift) per layer: merged vs interpolated endpoint statistics.

    std ratio = mean channel std of the merged net / mean goal std (1 = no collapse);
    mean shift = mean over channels of |merged mean - goal mean| / goal std.
    """
    out = []
    for layer, merged in merged_stats.items():
        goal_mean, goal_std = goal_statistics(goal_stats[layer], weights)
        denom = float(goal_std.mean())
        ratio = float(merged.std(0).mean()) / denom if denom > 0 else float("nan")
        safe = goal_std.clamp_min(1e-12)
        shift = float(((merged.mean[0] - goal_mean).abs() / safe).mean())
        out.append((layer, ratio, shift))
    return out


def barriers(curve: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """Barrier metrics per variant from an interpolation curve.

    Endpoints are the ``aligned`` curve's alpha=0 and alpha=1 (the exact endpoints).
    * midpoint barriers as in the REPAIR code: acc = mean endpoint acc - acc(0.5),
      loss = loss(0.5) - mean endpoint loss;
    * max barriers as in Git Re-Basin: max over alpha of the gap to the linear interpolation
      of the endpoint values;
    * ``reduction_vs_aligned`` = (B_aligned - B_variant) / B_aligned for the midpoint acc
      barrier (the REPAIR paper's headline), ``reduction_loss_vs_aligned`` likewise for loss.
    """
    c = curve[curve["split"] == split]
    ref_variant = "aligned" if "aligned" in set(c["variant"]) else c["variant"].iloc[0]
    ref = c[c["variant"] == ref_variant].set_index("alpha").sort_index()
    acc_a, acc_b = float(ref["acc"].iloc[0]), float(ref["acc"].iloc[-1])
    loss_a, loss_b = float(ref["loss"].iloc[0]), float(ref["loss"].iloc[-1])
    rows = []
    for variant, g in c.groupby("variant", sort=False):
        g = g.set_index("alpha").sort_index()
        a = g.index.to_numpy()
        lin_acc = (1 - a) * acc_a + a * acc_b
        lin_loss = (1 - a) * loss_a + a * loss_b
        mid = g.loc[g.index[np.argmin(np.abs(a - 0.5))]]
        rows.append(
            {
                "variant": variant,
                "acc_a": acc_a,
                "acc_b": acc_b,
                "loss_a": loss_a,
                "loss_b": loss_b,
                "acc_mid": float(mid["acc"]),
                "loss_mid": float(mid["loss"]),
                "barrier_acc_mid": (acc_a + acc_b) / 2 - float(mid["acc"]),
                "barrier_loss_mid": float(mid["loss"]) - (loss_a + loss_b) / 2,
                "barrier_acc_max": float(np.max(lin_acc - g["acc"].to_numpy())),
                "barrier_loss_max": float(np.max(g["loss"].to_numpy() - lin_loss)),
            }
        )
    out = pd.DataFrame(rows)
    if "aligned" in set(out["variant"]):
        base = out.set_index("variant").loc["aligned"]
        out["reduction_vs_aligned"] = _reduction(base["barrier_acc_mid"], out["barrier_acc_mid"])
        out["reduction_loss_vs_aligned"] = _reduction(
            base["barrier_loss_mid"], out["barrier_loss_mid"]
        )
    return out


def _reduction(before: float, after: pd.Series) -> pd.Series:
    if before <= 0:
        return pd.Series(np.nan, index=after.index)
    return (before - after) / before


@torch.no_grad()
def collapsed_filters(
    net: nn.Module,
    data: Dataset | BatchPlan | None = None,
    *,
    spec: PermutationSpec | None = None,
    gamma_threshold: float = 1e-2,
    batch_size: int = 1000,
    workers: Workers = 1,
) -> dict[str, int]:
    """Per layer: BN channels with |gamma| < threshold, or units that never activate on data.

    Collapsed filters (Zhou et al. 2020) corrupt correlations and REPAIR statistics, so every
    endpoint records them. Keys: BN module names (gamma) and matching probe modules (dead).
    The pass over data is a mergeable pass, so ``workers=N`` shards it like any other.
    """
    spec = spec or permutation_spec(net)
    out: dict[str, int] = {}
    for name, module in net.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
            out[name] = int((module.weight.abs() < gamma_threshold).sum())
    if data is not None:
        probes = list(dict.fromkeys(p for ps in spec.match_probes.values() for p in ps))
        units = run_pass(
            active_units_pass, [net], as_plan(data, batch_size), workers, probes=probes
        )
        for p, dead in units.dead().items():
            out[f"dead:{p.module}"] = dead
    return out


def total_collapsed(counts: dict[str, int]) -> int:
    return int(sum(counts.values()))
