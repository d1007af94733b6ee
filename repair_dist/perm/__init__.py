"""Permutation specs, applying permutations, activation matching and weight matching."""

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
