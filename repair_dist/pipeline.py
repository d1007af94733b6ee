"""One merge trial as plain science: align B to A, interpolate, renormalise, evaluate.

This is what a stage-2 sweep trial computes, without Ray Tune, MLflow or Parquet, so
notebooks, tests and the sweep runner share one implementation. Data passes:
  1. one alignment pass of A and B (correlations for matching + endpoint stats for REPAIR),
  2. per alpha and variant: a recalibration pass (REPAIR variants) and two evaluation passes.
The ``naive`` variant is the same curve for the *unaligned* B (its goal statistics are those
of unpermuted B, from the same pass).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from .data.batches import BatchPlan, as_plan
from .execution import Workers, resolve_executor
from .metrics import barriers, interpolation_curve
from .perm import (
    Permutation,
    alignment_statistics,
    apply_permutation,
    identity_permutation,
    permutation_from_stats,
    permutation_spec,
    weight_matching,
)
from .perm.spec import Probe
from .repair import VARIANTS
from .stats import StatsDict

METHODS = ("activation", "weight")


@dataclass
class TrialResult:
    """Everything a merge trial measured (tables keyed by variant; see DESIGN.md §5)."""

    perm: Permutation
    curves: pd.DataFrame  # variant, alpha, split, loss, acc
    barriers: pd.DataFrame  # one row per variant (test split)
    layers: pd.DataFrame  # variant, alpha, layer, std_ratio, mean_shift
    seconds: float


def _goal_stats(stats: StatsDict, spec, perm: Permutation) -> StatsDict:
    """Per REPAIR point, joint stats of A and B permuted by the point's group."""
    out = StatsDict()
    for rp in spec.repair_points:
        out[rp.module] = stats[Probe(rp.module)].aligned(perm[rp.group])
    return out


def merge_trial(
    net_a: nn.Module,
    net_b: nn.Module,
    train: Dataset | BatchPlan,
    test: Dataset | BatchPlan,
    *,
    method: str = "activation",
    variants: Sequence[str] = VARIANTS,
    alphas: int | Sequence[float] = 11,
    residual: str = "output",
    batch_size: int = 500,
    seed: int = 0,
    workers: Workers = 1,
) -> TrialResult:
    """Align ``net_b`` to ``net_a`` with ``method`` and measure every variant along the path.

    Variants reported: ``naive`` (no alignment), ``aligned`` (no renormalisation) and each of
    ``variants`` (REPAIR family) applied to the aligned interpolation.
    """
    if method not in METHODS:
        raise ValueError(f"unknown matching method {method!r}; choose one of {', '.join(METHODS)}")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown REPAIR variants {unknown}; choose from {', '.join(VARIANTS)}")
    start = time.perf_counter()
    spec = permutation_spec(net_a)
    executor = resolve_executor(workers)
    train_plan, test_plan = as_plan(train, batch_size), as_plan(test, batch_size)
    stats = alignment_statistics(
        net_a, net_b, train_plan, spec=spec, residual=residual, workers=executor,
        repair_cross="closed_form" in variants,  # only closed_form reads the A-B cross terms
    )  # fmt: skip
    if method == "activation":
        perm = permutation_from_stats(stats, spec, residual)
    else:
        perm = weight_matching(net_a, net_b, spec=spec, seed=seed)
    net_c = apply_permutation(net_b, perm, spec)
    common = dict(spec=spec, workers=executor, alphas=alphas)
    naive = interpolation_curve(
        net_a,
        net_b,
        train_plan,
        test_plan,
        variants=["aligned"],
        goal_stats=_goal_stats(stats, spec, identity_permutation(spec.group_sizes(net_a))),
        **common,
    )
    aligned = interpolation_curve(
        net_a,
        net_c,
        train_plan,
        test_plan,
        variants=["aligned", *variants],
        goal_stats=_goal_stats(stats, spec, perm),
        **common,
    )
    # DataFrame.attrs would be compared (and fail) in concat: take the layer tables out first.
    naive_layers = naive.attrs.pop("layers").assign(variant="naive")
    aligned_layers = aligned.attrs.pop("layers")
    curves = pd.concat([naive.assign(variant="naive"), aligned], ignore_index=True)
    layers = pd.concat([naive_layers, aligned_layers], ignore_index=True)
    table = barriers(curves, split="test")
    return TrialResult(
        perm={g: p.clone() for g, p in perm.items()},
        curves=curves,
        barriers=table,
        layers=layers,
        seconds=time.perf_counter() - start,
    )


def permutation_is_identity(perm: Permutation) -> bool:
    return all(torch.equal(p, torch.arange(len(p))) for p in perm.values())
