"""The merge-many study (issue 12): the merged net of N against N, the mean endpoint and the
output-averaged ensemble of the same N nets.

One unit per net config (model/width/depth/norm/dataset of the grid) and N-tuple of seeds.
The unit aligns the N trained endpoints once per alignment ``method``
(:func:`repair_dist.align_many`: ``weight`` / ``activation`` to net 0, or ``merge_many``),
averages them uniformly, and reports the plain average (``aligned``) and each REPAIR
``variant``; the unaligned average (``naive``, method ``none``) is reported once per unit.
Every merged net is compared with the mean of its N endpoints (``barrier_*``) and with the
ensemble :func:`repair_dist.ensemble` of the same N nets (``ensemble_gap_*``), the baseline
a user weighs a merged net against (one net's cost instead of N).

The rows go to their own ``merges`` table, not to ``trials``: a ``trials`` row is keyed by a
*pair* (endpoint_a/endpoint_b, seed_a/seed_b, a path over alpha), and an N-tuple has neither a
pair nor a path. With N = 2, ``weight`` and ``activation`` are exactly the pair path at alpha
0.5 (:func:`repair_dist.merge_many`'s contract), so the N = 2 row equals the merge trial's
midpoint of the same seeds.

N-tuples are drawn from the sweep's seed list (``seeds``, or the distinct seeds of ``pairs``)
by rotation: group ``g`` of size N starts at position ``g * N`` (mod the number of seeds) and
wraps around, so groups are disjoint while the seeds last. Every seed a tuple names becomes an
endpoint of the sweep (:meth:`MergeManyStudy.endpoints`), trained once in stage 1 like any.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd

from ...variants import ALIGN_METHODS
from .base import Study, StudyConfig, StudyInputs, StudySpec, check_choices, check_repair_variants

if TYPE_CHECKING:
    from ..config import EndpointConfig, Sweep

#: The two baselines every unit reports besides the REPAIR variants.
BASELINES = ("naive", "aligned")
#: The ``method`` of the unaligned average (no alignment at all).
NO_ALIGNMENT = "none"
#: Per-(method, variant) columns of a ``merges`` row that become MLflow metrics.
ROW_METRICS = (
    "acc",
    "loss",
    "train_acc",
    "train_loss",
    "barrier_acc",
    "barrier_loss",
    "ensemble_gap_acc",
    "ensemble_gap_loss",
    "seconds",
)
#: Per-unit columns (the same in every row of a unit), logged once.
UNIT_METRICS = ("n_models", "endpoint_acc", "endpoint_loss", "ensemble_acc", "ensemble_loss")


@dataclass(frozen=True)
class MergeManyConfig(StudyConfig):
    """Merged nets of ``n_models`` endpoints each (every N >= 2, at most the number of seeds),
    ``groups`` N-tuples per N; aligned with each of ``methods`` (weight | activation |
    merge_many) and renormalised with each REPAIR of ``variants``. ``naive`` and ``aligned``
    are always reported and need not be listed.

    Defaults: ``weight`` (every net weight-matched to net 0, the pairwise Git Re-Basin) and
    ``merge_many`` (Git Re-Basin's MergeMany, no reference net): the two data-free matchers,
    so the alignment costs no pass over data; ``activation`` is one pass per net.
    """

    n_models: tuple[int, ...] = (2, 3)
    methods: tuple[str, ...] = ("weight", "merge_many")
    variants: tuple[str, ...] = ("full",)
    groups: int = 1

    def __post_init__(self) -> None:
        for name in ("n_models", "methods", "variants"):
            value = getattr(self, name)
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                value = (value,)
            object.__setattr__(self, name, tuple(value) if isinstance(value, list) else value)


def sweep_seeds(sweep: Sweep) -> list[int]:
    """The seeds N-tuples are drawn from: ``seeds``, or the distinct seeds of ``pairs``."""
    if sweep.pairs is not None:
        return list(dict.fromkeys(int(s) for pair in sweep.seed_pairs() for s in pair))
    return list(dict.fromkeys(int(s) for s in sweep.seeds))


def seed_tuples(seeds: list[int], n: int, groups: int) -> list[tuple[int, ...]]:
    """Up to ``groups`` distinct N-tuples by rotation (see the module doc), in draw order.

    Tuples naming the same set of seeds count once (the set, not the order, is the sample).
    """
    out: dict[frozenset[int], tuple[int, ...]] = {}
    if not 2 <= n <= len(seeds):
        return []
    for g in range(groups):
        start = g * n
        picked = tuple(seeds[(start + k) % len(seeds)] for k in range(n))
        out.setdefault(frozenset(picked), picked)
    return list(out.values())


def _nets(config: MergeManyConfig, sweep: Sweep) -> list[tuple[EndpointConfig, ...]]:
    """The N-tuples of endpoints, in grid order (arch combo, N, group); valid N only."""
    seeds = sweep_seeds(sweep)
    groups = int(config.groups) if _is_int(config.groups) and int(config.groups) >= 1 else 1
    tuples = [t for n in _valid_ns(config, len(seeds)) for t in seed_tuples(seeds, n, groups)]
    out = []
    archs = sweep.archs if isinstance(sweep.archs, tuple) else ()
    for arch in (a for a in archs if hasattr(a, "combos")):
        for width, depth, norm in arch.combos():
            for picked in tuples:
                out.append(
                    tuple(sweep._endpoint(arch.model, width, depth, norm, s) for s in picked)
                )
    return out


def _valid_ns(config: MergeManyConfig, count: int) -> list[int]:
    values = config.n_models if isinstance(config.n_models, tuple) else ()
    return [int(n) for n in values if _is_int(n) and 2 <= int(n) <= count]


def _is_int(x: object) -> bool:
    from ..config import is_int

    return is_int(x)


class MergeManyStudy(Study):
    name: ClassVar[str] = "merge_many"
    field: ClassVar[str] = "merge_many"
    tables: ClassVar[tuple[str, ...]] = ("merges",)
    config_type: ClassVar[type] = MergeManyConfig

    def problems(self, config: Any, sweep: Sweep) -> list[str]:
        from ..config import fmt_value

        if not isinstance(config, MergeManyConfig):
            got = type(config).__name__
            return [f"merge_many: expected a MergeManyConfig or a mapping, got {got}"]
        out: list[str] = []
        seeds = sweep_seeds(sweep) if isinstance(sweep.seeds, tuple) else []
        ns = config.n_models
        if not isinstance(ns, tuple) or not ns:
            out.append(f"merge_many.n_models: must be a non-empty list of integers (got {ns!r})")
            ns = ()
        not_int = [n for n in ns if not _is_int(n)]
        if not_int:
            out.append(f"merge_many.n_models: {', '.join(map(repr, not_int))} not an integer")
        small = [n for n in ns if _is_int(n) and int(n) < 2]
        if small:
            out.append(
                f"merge_many.n_models: {', '.join(map(fmt_value, small))} below 2 "
                "(merging needs at least 2 nets)"
            )
        big = [n for n in ns if _is_int(n) and int(n) > len(seeds)]
        if big and seeds:
            out.append(
                f"merge_many.n_models: {', '.join(map(fmt_value, big))} more nets than the "
                f"sweep's {len(seeds)} seeds ({', '.join(map(str, seeds))}); add seeds or "
                "lower n_models"
            )
        check_choices(out, "merge_many.methods", config.methods, ALIGN_METHODS)
        # [] is fine: only the naive and aligned averages
        check_repair_variants(out, "merge_many.variants", config.variants, "unit")
        groups = config.groups
        if not (_is_int(groups) and int(groups) >= 1):
            out.append(f"merge_many.groups: must be an integer >= 1 (got {groups!r})")
        elif seeds:
            for n in _valid_ns(config, len(seeds)):
                found = len(seed_tuples(seeds, n, int(groups)))
                if found < int(groups):
                    out.append(
                        f"merge_many.groups: {groups} distinct {n}-tuples asked for, but "
                        f"rotating {len(seeds)} seeds gives only {found}; add seeds or "
                        "lower groups"
                    )
        return out

    def specs(self, config: MergeManyConfig, sweep: Sweep) -> list[StudySpec]:
        settings = (
            ("methods", tuple(config.methods)),
            ("variants", tuple(v for v in config.variants if v not in BASELINES)),
            ("residual", sweep.residual),
        )
        out = {
            StudySpec(sweep.name, self.name, eps, settings): None for eps in _nets(config, sweep)
        }
        return list(out)

    def endpoints(self, config: MergeManyConfig, sweep: Sweep) -> list[EndpointConfig]:
        """Every net some N-tuple names (seeds beyond the sweep's pairs included). Reads only
        ``n_models`` and ``groups`` (skipping bad values), so it is safe before validation."""
        return list(dict.fromkeys(ep for eps in _nets(config, sweep) for ep in eps))

    def run(self, spec: StudySpec, inputs: StudyInputs) -> dict[str, pd.DataFrame]:
        # Library internals this study computes with, in one place (easy to re-point); here,
        # not at the top, so that planning a sweep never imports torch.
        from ...many import ensemble
        from ...merge import interpolate
        from ...metrics import evaluate
        from ...passes import resolve_executor
        from ...perm import apply_permutation, permutation_spec
        from ...perm.many import align_many
        from ...repair import repair

        nets = [inputs.store.load(ep.key())[0] for ep in spec.endpoints]
        n = len(nets)
        weights = [1.0 / n] * n
        seed = spec.endpoints[0].seed  # the pair path's weight-matching seed (seed_a)
        executor = resolve_executor(inputs.workers)
        train, test = inputs.train_plan, inputs.test_plan
        ends = [evaluate(net, test, workers=executor) for net in nets]
        end_acc = sum(e["acc"] for e in ends) / n
        end_loss = sum(e["loss"] for e in ends) / n
        ens = evaluate(ensemble(nets, weights), test, workers=executor)
        spec_ = permutation_spec(nets[0])

        rows: list[dict[str, Any]] = []

        def measure(method: str, variant: str, merged: Any, seconds: float) -> None:
            on_test = evaluate(merged, test, workers=executor)
            on_train = evaluate(merged, train, workers=executor)
            rows.append(
                {
                    "method": method,
                    "variant": variant,
                    "acc": on_test["acc"],
                    "loss": on_test["loss"],
                    "train_acc": on_train["acc"],
                    "train_loss": on_train["loss"],
                    "barrier_acc": end_acc - on_test["acc"],
                    "barrier_loss": on_test["loss"] - end_loss,
                    "ensemble_gap_acc": ens["acc"] - on_test["acc"],
                    "ensemble_gap_loss": on_test["loss"] - ens["loss"],
                    "seconds": seconds,
                }
            )

        started = time.perf_counter()
        measure(NO_ALIGNMENT, "naive", interpolate(nets, weights), time.perf_counter() - started)
        for method in spec.setting("methods"):
            started = time.perf_counter()
            perms = align_many(
                nets,
                train,
                method=method,
                workers=executor,
                spec=spec_,
                residual=spec.setting("residual"),
                batch_size=spec.batch_size,
                seed=seed,
            )
            aligned = [apply_permutation(m, p, spec_) for m, p in zip(nets, perms, strict=True)]
            merged = interpolate(aligned, weights)
            align_seconds = time.perf_counter() - started
            measure(method, "aligned", merged, align_seconds)
            for variant in spec.setting("variants"):
                started = time.perf_counter()
                repaired = repair(
                    merged,
                    aligned,
                    weights,
                    train,
                    variant,
                    spec=spec_,
                    batch_size=spec.batch_size,
                    workers=executor,
                )
                measure(method, variant, repaired, align_seconds + time.perf_counter() - started)
        frame = pd.DataFrame(rows).assign(
            trial_key=spec.key(),
            **spec.id_columns(),
            n_models=n,
            seeds=",".join(str(ep.seed) for ep in spec.endpoints),
            endpoints=",".join(ep.key() for ep in spec.endpoints),
            endpoint_acc=end_acc,
            endpoint_loss=end_loss,
            ensemble_acc=ens["acc"],
            ensemble_loss=ens["loss"],
            residual=spec.setting("residual"),
        )
        return {"merges": frame}

    def plot(self, frames: Mapping[str, pd.DataFrame], path: str, title: str) -> str:
        return plot_merges(frames["merges"], path, title)

    def mlflow(
        self, frames: Mapping[str, pd.DataFrame]
    ) -> tuple[dict[str, float], list[tuple[str, float, int]]]:
        """``<column>.<method>.<variant>`` (e.g. ``barrier_acc.merge_many.full``) per row, and
        the unit's ``endpoint_acc``, ``ensemble_acc``, ... once. No step metrics."""
        df = frames["merges"]
        metrics: dict[str, float] = {}
        for row in df.itertuples(index=False):
            for col in ROW_METRICS:
                value = getattr(row, col)
                if pd.notna(value):
                    metrics[f"{col}.{row.method}.{row.variant}"] = float(value)
        if not df.empty:
            for col in UNIT_METRICS:
                metrics[col] = float(df[col].iloc[0])
        return metrics, []


def plot_merges(merges: pd.DataFrame, path: str, title: str = "") -> str:
    """One unit's figure: test accuracy and loss of each merged net (a bar per method and
    variant) against the mean endpoint (dashed) and the ensemble of the same nets (dotted)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..plots import _save  # atomic PNG write, like every sweep figure

    if merges.empty:
        raise ValueError("plot_merges: no merges rows to draw")
    fig = Figure(figsize=(10.4, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    labels = [f"{m} {v}" for m, v in zip(merges["method"], merges["variant"], strict=True)]
    colors = {"naive": "0.55", "aligned": "black"}
    first = merges.iloc[0]
    for i, (metric, what) in enumerate((("acc", "accuracy"), ("loss", "loss"))):
        ax = fig.add_subplot(1, 2, i + 1)
        xs = range(len(merges))
        bars = [colors.get(str(v), "C0") for v in merges["variant"]]
        ax.bar(xs, merges[metric].to_numpy(float), color=bars)
        ax.axhline(float(first[f"endpoint_{metric}"]), color="C2", ls="--", label="mean endpoint")
        ax.axhline(float(first[f"ensemble_{metric}"]), color="C3", ls=":", label="ensemble")
        ax.set_xticks(list(xs), labels, fontsize="small", rotation=30, ha="right")
        ax.set_ylabel(f"test {what}")
        ax.grid(alpha=0.3, axis="y")
        if i == 0:
            ax.legend(fontsize="small")
    fig.suptitle(title or f"merged net of {int(first['n_models'])} (seeds {first['seeds']})")
    return _save(fig, path)


__all__ = ["MergeManyConfig", "MergeManyStudy", "plot_merges", "seed_tuples", "sweep_seeds"]
