"""Permutation specs, applying permutations, activation matching and weight matching.

Names load on first use (:mod:`repair_dist._lazy`): the models import ``perm.spec``, which
must not pull in scipy's optimisers and every matcher with it.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_api

_API: dict[str, tuple[str, str]] = {
    "ALIGN_METHODS": (".many", "ALIGN_METHODS"),
    "MATCHING_METHODS": (".matchers", "MATCHING_METHODS"),
    "MatchInputs": (".matchers", "MatchInputs"),
    "MatchingMethod": (".matchers", "MatchingMethod"),
    "Permutation": (".apply", "Permutation"),
    "PermutationSpec": (".spec", "PermutationSpec"),
    "RepairPoint": (".spec", "RepairPoint"),
    "SpecBuilder": (".spec", "SpecBuilder"),
    "activation_matching": (".activation", "activation_matching"),
    "align_many": (".many", "align_many"),
    "alignment_probes": (".activation", "alignment_probes"),
    "alignment_statistics": (".activation", "alignment_statistics"),
    "apply_permutation": (".apply", "apply_permutation"),
    "check_same_architecture": (".activation", "check_same_architecture"),
    "compose_permutations": (".apply", "compose_permutations"),
    "identity_permutation": (".apply", "identity_permutation"),
    "invert_permutation": (".apply", "invert_permutation"),
    "match_weights": (".weight", "match_weights"),
    "matching_method": (".matchers", "matching_method"),
    "matching_objective": (".weight", "matching_objective"),
    "merge_many_objective": (".many", "merge_many_objective"),
    "permutation_from_stats": (".activation", "permutation_from_stats"),
    "permutation_spec": (".spec", "permutation_spec"),
    "permute_state_dict": (".apply", "permute_state_dict"),
    "random_permutation": (".apply", "random_permutation"),
    "ste_matching": (".ste", "ste_matching"),
    "weight_matching": (".weight", "weight_matching"),
}

__getattr__, __dir__ = lazy_api(__name__, globals(), _API)

if TYPE_CHECKING:
    from .activation import (
        activation_matching,
        alignment_probes,
        alignment_statistics,
        check_same_architecture,
        permutation_from_stats,
    )
    from .apply import (
        Permutation,
        apply_permutation,
        compose_permutations,
        identity_permutation,
        invert_permutation,
        permute_state_dict,
        random_permutation,
    )
    from .many import ALIGN_METHODS, align_many, merge_many_objective
    from .matchers import MATCHING_METHODS, MatchingMethod, MatchInputs, matching_method
    from .spec import PermutationSpec, RepairPoint, SpecBuilder, permutation_spec
    from .ste import ste_matching
    from .weight import match_weights, matching_objective, weight_matching

__all__ = [
    "ALIGN_METHODS",
    "MATCHING_METHODS",
    "MatchInputs",
    "MatchingMethod",
    "Permutation",
    "PermutationSpec",
    "RepairPoint",
    "SpecBuilder",
    "activation_matching",
    "align_many",
    "alignment_probes",
    "alignment_statistics",
    "apply_permutation",
    "check_same_architecture",
    "compose_permutations",
    "identity_permutation",
    "invert_permutation",
    "match_weights",
    "matching_method",
    "matching_objective",
    "merge_many_objective",
    "permutation_from_stats",
    "permutation_spec",
    "permute_state_dict",
    "random_permutation",
    "ste_matching",
    "weight_matching",
]
