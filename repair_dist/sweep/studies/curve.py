"""The curve study (issue 10; Tatro et al. 2020): learned curves vs straight lines, per pair.

One unit per seed pair: match B to A by activations (the sweep's ``residual`` mode), measure
the straight lines (``naive``, ``aligned``, REPAIR ``full``) with the library's merge trial,
then fit a curve between A and aligned B (``curve-aligned``) and between A and B as trained
(``curve-naive``) with :func:`repair_dist.fit_curve`, and profile both on the same t grid.

Rows: ``curves`` holds all five lines (t in the alpha column); ``trials`` holds one row per
curve with the curve's barriers (max and midpoint, loss and accuracy), the curve-fit seconds
and ``reduction_vs_aligned`` against the *straight aligned line* (how much of the linear
barrier the curve removes). The straight lines' own ``trials`` rows are the merge trials'.

Each fitted middle point M is saved in the content-addressed checkpoint store under a key of
the endpoint keys, the curve settings and the matching that produced B's side (``none`` or
``activation-<residual>``), so a rerun (a lost trial, a new residual mode for the naive curve,
another sweep) loads M instead of fitting it again.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd

from ... import store as _store
from ...store import canonical_json
from ...variants import CURVE_KINDS as KINDS
from ...variants import alpha_grid
from .base import Study, StudyConfig, StudyInputs, StudySpec

if TYPE_CHECKING:
    from torch import nn

    from ...curves import Curve
    from ...store import CheckpointStore
    from ..config import Sweep

#: Variants of the curve rows, and the matching each fits on.
CURVE_ROWS = (("curve-naive", "none"), ("curve-aligned", "activation"))
#: The straight lines the curve trial measures for comparison (REPAIR ``full`` included).
LINE_VARIANTS = ("full",)


@dataclass(frozen=True)
class CurveConfig(StudyConfig):
    """A curve per pair: ``kind`` (bezier | polychain) trained ``epochs`` epochs of SGD at
    ``lr`` with ``batch_size``; profiled on ``ts`` (a count or values in [0, 1]; None: the
    sweep's alphas)."""

    kind: str = "bezier"
    epochs: int = 10
    lr: float = 0.03
    batch_size: int = 64
    ts: int | tuple[float, ...] | None = None


def _fit_key(spec: StudySpec, matching: str) -> str:
    """The store key of one fitted M: endpoints, curve settings and the matching used."""
    a, b = spec.endpoints
    fit = {k: spec.setting(k) for k in ("kind", "epochs", "lr", "batch_size")}
    payload = canonical_json(
        {
            "curve_mid": {"a": a.key(), "b": b.key(), **fit, "seed": a.seed, "matching": matching},
            "code_version": _store.CODE_VERSION,
        }
    )
    return "curve-" + hashlib.sha256(payload.encode()).hexdigest()[:16]


def fitted_curve(
    spec: StudySpec,
    store: CheckpointStore,
    net_a: nn.Module,
    net_b: nn.Module,
    train: Any,
    matching: str,
    fit: Callable[..., Curve] | None = None,
) -> tuple[Curve, float]:
    """(curve, fit seconds): M from the store when it was fitted before, else fitted and saved
    (by ``fit``, default :func:`repair_dist.fit_curve`).

    The seconds are those of the original fit (kept in M's meta), so a resumed trial reports
    what the curve cost, not what loading it cost.
    """
    from ...curves import Curve, fit_curve

    fit = fit_curve if fit is None else fit
    key = _fit_key(spec, matching)
    kind = spec.setting("kind")
    if store.has(key):
        mid, meta = store.load(key)
        return Curve(net_a, net_b, mid.state_dict(), kind), float(meta["fit_seconds"])
    curve = fit(
        net_a,
        net_b,
        train,
        kind=kind,
        epochs=spec.setting("epochs"),
        lr=spec.setting("lr"),
        batch_size=spec.setting("batch_size"),
        seed=spec.endpoints[0].seed,
    )
    meta = {
        "curve_mid_of": [e.key() for e in spec.endpoints],
        "matching": matching,
        "fit_seconds": curve.seconds,
        "history": curve.history,
        **{k: spec.setting(k) for k in ("kind", "epochs", "lr", "batch_size")},
    }
    store.save(key, curve.mid_net(), meta)
    return curve, curve.seconds


def _reduction(before: float, after: float) -> float:
    return (before - after) / before if before > 0 else math.nan


class CurveStudy(Study):
    name: ClassVar[str] = "curve"
    field: ClassVar[str] = "curve"
    tables: ClassVar[tuple[str, ...]] = ("curves", "trials")
    config_type: ClassVar[type] = CurveConfig

    def problems(self, config: Any, sweep: Sweep) -> list[str]:
        from ..config import fmt_value, is_int, is_number

        if not isinstance(config, CurveConfig):
            return [f"curve: expected a CurveConfig or a mapping, got {type(config).__name__}"]
        out = []
        if config.kind not in KINDS:
            out.append(f"curve.kind: unknown {config.kind!r}; choose one of {', '.join(KINDS)}")
        if not (is_int(config.epochs) and config.epochs >= 1):
            out.append(f"curve.epochs: must be an integer >= 1 (got {config.epochs!r})")
        if not (is_number(config.lr) and config.lr > 0):
            out.append(f"curve.lr: must be a number > 0 (got {config.lr!r})")
        if not (is_int(config.batch_size) and config.batch_size >= 1):
            out.append(f"curve.batch_size: must be an integer >= 1 (got {config.batch_size!r})")
        ts = config.ts
        if ts is None:
            pass
        elif is_int(ts):
            if int(ts) < 3:
                out.append(f"curve.ts: need at least 3 points (0, 0.5, 1), got {ts}")
        elif not (isinstance(ts, tuple) and ts and all(is_number(t) for t in ts)):
            out.append(f"curve.ts: must be a count or a list of numbers in [0, 1] (got {ts!r})")
        else:
            outside = [t for t in ts if not 0.0 <= float(t) <= 1.0]
            if outside:
                out.append(f"curve.ts: {', '.join(map(fmt_value, outside))} outside [0, 1]")
        return out

    def specs(self, config: CurveConfig, sweep: Sweep) -> list[StudySpec]:
        ts = sweep.alpha_grid() if config.ts is None else alpha_grid(config.ts)  # type: ignore[arg-type]
        settings = (
            ("kind", config.kind),
            ("epochs", int(config.epochs)),
            ("lr", float(config.lr)),
            ("batch_size", int(config.batch_size)),
            ("ts", tuple(ts)),
            ("residual", sweep.residual),
        )
        out: dict[StudySpec, None] = {}
        for arch in sweep.archs:
            for width, depth, norm in arch.combos():
                for seed_a, seed_b in sweep.seed_pairs():
                    a = sweep._endpoint(arch.model, width, depth, norm, seed_a)
                    b = sweep._endpoint(arch.model, width, depth, norm, seed_b)
                    out[StudySpec(sweep.name, self.name, (a, b), settings)] = None
        return list(out)

    def run(self, spec: StudySpec, inputs: StudyInputs) -> dict[str, pd.DataFrame]:
        import time

        from ...curves import curve_barriers, curve_profile
        from ...perm import apply_permutation
        from ...pipeline import merge_trial

        started = time.perf_counter()
        a, b = spec.endpoints
        net_a, _ = inputs.store.load(a.key())
        net_b, _ = inputs.store.load(b.key())
        ts, residual = list(spec.setting("ts")), spec.setting("residual")
        lines = merge_trial(
            net_a,
            net_b,
            inputs.train_plan,
            inputs.test_plan,
            method="activation",
            variants=LINE_VARIANTS,
            alphas=ts,
            residual=residual,
            batch_size=spec.batch_size,
            seed=a.seed,
            workers=inputs.workers,
        )
        aligned_b = apply_permutation(net_b, lines.perm)
        linear = lines.barriers.set_index("variant").loc["aligned"]
        profiles, rows = [lines.curves], []
        for variant, matching in CURVE_ROWS:
            other = aligned_b if matching == "activation" else net_b
            if matching == "activation":
                matching = f"activation-{residual}"
            curve, fit_seconds = fitted_curve(
                spec, inputs.store, net_a, other, inputs.train, matching, inputs.fit_curve
            )
            profile = curve_profile(
                curve, inputs.train_plan, inputs.test_plan, ts, workers=inputs.workers
            )
            profiles.append(profile.rename(columns={"t": "alpha"}).assign(variant=variant))
            bar = curve_barriers(profile, "test")
            rows.append(
                {
                    "variant": variant,
                    **bar,
                    "reduction_vs_aligned": _reduction(
                        float(linear["barrier_acc_mid"]), bar["barrier_acc_mid"]
                    ),
                    "reduction_loss_vs_aligned": _reduction(
                        float(linear["barrier_loss_mid"]), bar["barrier_loss_mid"]
                    ),
                    "curve_seconds": fit_seconds,
                }
            )
        ids, key = spec.id_columns(), spec.key()
        common = {"trial_key": key, "method": "activation", **ids}
        curves = pd.concat(profiles, ignore_index=True).assign(**common)
        trials = pd.DataFrame(rows).assign(
            **common,
            endpoint_a=a.key(),
            endpoint_b=b.key(),
            seed_a=a.seed,
            seed_b=b.seed,
            residual=residual,
            curve_kind=spec.setting("kind"),
            curve_epochs=spec.setting("epochs"),
            seconds=time.perf_counter() - started,
        )
        return {"curves": curves, "trials": trials}

    def plot(self, frames: Mapping[str, pd.DataFrame], path: str, title: str) -> str:
        from ..plots import plot_trial_curves

        return plot_trial_curves(frames["curves"], path, title=title, xlabel="t (alpha)")

    def mlflow(
        self, frames: Mapping[str, pd.DataFrame]
    ) -> tuple[dict[str, float], list[tuple[str, float, int]]]:
        from ..tracking import curve_metrics, trial_metrics

        metrics = trial_metrics(frames["trials"])
        for row in frames["trials"].itertuples(index=False):
            metrics[f"curve_seconds.{row.variant}"] = float(row.curve_seconds)
        return metrics, curve_metrics(frames["curves"])


__all__ = ["CURVE_ROWS", "CurveConfig", "CurveStudy", "fitted_curve"]
