"""Matching methods behind one signature (as in ZipIt): a registry instead of a name chain.

A matcher turns what one alignment pass gathered into a permutation of B's units onto A's.
Every method gets the same :class:`MatchInputs`; a method that reads correlations says so
(``needs_correlations``), so a trial collects the expensive A x B cross moments only when its
method will read them. Adding a method is one function and one registry entry here; the
pipeline, the sweep validation and the CLI read their choices from :data:`MATCHING_METHODS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..data.batches import BatchPlan
from ..passes import StatsDict, Workers
from .activation import permutation_from_stats
from .apply import Permutation
from .spec import PermutationSpec
from .ste import ste_matching
from .weight import weight_matching


@dataclass(frozen=True)
class MatchInputs:
    """Everything a matcher may read. ``stats`` come from the trial's alignment pass."""

    net_a: nn.Module
    net_b: nn.Module
    spec: PermutationSpec
    stats: StatsDict | None = None
    residual: str = "output"
    data: BatchPlan | None = None
    seed: int = 0
    workers: Workers = 1


@dataclass(frozen=True)
class MatchingMethod:
    """A registered matcher and whether it needs correlations from the alignment pass."""

    match: Callable[[MatchInputs], Permutation]
    needs_correlations: bool


def _activation(inputs: MatchInputs) -> Permutation:
    if inputs.stats is None:
        raise ValueError("activation matching needs the alignment pass's correlations")
    return permutation_from_stats(inputs.stats, inputs.spec, inputs.residual)


def _weight(inputs: MatchInputs) -> Permutation:
    return weight_matching(inputs.net_a, inputs.net_b, spec=inputs.spec, seed=inputs.seed)


def _ste(inputs: MatchInputs) -> Permutation:
    if inputs.data is None:
        raise ValueError("STE matching trains on data: pass the trial's train set")
    return ste_matching(inputs.net_a, inputs.net_b, inputs.data, seed=inputs.seed, spec=inputs.spec)


MATCHING_METHODS: dict[str, MatchingMethod] = {
    "activation": MatchingMethod(_activation, needs_correlations=True),
    "weight": MatchingMethod(_weight, needs_correlations=False),
    "ste": MatchingMethod(_ste, needs_correlations=False),
}


def matching_method(name: str) -> MatchingMethod:
    """The registry entry of ``name``; one readable error for an unknown method."""
    if name not in MATCHING_METHODS:
        raise ValueError(
            f"unknown matching method {name!r}; choose one of {', '.join(MATCHING_METHODS)}"
        )
    return MATCHING_METHODS[name]
