"""A merge trial's vocabulary: variant names and their display order, the default matching
methods, the alpha grid (no torch here).

Kept apart from :mod:`repair_dist.repair` and :mod:`repair_dist.pipeline` so that reading and
summarising results (``repair-dist results``, :mod:`repair_dist.sweep.results`) never imports
torch: a query over a finished sweep should take a fraction of a second, not torch's start-up.
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
    "ALPHA_DECIMALS",
    "ALWAYS_REPORTED",
    "CURVE_VARIANTS",
    "DEFAULT_METHODS",
    "TRIAL_VARIANTS",
    "VARIANTS",
    "alpha_grid",
    "variant_order",
]
