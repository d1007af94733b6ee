"""A sweep's vocabulary: variant names and their display order, the matching methods, the
alpha grid, and every other choice a sweep names (residual modes, optimizers, curve kinds,
pruning kinds, many-net alignments); no torch here.

Kept apart from :mod:`repair_dist.repair` and :mod:`repair_dist.pipeline` so that reading and
summarising results (``repair-dist results``, :mod:`repair_dist.sweep.results`) and planning
and validating a sweep (:mod:`repair_dist.sweep.validation`) never import torch: a query over
a finished sweep, or its rerun, should take a fraction of a second, not torch's start-up.
The science modules re-export the names they own from here (``repair_dist.train.OPTIMIZERS``
is this ``OPTIMIZERS``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

#: REPAIR variants (:func:`repair_dist.repair`): what each renormalises is documented there.
VARIANTS = ("reset", "full", "rescale", "reshift", "closed_form")
#: Curve variants: "aligned" is plain interpolation; the rest are REPAIR variants.
CURVE_VARIANTS = ("aligned", *VARIANTS)
#: Every variant a merge trial reports, in display order (tables, plots): the unaligned and the
#: aligned-but-unrepaired baselines first, then the REPAIR family. The one copy of this order.
TRIAL_VARIANTS = ("naive", *CURVE_VARIANTS)
#: The two baselines every trial reports without being asked for (not REPAIR variants).
ALWAYS_REPORTED: tuple[str, ...] = TRIAL_VARIANTS[:2]


#: What a sweep runs when it names no methods: the two cheap pair matchers. STE trains a copy
#: of the net per pair (many epochs), so a sweep asks for it explicitly. (The registry of
#: matchers is :data:`repair_dist.perm.matchers.MATCHING_METHODS`.)
DEFAULT_METHODS = ("activation", "weight")

#: Every pair matcher a sweep may name. The registry is
#: :data:`repair_dist.perm.matchers.MATCHING_METHODS` (``repair_dist.pipeline.METHODS``); a
#: test keeps the two equal.
METHODS = ("activation", "weight", "ste")

#: Activation matching of residual streams (:func:`repair_dist.activation_matching`):
#: "output": correlate a residual stream at the stage output only (REPAIR code);
#: "sum": sum the correlation matrices of every block output in the stage (Tatro et al.).
RESIDUAL_MODES = ("output", "sum")
#: :func:`repair_dist.train_model`'s optimizers.
OPTIMIZERS = ("sgd", "adam")
#: Mode-connectivity curves (:func:`repair_dist.fit_curve`).
CURVE_KINDS = ("bezier", "polychain")
#: Pruning criteria (:func:`repair_dist.prune`); the structured ones remove whole filters.
PRUNE_KINDS = ("global_l1", "layer_l1", "filter_l1", "filter_bn")
STRUCTURED_KINDS = ("filter_l1", "filter_bn")
#: Post-pruning repair variants: REPAIR with one endpoint (the dense net) as the goal.
PRUNE_REPAIR_VARIANTS = ("full", "rescale", "reshift")
#: Aligning N nets at once (:func:`repair_dist.align_many`).
ALIGN_METHODS = ("weight", "activation", "merge_many")

#: Alphas are rounded to this many decimals so that a grid given as a count and the same grid
#: given as a list give the same floats (and the same trial keys).
ALPHA_DECIMALS = 6


def alpha_grid(alphas: int | Sequence[float]) -> tuple[float, ...]:
    """Sorted interpolation weights, rounded; always holding 0, 0.5 and 1.

    ``11`` -> 0.0, 0.1, ..., 1.0. 0 and 1 are the endpoints every barrier is measured against
    and 0.5 is the midpoint barrier, so they are added when a list (or an even count) leaves
    them out. The single definition for the library and the sweep.
    """
    if isinstance(alphas, bool) or not isinstance(alphas, int | Sequence):
        raise ValueError(f"alphas must be a count >= 2 or a list of floats (got {alphas!r})")
    if isinstance(alphas, int):
        if alphas < 2:
            raise ValueError(f"need at least 2 alphas, the endpoints (got {alphas})")
        values = [i / (alphas - 1) for i in range(alphas)]
    else:
        values = [float(a) for a in alphas]
        outside = [a for a in values if not 0.0 <= a <= 1.0]
        if outside:
            raise ValueError(f"alphas must lie in [0, 1] (got {outside})")
    return tuple(sorted({round(v, ALPHA_DECIMALS) for v in values} | {0.0, 0.5, 1.0}))


def variant_order(values: Iterable[str]) -> list[str]:
    """Distinct ``values`` in display order: known variants first, then the others sorted."""
    distinct = set(values)
    known = [v for v in TRIAL_VARIANTS if v in distinct]
    return known + sorted(distinct - set(TRIAL_VARIANTS))


__all__ = [
    "ALIGN_METHODS",
    "ALPHA_DECIMALS",
    "ALWAYS_REPORTED",
    "CURVE_KINDS",
    "CURVE_VARIANTS",
    "DEFAULT_METHODS",
    "METHODS",
    "OPTIMIZERS",
    "PRUNE_KINDS",
    "PRUNE_REPAIR_VARIANTS",
    "RESIDUAL_MODES",
    "STRUCTURED_KINDS",
    "TRIAL_VARIANTS",
    "VARIANTS",
    "alpha_grid",
    "variant_order",
]
