"""Align N nets of one architecture into one basin: to a reference net, or by MergeMany.

Methods (``ALIGN_METHODS``):

* ``weight``     - every net weight-matched to the reference net (pairwise Git Re-Basin).
* ``activation`` - every net activation-matched to the reference net (one pass per net).
* ``merge_many`` - Git Re-Basin's MergeMany: in a seeded random order, each net is
  weight-matched to the mean of the (already permuted) others, until a whole round changes no
  permutation. No net is privileged during the search; the result is then expressed in the
  reference's unit order (net 0 by default), a relabelling that changes no merged function.

MergeMany is coordinate ascent on the pairwise objective ``sum_{i<j} <theta_i, theta_j>``
(:func:`merge_many_objective`): with the others fixed, ``<mean of others, pi(theta_i)>`` is
that objective up to a constant and a factor ``N - 1``, and weight matching only accepts
assignments that raise it. Equivalently it lowers the spread ``sum_i ||theta_i - mean||^2``,
because permutations preserve every norm.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from ..data.batches import BatchPlan
from ..passes import Executor, Workers, resolve_executor
from ..variants import ALIGN_METHODS
from .activation import activation_matching, check_same_architecture
from .apply import (
    Permutation,
    compose_permutations,
    identity_permutation,
    invert_permutation,
    permute_tensor,
)
from .spec import PermutationSpec, permutation_spec
from .weight import _parameters, match_weights, weight_matching

Params = dict[str, torch.Tensor]


def check_nets(nets: Sequence[nn.Module]) -> None:
    """One readable error for too few nets, non-modules, or mixed architectures."""
    if isinstance(nets, nn.Module) or not isinstance(nets, Sequence):
        raise TypeError(f"nets must be a list of nn.Modules (got {type(nets).__name__})")
    if len(nets) < 2:
        raise ValueError(f"need at least 2 nets to align or merge (got {len(nets)})")
    bad = [i for i, n in enumerate(nets) if not isinstance(n, nn.Module)]
    if bad:
        raise TypeError(f"nets[{bad[0]}] is a {type(nets[bad[0]]).__name__}, not an nn.Module")
    check_same_architecture(*nets)


def check_reference(reference: int | None, count: int) -> int:
    """The reference index (0 when None), or one error naming the valid range."""
    if reference is None:
        return 0
    if isinstance(reference, bool) or not isinstance(reference, int):
        raise TypeError(f"reference must be a net index (got {reference!r})")
    if not 0 <= reference < count:
        raise ValueError(f"reference {reference} is out of range for {count} nets (0..{count - 1})")
    return reference


def check_method(method: str) -> None:
    if method not in ALIGN_METHODS:
        raise ValueError(
            f"unknown alignment method {method!r}; choose one of {', '.join(ALIGN_METHODS)}"
        )


def check_workers(workers: Workers) -> Workers:
    """Reject a bad ``workers`` up front, without starting a pool (nothing to shard yet)."""
    if isinstance(workers, Executor) or (
        isinstance(workers, int) and not isinstance(workers, bool) and workers >= 1
    ):
        return workers
    raise ValueError(f"workers must be a positive int or an executor (got {workers!r})")


def _is_identity(perm: Permutation) -> bool:
    return all(torch.equal(p, torch.arange(len(p))) for p in perm.values())


def _permute_params(params: Params, spec: PermutationSpec, perm: Permutation) -> Params:
    return {k: permute_tensor(v, spec.axes[k], perm) for k, v in params.items()}


def merge_many_objective(params: Sequence[Params]) -> float:
    """``sum_{i<j} <theta_i, theta_j>`` over learned parameters: what MergeMany raises.

    Computed as ``(||sum_i theta_i||^2 - sum_i ||theta_i||^2) / 2`` in float64.
    """
    total, norms = 0.0, 0.0
    for key in params[0]:
        stack = torch.stack([p[key] for p in params])
        total += float(stack.sum(0).square().sum())
        norms += float(stack.square().sum())
    return (total - norms) / 2


def merge_many_permutations(
    nets: Sequence[nn.Module],
    *,
    spec: PermutationSpec | None = None,
    max_iter: int = 100,
    seed: int = 0,
    history: list[float] | None = None,
) -> list[Permutation]:
    """MergeMany (see the module docstring); permutations in each net's own unit order.

    ``history`` (a list) receives :func:`merge_many_objective` at the start and after every
    single-net update, so callers and tests can check that it never decreases.
    """
    spec = spec or permutation_spec(nets[0])
    sizes = spec.group_sizes(nets[0])
    params = [_parameters(n, spec) for n in nets]
    perms = [identity_permutation(sizes) for _ in nets]
    sums = {k: sum(p[k] for p in params) for k in params[0]}
    gen = torch.Generator().manual_seed(seed)
    if history is not None:
        history.append(merge_many_objective(params))
    for _ in range(max_iter):
        changed = False
        for i in torch.randperm(len(nets), generator=gen).tolist():
            others = {k: (sums[k] - params[i][k]) / (len(nets) - 1) for k in sums}
            step_seed = int(torch.randint(2**31 - 1, (), generator=gen))
            step = match_weights(others, params[i], spec, sizes, max_iter=max_iter, seed=step_seed)
            if not _is_identity(step):
                moved = _permute_params(params[i], spec, step)
                sums = {k: sums[k] - params[i][k] + moved[k] for k in sums}
                params[i] = moved
                perms[i] = compose_permutations(perms[i], step)
                changed = True
            if history is not None:
                history.append(merge_many_objective(params))
        if not changed:
            break
    return perms


def align_many(
    nets: Sequence[nn.Module],
    train: Dataset | BatchPlan | None = None,
    *,
    method: str = "weight",
    reference: int | None = None,
    workers: Workers = 1,
    spec: PermutationSpec | None = None,
    residual: str = "output",
    batch_size: int = 500,
    max_iter: int = 100,
    seed: int = 0,
    history: list[float] | None = None,
) -> list[Permutation]:
    """One permutation per net that brings all ``nets`` into one basin (identity for the
    reference, net 0 by default).

    ``apply_permutation(nets[k], perms[k])`` are the aligned nets. ``train`` is needed by
    ``activation`` only; ``workers`` shards its passes. ``history`` collects the MergeMany
    objective (``merge_many`` only). With two nets, ``weight`` and ``activation`` give exactly
    :func:`weight_matching` / :func:`activation_matching` of net 1 to net 0.
    """
    check_nets(nets)
    check_method(method)
    ref = check_reference(reference, len(nets))
    check_workers(workers)
    if method == "activation" and train is None:
        raise ValueError("activation alignment needs train data (align_many(nets, train, ...))")
    spec = spec or permutation_spec(nets[0])
    sizes = spec.group_sizes(nets[0])
    if method == "merge_many":
        perms = merge_many_permutations(
            nets, spec=spec, max_iter=max_iter, seed=seed, history=history
        )
        relabel = invert_permutation(perms[ref])
        return [compose_permutations(p, relabel) for p in perms]
    # Only activation matching passes over data; the others must not start a Ray pool.
    executor = resolve_executor(workers) if method == "activation" else workers
    out = []
    for k, net in enumerate(nets):
        if k == ref:
            out.append(identity_permutation(sizes))
        elif method == "weight":
            out.append(weight_matching(nets[ref], net, spec=spec, max_iter=max_iter, seed=seed))
        else:
            kw = dict(spec=spec, residual=residual, batch_size=batch_size, workers=executor)
            out.append(activation_matching(nets[ref], net, train, **kw))
    return out
