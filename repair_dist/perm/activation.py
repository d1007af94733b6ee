"""Activation matching: correlate units of A and B on data, then solve one assignment per group."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from ..data.batches import BatchPlan, as_plan
from ..passes import Probe, StatsDict, Workers, alignment_stats_pass, run_pass
from ..variants import RESIDUAL_MODES
from .apply import Permutation
from .spec import PermutationSpec, permutation_spec


def matching_probes(
    spec: PermutationSpec, residual: str = "output"
) -> dict[str, tuple[Probe, ...]]:
    if residual not in RESIDUAL_MODES:
        raise ValueError(f"residual must be one of {RESIDUAL_MODES} (got {residual!r})")
    missing = [g for g in spec.groups if not spec.match_probes.get(g)]
    if missing:
        raise ValueError(f"spec has no matching probe for groups {missing}")
    return {
        g: (spec.match_probes[g][-1:] if residual == "output" else spec.match_probes[g])
        for g in spec.groups
    }


def alignment_probes(
    spec: PermutationSpec, residual: str = "output", *, repair: bool = True
) -> list[Probe]:
    """Every probe one alignment pass needs: matching probes (and REPAIR's pre-activations)."""
    probes = [p for ps in matching_probes(spec, residual).values() for p in ps]
    if repair:
        probes += [Probe(rp.module) for rp in spec.repair_points]
    return list(dict.fromkeys(probes))


def repair_only_probes(spec: PermutationSpec, residual: str = "output") -> list[Probe]:
    """REPAIR probes that are not also matching probes (per-channel moments suffice there)."""
    matching = set(alignment_probes(spec, residual, repair=False))
    return [p for p in alignment_probes(spec, residual) if p not in matching]


def group_correlation(stats: StatsDict, probes: tuple[Probe, ...]) -> torch.Tensor:
    return sum((stats[p].corr() for p in probes), torch.zeros(()))


#: Correlations are rounded to this many decimals before the assignment: far above the float
#: noise of any reduction order (~1e-15), far below any difference that means something.
CORR_DECIMALS = 9


def assign(corr: torch.Tensor) -> torch.Tensor:
    """Column for every row maximising the total correlation, independent of float noise.

    Units that correlate with nothing (all-zero rows or columns after rounding: dead or
    constant units) tie with each other; the Hungarian solver breaks such ties by its search
    path, which the last bits of *other* entries steer. So every pair with a zero-row or
    zero-column member is re-paired by index: live rows take the free zero columns in
    ascending order, the zero rows the remaining columns. The total correlation is unchanged
    (each re-made pair still has a zero member), and the answer depends only on the rounded
    matrix, hence not on how many workers reduced the statistics.
    """
    from scipy.optimize import linear_sum_assignment  # here: importing the module stays light

    c = torch.round(corr.to(torch.float64), decimals=CORR_DECIMALS)
    _, col = linear_sum_assignment(c.numpy(), maximize=True)
    col = torch.as_tensor(col, dtype=torch.long)
    zero_row, zero_col = (c == 0).all(1), (c == 0).all(0)
    tied = zero_row | zero_col[col]
    if not tied.any():
        return col
    rows = torch.nonzero(tied).flatten()  # ascending
    cols = col[rows].sort().values
    free_zero_cols = cols[zero_col[cols]]
    live_rows = rows[~zero_row[rows]]  # each was paired with a zero column: enough of them
    out = col.clone()
    out[live_rows] = free_zero_cols[: len(live_rows)]
    rest = torch.cat([free_zero_cols[len(live_rows) :], cols[~zero_col[cols]]]).sort().values
    out[rows[zero_row[rows]]] = rest
    return out


def permutation_from_stats(
    stats: StatsDict, spec: PermutationSpec, residual: str = "output"
) -> Permutation:
    """Hungarian matching (maximum total correlation) for every group (see :func:`assign`)."""
    return {
        g: assign(group_correlation(stats, probes))
        for g, probes in matching_probes(spec, residual).items()
    }


def alignment_statistics(
    net_a: nn.Module,
    net_b: nn.Module,
    data: Dataset | BatchPlan,
    *,
    spec: PermutationSpec | None = None,
    residual: str = "output",
    batch_size: int = 500,
    workers: Workers = 1,
    repair: bool = True,
    repair_cross: bool = True,
    matching: bool = True,
) -> StatsDict:
    """One pass of A and B over ``data``: cross moments at every matching and REPAIR probe.

    ``repair=False``: matching probes only. ``repair_cross=False``: at REPAIR-only probes keep
    per-channel moments and skip the cross matrix (enough for every variant but
    ``closed_form``), which removes about half the statistics work of a deep MLP.
    ``matching=False``: REPAIR probes only (e.g. when weight matching finds the permutation,
    no correlation is read).
    """
    spec = spec or permutation_spec(net_a)
    check_same_architecture(net_a, net_b)
    if not matching and not repair:
        raise ValueError("alignment_statistics needs matching=True or repair=True")
    if matching:
        probes = alignment_probes(spec, residual, repair=repair)
        lean = repair_only_probes(spec, residual) if repair and not repair_cross else []
    else:
        probes = list(dict.fromkeys(Probe(rp.module) for rp in spec.repair_points))
        lean = [] if repair_cross else probes
    return run_pass(
        alignment_stats_pass,
        [net_a, net_b],
        as_plan(data, batch_size),
        workers,
        probes=probes,
        moments_only=lean,
    )


def activation_matching(
    net_a: nn.Module,
    net_b: nn.Module,
    data: Dataset | BatchPlan,
    *,
    spec: PermutationSpec | None = None,
    residual: str = "output",
    batch_size: int = 500,
    workers: Workers = 1,
) -> Permutation:
    """Permutation of B's units that maximises their activation correlation with A's."""
    spec = spec or permutation_spec(net_a)
    stats = alignment_statistics(
        net_a,
        net_b,
        data,
        spec=spec,
        residual=residual,
        batch_size=batch_size,
        workers=workers,
        repair=False,
    )
    return permutation_from_stats(stats, spec, residual)


def check_same_architecture(*nets: nn.Module) -> None:
    """Raise one readable error if the nets' tensors differ in names or shapes."""
    ref = {k: tuple(v.shape) for k, v in nets[0].state_dict().items()}
    for i, net in enumerate(nets[1:], start=1):
        other = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        if other == ref:
            continue
        missing = sorted(set(ref) - set(other))[:3]
        extra = sorted(set(other) - set(ref))[:3]
        shapes = [f"{k}: {ref[k]} vs {other[k]}" for k in ref if k in other and ref[k] != other[k]]
        detail = "; ".join(
            [f"missing {missing}"] * bool(missing)
            + [f"unexpected {extra}"] * bool(extra)
            + [f"shape {', '.join(shapes[:3])}"] * bool(shapes)
        )
        raise ValueError(f"architectures differ between net 0 and net {i}: {detail}")
