"""The pruning study (issue 11; Qu & Horvath 2024): prune each endpoint, repair it, measure.

One unit per trained endpoint: :func:`repair_dist.prune.pruning_rows` prunes the net at every
(kind, sparsity), repairs each pruned net towards the dense net's statistics with every
requested REPAIR variant, and evaluates ``dense``, ``pruned`` and ``repaired-<variant>`` on
both splits. The rows go to the ``pruning`` table with the net's columns; the figure is test
accuracy against sparsity, one line per variant and one panel per kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd

from ...variants import PRUNE_KINDS, PRUNE_REPAIR_VARIANTS, STRUCTURED_KINDS
from .base import Study, StudyConfig, StudyInputs, StudySpec, check_choices

if TYPE_CHECKING:
    from ..config import Sweep

#: Norms whose nets carry a BatchNorm |gamma| per filter (what ``filter_bn`` ranks by).
BN_NORMS = ("bn", "psbn")


@dataclass(frozen=True)
class PruningConfig(StudyConfig):
    """Every trained endpoint pruned at ``kinds`` x ``sparsities`` and repaired with
    ``variants`` (of ``full``, ``rescale``, ``reshift``)."""

    kinds: tuple[str, ...] = ("global_l1",)
    sparsities: tuple[float, ...] = (0.8, 0.9, 0.95)
    variants: tuple[str, ...] = PRUNE_REPAIR_VARIANTS

    def __post_init__(self) -> None:
        for name in ("kinds", "sparsities", "variants"):
            value = getattr(self, name)
            if isinstance(value, (str, int, float)):
                value = (value,)
            object.__setattr__(self, name, tuple(value) if isinstance(value, list) else value)


class PruneStudy(Study):
    name: ClassVar[str] = "prune"
    field: ClassVar[str] = "pruning"
    tables: ClassVar[tuple[str, ...]] = ("pruning",)
    config_type: ClassVar[type] = PruningConfig

    def problems(self, config: Any, sweep: Sweep) -> list[str]:
        from ..config import fmt_value, is_number

        if not isinstance(config, PruningConfig):
            return [f"pruning: expected a PruningConfig or a mapping, got {type(config).__name__}"]
        out: list[str] = []
        check_choices(out, "pruning.kinds", config.kinds, PRUNE_KINDS)
        check_choices(out, "pruning.variants", config.variants, PRUNE_REPAIR_VARIANTS)
        sparsities = config.sparsities
        if not isinstance(sparsities, tuple) or not sparsities:
            out.append(f"pruning.sparsities: must be a non-empty list (got {sparsities!r})")
        else:
            bad = [s for s in sparsities if not (is_number(s) and 0.0 <= float(s) < 1.0)]
            if bad:
                out.append(
                    f"pruning.sparsities: {', '.join(map(fmt_value, bad))} outside [0, 1) "
                    "(1 would remove every weight)"
                )
        kinds = config.kinds if isinstance(config.kinds, tuple) else ()
        if "filter_bn" in kinds:
            for arch in sweep.archs if isinstance(sweep.archs, tuple) else ():
                no_bn = [n for n in getattr(arch, "norms", ()) if n not in BN_NORMS]
                if no_bn:
                    out.append(
                        f"pruning.kinds: filter_bn ranks filters by BatchNorm |gamma| but "
                        f"{arch.model} norms {', '.join(map(str, no_bn))} have no BatchNorm; "
                        "use filter_l1 for them"
                    )
        if any(k in STRUCTURED_KINDS for k in kinds):
            for arch in sweep.archs if isinstance(sweep.archs, tuple) else ():
                if "ln" in getattr(arch, "norms", ()):
                    out.append(
                        f"pruning.kinds: structured pruning is refused for {arch.model} with "
                        "norm ln (LayerNorm mixes channels, so a removed filter still acts)"
                    )
        return out

    def specs(self, config: PruningConfig, sweep: Sweep) -> list[StudySpec]:
        settings = (
            ("kinds", tuple(config.kinds)),
            ("sparsities", tuple(float(s) for s in config.sparsities)),
            ("variants", tuple(config.variants)),
        )
        return [StudySpec(sweep.name, self.name, (ep,), settings) for ep in sweep.endpoints()]

    def run(self, spec: StudySpec, inputs: StudyInputs) -> dict[str, pd.DataFrame]:
        from ...prune import pruning_rows  # here, not at the top: planning needs no torch

        (ep,) = spec.endpoints
        dense, _ = inputs.store.load(ep.key())
        rows = pruning_rows(
            dense,
            inputs.train_plan,
            inputs.test_plan,
            kinds=spec.setting("kinds"),
            sparsities=spec.setting("sparsities"),
            variants=spec.setting("variants"),
            endpoint_key=ep.key(),
            batch_size=spec.batch_size,
            workers=inputs.workers,
        )
        return {"pruning": rows.assign(**spec.id_columns(), seed=ep.seed)}

    def plot(self, frames: Mapping[str, pd.DataFrame], path: str, title: str) -> str:
        from ..plots import plot_pruning

        return plot_pruning(frames["pruning"], path, title=title)

    def mlflow(
        self, frames: Mapping[str, pd.DataFrame]
    ) -> tuple[dict[str, float], list[tuple[str, float, int]]]:
        """``<split>_acc.<kind>.<variant>.s<sparsity>`` and ``..._loss``; step metrics
        ``prune.<kind>.<variant>.test_acc`` with step = index of the sparsity (and
        ``prune.sparsity`` mapping step to sparsity), for charts against sparsity."""
        df = frames["pruning"]
        metrics: dict[str, float] = {}
        sparsities = sorted({float(s) for s in df["sparsity"]})
        step = {s: i for i, s in enumerate(sparsities)}
        steps = [("prune.sparsity", s, i) for i, s in enumerate(sparsities)]
        for row in df.itertuples(index=False):
            where = f"{row.kind}.{row.variant}.s{float(row.sparsity):g}"
            for col in ("train_acc", "train_loss", "test_acc", "test_loss", "measured_sparsity"):
                value = float(getattr(row, col))
                if pd.notna(value):
                    metrics[f"{col}.{where}"] = value
            if pd.notna(row.test_acc):
                name = f"prune.{row.kind}.{row.variant}.test_acc"
                steps.append((name, float(row.test_acc), step[float(row.sparsity)]))
        return metrics, steps


__all__ = ["PruneStudy", "PruningConfig"]
