"""One merge trial as plain science: align B to A, interpolate, renormalise, evaluate.

This is what a stage-2 sweep trial computes, without Ray Tune, MLflow or Parquet, so
notebooks, tests and the sweep runner share one implementation. Data passes:
  1. one alignment pass of A and B (correlations for matching + endpoint stats for REPAIR),
  2. per alpha and variant: a recalibration pass (REPAIR variants) and two evaluation passes;
     at alpha 0 and 1 (the endpoints themselves) only the two evaluation passes, once for all
     variants.
With weight matching the alignment pass skips every correlation (nothing reads them).
The ``naive`` variant is the same curve for the *unaligned* B (its goal statistics are those
of unpermuted B, from the same pass).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
from torch import nn
from torch.utils.data import Dataset

from .data.batches import BatchPlan, as_plan
from .merge import alpha_weights, interpolate
from .metrics import barriers, variance_ratios
from .passes import Probe, StatsDict, Workers, evaluation_pass, resolve_executor, run_pass
from .perm import (
    Permutation,
    alignment_statistics,
    apply_permutation,
    identity_permutation,
    permutation_spec,
)
from .perm.matchers import MATCHING_METHODS, MatchInputs, matching_method
from .perm.spec import PermutationSpec
from .repair import endpoint_statistics, repair
from .variants import CURVE_VARIANTS, VARIANTS, alpha_grid

#: Matching methods a trial accepts (the registry's names).
METHODS = tuple(MATCHING_METHODS)


def interpolation_curve(
    net_a: nn.Module,
    net_c: nn.Module,
    train: Dataset | BatchPlan,
    test: Dataset | BatchPlan,
    alphas: int | Sequence[float] = 11,
    variants: Sequence[str] = ("aligned", "full"),
    *,
    spec: PermutationSpec | None = None,
    goal_stats: StatsDict | None = None,
    batch_size: int = 500,
    workers: Workers = 1,
) -> pd.DataFrame:
    """Loss/accuracy along the segment from ``net_a`` to the aligned ``net_c`` per variant.

    Returns a DataFrame (variant, alpha, split, loss, acc); ``curve.attrs["layers"]`` holds the
    per-layer variance ratios (variant, alpha, layer, std_ratio, mean_shift) measured on the
    train split: merged pre-activation std / interpolated endpoint std.
    """
    unknown = [v for v in variants if v not in CURVE_VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {', '.join(CURVE_VARIANTS)}")
    spec = spec or permutation_spec(net_a)
    executor = resolve_executor(workers)
    train_plan, test_plan = as_plan(train, batch_size), as_plan(test, batch_size)
    points = [rp.module for rp in spec.repair_points]
    if goal_stats is None:
        goal_stats = endpoint_statistics([net_a, net_c], train_plan, spec=spec, workers=executor)
    rows, layer_rows = [], []
    for alpha in alpha_grid(alphas):
        w = alpha_weights(alpha)
        mid = interpolate([net_a, net_c], w)
        endpoint = alpha in (0.0, 1.0)
        evaluated = None
        for variant in variants:
            net = mid
            if variant != "aligned" and not endpoint:
                net = repair(
                    mid,
                    [net_a, net_c],
                    w,
                    train_plan,
                    variant,
                    spec=spec,
                    goal_stats=goal_stats,
                    workers=executor,
                )
            # At alpha 0 and 1 the merged net *is* an endpoint: nothing to renormalise (the
            # barrier is measured against it), so every variant reports its evaluation.
            if evaluated is None or not endpoint:
                evaluated = (
                    run_pass(evaluation_pass, [net], train_plan, executor, points=points),
                    run_pass(evaluation_pass, [net], test_plan, executor),
                )
            train_totals, test_totals = evaluated
            for split, totals in (("train", train_totals), ("test", test_totals)):
                rows.append((variant, alpha, split, totals.loss, totals.acc))
            for layer, ratio, shift in variance_ratios(train_totals.points, goal_stats, w):
                layer_rows.append((variant, alpha, layer, ratio, shift))
    curve = pd.DataFrame(rows, columns=["variant", "alpha", "split", "loss", "acc"])
    curve.attrs["layers"] = pd.DataFrame(
        layer_rows, columns=["variant", "alpha", "layer", "std_ratio", "mean_shift"]
    )
    return curve


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
    matcher = matching_method(method)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown REPAIR variants {unknown}; choose from {', '.join(VARIANTS)}")
    alphas = alpha_grid(alphas)  # a bad grid fails here, before any pass over data
    start = time.perf_counter()
    spec = permutation_spec(net_a)
    executor = resolve_executor(workers)
    train_plan, test_plan = as_plan(train, batch_size), as_plan(test, batch_size)
    # Only activation matching reads correlations; only closed_form the REPAIR cross terms.
    stats = alignment_statistics(
        net_a,
        net_b,
        train_plan,
        spec=spec,
        residual=residual,
        workers=executor,
        repair_cross="closed_form" in variants,  # only closed_form reads the A-B cross terms
        matching=matcher.needs_correlations,  # weight matching and STE read no correlations
    )
    perm = matcher.match(
        MatchInputs(net_a, net_b, spec, stats, residual, train_plan, seed, executor)
    )
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
