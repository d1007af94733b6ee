"""Weight matching (Git Re-Basin): coordinate descent over groups, one assignment per step.

For group ``g`` of size n, ``C = sum over (param, axis) in g of W_A[axis-major] @ W~_B^T`` with
every *other* axis of B already permuted; the assignment maximising ``trace(C[:, perm])``
raises (never lowers) the total inner product ``sum_param <W_A, perm(W_B)>``. Groups are
visited in a seeded random order; iteration stops when a full sweep improves nothing.
"""

from __future__ import annotations

import torch
from torch import nn

from .activation import check_same_architecture
from .apply import Permutation, identity_permutation, permute_tensor
from .spec import PermutationSpec, permutation_spec


def _parameters(net: nn.Module, spec: PermutationSpec) -> dict[str, torch.Tensor]:
    # Only learned parameters enter the objective; BN running statistics follow along.
    return {
        k: v.detach().to(torch.float64).cpu() for k, v in net.named_parameters() if k in spec.axes
    }


def matching_objective(
    params_a: dict[str, torch.Tensor],
    params_b: dict[str, torch.Tensor],
    spec: PermutationSpec,
    perm: Permutation,
) -> float:
    """sum over parameters of <W_A, perm(W_B)>: what weight matching maximises."""
    return float(
        sum(
            (w * permute_tensor(params_b[k], spec.axes[k], perm)).sum() for k, w in params_a.items()
        )
    )


def weight_matching(
    net_a: nn.Module,
    net_b: nn.Module,
    *,
    spec: PermutationSpec | None = None,
    max_iter: int = 100,
    seed: int = 0,
    init: Permutation | None = None,
    history: list[float] | None = None,
) -> Permutation:
    """Permutation of B's units that maximises the inner product of A's and B's weights.

    If ``history`` is a list, the objective is appended after initialisation and after every
    group update (so callers and tests can check it never decreases).
    """
    spec = spec or permutation_spec(net_a)
    check_same_architecture(net_a, net_b)
    return match_weights(
        _parameters(net_a, spec),
        _parameters(net_b, spec),
        spec,
        spec.group_sizes(net_a),
        max_iter=max_iter,
        seed=seed,
        init=init,
        history=history,
    )


def match_weights(
    pa: dict[str, torch.Tensor],
    pb: dict[str, torch.Tensor],
    spec: PermutationSpec,
    sizes: dict[str, int],
    *,
    max_iter: int = 100,
    seed: int = 0,
    init: Permutation | None = None,
    history: list[float] | None = None,
) -> Permutation:
    """Weight matching of parameter dicts: the target ``pa`` need not be a net.

    MergeMany matches a net to the mean of the others and the straight-through estimator to a
    free copy of the weights, so the coordinate descent works on float64 tensors keyed like
    :func:`_parameters`; :func:`weight_matching` is this on two nets.
    """
    perm = {g: p.clone() for g, p in (init or identity_permutation(sizes)).items()}
    members: dict[str, list[tuple[str, int]]] = {g: [] for g in sizes}
    for name, per_axis in spec.axes.items():
        if name in pa:
            for axis, g in enumerate(per_axis):
                if g is not None:
                    members[g].append((name, axis))
    groups = list(sizes)
    from scipy.optimize import linear_sum_assignment  # here: a sweep's planning stays light

    rng = torch.Generator().manual_seed(seed)
    if history is not None:
        history.append(matching_objective(pa, pb, spec, perm))
    for _ in range(max_iter):
        improved = False
        for gi in torch.randperm(len(groups), generator=rng).tolist():
            g, n = groups[gi], sizes[groups[gi]]
            cost = torch.zeros(n, n, dtype=torch.float64)
            for name, axis in members[g]:
                wa = pa[name].movedim(axis, 0).reshape(n, -1)
                wb = permute_tensor(pb[name], spec.axes[name], perm, skip=g)
                cost += wa @ wb.movedim(axis, 0).reshape(n, -1).T
            _, col = linear_sum_assignment(cost.numpy(), maximize=True)
            new = torch.as_tensor(col, dtype=torch.long)
            idx = torch.arange(n)
            gain = float(cost[idx, new].sum() - cost[idx, perm[g]].sum())
            if gain > 1e-12 * max(1.0, float(cost.abs().sum())):
                perm[g] = new
                improved = True
            if history is not None:
                history.append(matching_objective(pa, pb, spec, perm))
        if not improved:
            break
    return perm
