"""Merge N nets of one architecture: align into one basin, interpolate, REPAIR; and the
output-averaged ensemble that a merged net is compared with.

A merged net of N is the weight-space counterpart of an ensemble of the same N nets: one
net's cost instead of N. Its barrier against N (how much is lost as more nets are folded into
one) is measured against the mean endpoint and against that ensemble.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from .data.batches import BatchPlan
from .merge import interpolate
from .passes import Workers, resolve_executor
from .perm import apply_permutation, permutation_spec
from .perm.many import align_many, check_method, check_nets, check_reference, check_workers
from .perm.spec import PermutationSpec
from .repair import VARIANTS, repair


def check_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    """Uniform weights for None; else one finite weight per net, summing to 1 (one error)."""
    if weights is None:
        return [1.0 / count] * count
    w = [float(x) for x in weights]
    if len(w) != count:
        raise ValueError(f"need one weight per net: got {len(w)} weights for {count} nets")
    if not all(math.isfinite(x) for x in w):
        raise ValueError(f"weights must be finite (got {w})")
    if abs(sum(w) - 1.0) > 1e-6:
        raise ValueError(f"weights must sum to 1 (got {w}, sum {sum(w):.6g})")
    return w


def merge_many(
    nets: Sequence[nn.Module],
    train: Dataset | BatchPlan | None,
    *,
    method: str = "merge_many",
    variant: str | None = "full",
    weights: Sequence[float] | None = None,
    workers: Workers = 1,
    reference: int | None = None,
    spec: PermutationSpec | None = None,
    residual: str = "output",
    batch_size: int = 500,
    seed: int = 0,
) -> nn.Module:
    """Align ``nets`` with :func:`~repair_dist.perm.many.align_many` (``method``), interpolate
    them with ``weights`` (uniform by default) and renormalise with REPAIR ``variant``.

    REPAIR's goal statistics are the weighted means (and weighted stds) of the N aligned
    endpoints' channel statistics. ``variant=None`` returns the plain interpolation (the
    "aligned" curve point). ``train`` may be None only for weight-based methods without REPAIR.
    With two nets, ``method="weight"`` or ``"activation"`` equals the pair path
    ``repair(interpolate([A, pi(B)], w), [A, pi(B)], w, train, variant)``.
    """
    check_nets(nets)
    check_method(method)
    w = check_weights(weights, len(nets))
    if variant is not None and variant not in VARIANTS:
        raise ValueError(
            f"unknown REPAIR variant {variant!r}; choose one of {', '.join(VARIANTS)} or None"
        )
    check_reference(reference, len(nets))
    passes_over_data = method == "activation" or variant is not None
    if train is None and passes_over_data:
        raise ValueError(
            f"merge_many with method={method!r} and variant={variant!r} needs train data"
        )
    check_workers(workers)
    spec = spec or permutation_spec(nets[0])
    # one pool for the alignment and REPAIR passes; none at all when nothing reads data
    executor = resolve_executor(workers) if passes_over_data else workers
    perms = align_many(
        nets,
        train,
        method=method,
        reference=reference,
        workers=executor,
        spec=spec,
        residual=residual,
        batch_size=batch_size,
        seed=seed,
    )
    aligned = [apply_permutation(n, p, spec) for n, p in zip(nets, perms, strict=True)]
    merged = interpolate(aligned, w)
    if variant is None:
        return merged
    assert train is not None  # checked above
    return repair(
        merged, aligned, w, train, variant, spec=spec, batch_size=batch_size, workers=executor
    )


class Ensemble(nn.Module):
    """Output-averaged ensemble: ``log(sum_k w_k softmax(net_k(x)))``.

    Returning the log of the mean probability makes the module a drop-in "net": cross-entropy
    on its output is the ensemble's negative log-likelihood and its argmax is the ensemble's
    prediction, so :func:`~repair_dist.evaluate` measures it like any single net.
    """

    def __init__(self, nets: Sequence[nn.Module], weights: Sequence[float]) -> None:
        super().__init__()
        self.members = nn.ModuleList(nets)
        self.register_buffer("weights", torch.tensor(list(weights), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logp = torch.stack([m(x).log_softmax(-1) for m in self.members])
        return torch.logsumexp(logp + self.weights.log().view(-1, 1, 1), dim=0)


def ensemble(nets: Sequence[nn.Module], weights: Sequence[float] | None = None) -> nn.Module:
    """The output-averaged ensemble of ``nets`` (uniform ``weights`` by default), eval mode."""
    check_nets(nets)
    w = check_weights(weights, len(nets))
    if any(x <= 0 for x in w):
        raise ValueError(f"ensemble weights must be positive (got {w})")
    return Ensemble(list(nets), w).eval()
