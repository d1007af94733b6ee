"""Apply, invert and compose permutations described by a :class:`PermutationSpec`.

Convention (used everywhere): ``perm[g][i]`` is the unit of B that is matched to unit ``i`` of
A, so the permuted net has ``new[..., i, ...] = old[..., perm[g][i], ...]`` on every axis of
group ``g``. This is exactly the column index that ``linear_sum_assignment`` returns.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .spec import PermutationSpec, permutation_spec

Permutation = dict[str, torch.Tensor]


def permute_tensor(
    t: torch.Tensor, per_axis: tuple[str | None, ...], perm: Permutation, skip: str | None = None
) -> torch.Tensor:
    """Index every axis of ``t`` by its group's permutation (except group ``skip``)."""
    for axis, g in enumerate(per_axis):
        if g is None or g == skip or g not in perm:
            continue
        t = torch.index_select(t, axis, perm[g].to(t.device))
    return t


def permute_state_dict(
    state: dict[str, torch.Tensor], spec: PermutationSpec, perm: Permutation
) -> dict[str, torch.Tensor]:
    """A new state dict with every tensor named in the spec permuted."""
    return {
        k: permute_tensor(v, spec.axes[k], perm) if k in spec.axes else v for k, v in state.items()
    }


def apply_permutation(
    net: nn.Module, perm: Permutation, spec: PermutationSpec | None = None
) -> nn.Module:
    """A permuted copy of ``net``: it computes the same function, with its units reordered."""
    spec = spec or permutation_spec(net)
    out = copy.deepcopy(net)
    out.load_state_dict(permute_state_dict(net.state_dict(), spec, perm))
    return out


def invert_permutation(perm: Permutation) -> Permutation:
    return {g: torch.argsort(p) for g, p in perm.items()}


def compose_permutations(first: Permutation, then: Permutation) -> Permutation:
    """The permutation equal to applying ``first`` and then ``then``."""
    return {g: first[g][then[g]] if g in then else first[g] for g in first}


def random_permutation(sizes: dict[str, int], seed: int = 0) -> Permutation:
    gen = torch.Generator().manual_seed(seed)
    return {g: torch.randperm(n, generator=gen) for g, n in sizes.items()}


def identity_permutation(sizes: dict[str, int]) -> Permutation:
    return {g: torch.arange(n) for g, n in sizes.items()}
