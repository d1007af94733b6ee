"""The names of what a merge trial reports, and their one display order (no torch here).

Kept apart from :mod:`repair_dist.repair` and :mod:`repair_dist.pipeline` so that reading and
summarising results (``repair-dist results``, :mod:`repair_dist.sweep.results`) never imports
torch: a query over a finished sweep should take a fraction of a second, not torch's start-up.
"""

from __future__ import annotations

from collections.abc import Iterable

#: REPAIR variants (:func:`repair_dist.repair`): what each renormalises is documented there.
VARIANTS = ("reset", "full", "rescale", "reshift", "closed_form")
#: Curve variants: "aligned" is plain interpolation; the rest are REPAIR variants.
CURVE_VARIANTS = ("aligned", *VARIANTS)
#: Every variant a merge trial reports, in display order (tables, plots): the unaligned and the
#: aligned-but-unrepaired baselines first, then the REPAIR family. The one copy of this order.
TRIAL_VARIANTS = ("naive", *CURVE_VARIANTS)
#: The two baselines every trial reports without being asked for (not REPAIR variants).
ALWAYS_REPORTED: tuple[str, ...] = TRIAL_VARIANTS[:2]


def variant_order(values: Iterable[str]) -> list[str]:
    """Distinct ``values`` in display order: known variants first, then the others sorted."""
    distinct = set(values)
    known = [v for v in TRIAL_VARIANTS if v in distinct]
    return known + sorted(distinct - set(TRIAL_VARIANTS))


__all__ = ["ALWAYS_REPORTED", "CURVE_VARIANTS", "TRIAL_VARIANTS", "VARIANTS", "variant_order"]
