"""Plots of sweep results, drawn from Parquet-shaped DataFrames only (DESIGN.md §2).

Reading tables rather than live objects means every figure can be redrawn later from
``results/`` alone (``repair-dist plot SWEEP``), on any machine, with no net in memory.
Figures are made with matplotlib's object API on the Agg canvas (no pyplot state, no GUI
backend), so trials can plot from parallel processes and threads; each PNG is written under a
temporary name and renamed, like the Parquet files beside it.
"""

from __future__ import annotations

import itertools
import os
import re
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..variants import TRIAL_VARIANTS, VARIANTS, variant_order
from .results import summarize

#: Barrier metrics drawn by :func:`plot_sweep`, one panel each.
SWEEP_METRICS = ("barrier_loss_mid", "barrier_acc_mid")
#: Architecture dimensions a sweep may vary; each that varies gets its own figure.
DIMENSIONS = ("width", "depth", "norm")
_FIXED_COLORS = {"naive": "0.55", "aligned": "black"}
_LABELS = {
    "barrier_loss_mid": "loss barrier at alpha=0.5",
    "barrier_acc_mid": "accuracy barrier at alpha=0.5",
}
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
_LINESTYLES = ("-", "--", ":", "-.")


def _variants(values: Sequence[str]) -> list[str]:
    return variant_order(str(v) for v in values)


def _colors(variants: Sequence[str]) -> dict[str, object]:
    """Stable colours: naive grey, aligned black, REPAIR variants tab10 in a fixed order."""
    cycle = itertools.cycle(f"C{i}" for i in range(10))
    out: dict[str, object] = {}
    for v in [*VARIANTS, *sorted(set(variants) - set(TRIAL_VARIANTS))]:
        out[v] = next(cycle)
    out.update(_FIXED_COLORS)
    return out


def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} needs column(s) {', '.join(missing)} (got {list(df.columns)})")


def _save(fig: Figure, path: str | os.PathLike) -> str:
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}.png"
    try:
        fig.savefig(tmp, dpi=100)  # constrained layout already fits; "tight" re-renders
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return str(final)


def _figure(ncols: int) -> tuple[Figure, list]:
    fig = Figure(figsize=(5.2 * ncols, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]


def _legend(fig: Figure, ax, title: str) -> None:
    """One legend to the right of all panels, where it hides no data."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, title=title, loc="outside right upper", fontsize="small")


def _fmt(x: object) -> str:
    if isinstance(x, (float, np.floating)) and float(x).is_integer():
        return str(int(x))
    return str(x)


def _slug(*parts: object) -> str:
    text = "_".join(_fmt(p) for p in parts if p is not None and str(p) != "")
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


# --------------------------------------------------------------------------------------------
# one trial
# --------------------------------------------------------------------------------------------


def plot_trial_curves(
    curves_df: pd.DataFrame,
    path: str | os.PathLike,
    title: str = "",
    xlabel: str = "alpha (0 = A, 1 = aligned B)",
) -> str:
    """Loss and accuracy vs alpha, one colour per variant, test solid and train dashed.

    ``curves_df`` holds one trial's rows of the ``curves`` table (variant, alpha, split, loss,
    acc). Returns the PNG's path.
    """
    _require(curves_df, ("variant", "alpha", "split", "loss", "acc"), "plot_trial_curves")
    if "trial_key" in curves_df.columns and curves_df["trial_key"].nunique() > 1:
        raise ValueError(
            "plot_trial_curves draws one trial; got trial_keys "
            f"{sorted(curves_df['trial_key'].unique())[:5]}: filter the frame first"
        )
    if curves_df.empty:
        raise ValueError("plot_trial_curves: no curve rows to draw")
    fig, axes = _figure(2)
    variants = _variants(curves_df["variant"])
    colors = _colors(variants)
    styles = {"test": "-", "train": "--"}
    for ax, metric in zip(axes, ("loss", "acc"), strict=True):
        for variant in variants:
            for split in ("test", "train"):
                rows = curves_df[(curves_df["variant"] == variant) & (curves_df["split"] == split)]
                if rows.empty:
                    continue
                rows = rows.sort_values("alpha")
                ax.plot(
                    rows["alpha"].to_numpy(float),
                    rows[metric].to_numpy(float),
                    linestyle=styles.get(split, ":"),
                    color=colors[variant],
                    marker=".",
                    label=variant if split == "test" else None,
                )
        ax.set_xlabel(xlabel)
        ax.set_ylabel("loss" if metric == "loss" else "accuracy")
        ax.grid(alpha=0.3)
    _legend(fig, axes[0], "variant (test solid, train dashed)")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_pruning(pruning_df: pd.DataFrame, path: str | os.PathLike, title: str = "") -> str:
    """Test accuracy vs sparsity, one line per variant (dense, pruned, repaired-*), one panel
    per pruning kind; ``pruning_df`` holds one unit's rows of the ``pruning`` table."""
    need = ("kind", "sparsity", "variant", "test_acc")
    _require(pruning_df, need, "plot_pruning")
    if pruning_df.empty:
        raise ValueError("plot_pruning: no pruning rows to draw")
    kinds = list(dict.fromkeys(pruning_df["kind"]))
    fig, axes = _figure(len(kinds))
    cycle = itertools.cycle(f"C{i}" for i in range(10))
    variants = sorted(set(pruning_df["variant"]), key=lambda v: (v != "dense", v != "pruned", v))
    colors = {
        v: ("black" if v == "dense" else "0.55" if v == "pruned" else next(cycle)) for v in variants
    }
    for ax, kind in zip(axes, kinds, strict=True):
        part = pruning_df[pruning_df["kind"] == kind]
        for variant in variants:
            rows = part[part["variant"] == variant].sort_values("sparsity")
            if rows.empty:
                continue
            ax.plot(
                rows["sparsity"].to_numpy(float),
                rows["test_acc"].to_numpy(float),
                color=colors[variant],
                marker="o",
                linestyle="--" if variant == "dense" else "-",
                label=variant,
            )
        ax.set_title(kind)
        ax.set_xlabel("sparsity (of the prunable weights)")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    _legend(fig, axes[0], "variant")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# a whole sweep
# --------------------------------------------------------------------------------------------


def _varying(df: pd.DataFrame) -> list[str]:
    return [d for d in DIMENSIONS if d in df.columns and df[d].dropna().nunique() > 1]


def _draw_vs(ax, stats: pd.DataFrame, x: str, others: list[str], metric: str, colors) -> None:
    categorical = not pd.api.types.is_numeric_dtype(stats[x])
    ticks = sorted(stats[x].dropna().unique(), key=str) if categorical else None
    combos = stats[others].drop_duplicates().itertuples(index=False) if others else [()]
    for j, combo in enumerate(combos):
        sel = stats
        for col, value in zip(others, combo, strict=True):
            sel = sel[sel[col].isna()] if pd.isna(value) else sel[sel[col] == value]
        suffix = ", ".join(f"{c}={_fmt(v)}" for c, v in zip(others, combo, strict=True))
        for variant in _variants(sel["variant"]):
            rows = sel[sel["variant"] == variant].dropna(subset=[x]).sort_values(x)
            if rows.empty:
                continue
            xs = [ticks.index(v) for v in rows[x]] if categorical else rows[x].to_numpy(float)
            label = f"{variant} ({suffix})" if suffix else variant
            ax.errorbar(
                xs,
                rows[f"{metric}_mean"].to_numpy(float),
                yerr=np.nan_to_num(rows[f"{metric}_std"].to_numpy(float)),
                color=colors[variant],
                marker=_MARKERS[j % len(_MARKERS)],
                linestyle=_LINESTYLES[j % len(_LINESTYLES)],
                capsize=3,
                label=label,
            )
    if categorical:
        ax.set_xticks(range(len(ticks)), [str(t) for t in ticks])
    else:
        values = stats[x].dropna().to_numpy(float)
        if len(values) and values.min() > 0 and values.max() / values.min() >= 4:
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted(set(values)), [_fmt(v) for v in sorted(set(values))])
    ax.axhline(0.0, color="0.8", linewidth=0.8)
    ax.set_xlabel(x)
    ax.set_ylabel(_LABELS.get(metric, metric))
    ax.grid(alpha=0.3)


def _draw_bars(ax, stats: pd.DataFrame, metric: str, colors) -> None:
    methods = list(dict.fromkeys(stats["method"]))
    variants = _variants(stats["variant"])
    width = 0.8 / max(1, len(variants))
    for i, variant in enumerate(variants):
        rows = stats[stats["variant"] == variant].set_index("method").reindex(methods)
        xs = np.arange(len(methods)) + (i - (len(variants) - 1) / 2) * width
        ax.bar(
            xs,
            rows[f"{metric}_mean"].to_numpy(float),
            width,
            color=colors[variant],
            yerr=np.nan_to_num(rows[f"{metric}_std"].to_numpy(float)),
            capsize=2,
            label=variant,
        )
    ax.set_xticks(range(len(methods)), methods)
    ax.axhline(0.0, color="0.8", linewidth=0.8)
    ax.set_ylabel(_LABELS.get(metric, metric))
    ax.grid(alpha=0.3, axis="y")


def plot_sweep(trials_df: pd.DataFrame, out_dir: str | os.PathLike) -> list[str]:
    """Barriers vs each varying architecture dimension (width, depth, norm), per variant.

    Points are the mean over seed pairs with ± one sample std as error bars. One PNG per
    (dimension, model, dataset, method), panels for the loss and the accuracy barrier; when
    other dimensions vary too, each of their combinations is its own line. A sweep that varies
    none of them gets one bar chart (variant x method). Returns the paths written.
    """
    _require(trials_df, ("method", "variant", *SWEEP_METRICS), "plot_sweep")
    if trials_df.empty:
        return []
    group = [c for c in ("model", "dataset", *DIMENSIONS) if c in trials_df.columns]
    stats = summarize(trials_df, group_by=group, metrics=SWEEP_METRICS)
    colors = _colors(list(stats["variant"].unique()))
    out = Path(out_dir)
    written: list[str] = []
    facets = [c for c in ("model", "dataset") if c in stats.columns]
    many = [c for c in facets if stats[c].nunique() > 1]
    facet_groups = stats.groupby(facets, dropna=False, sort=True) if facets else [((), stats)]
    for facet, part in facet_groups:
        facet = facet if isinstance(facet, tuple) else (facet,)
        named = [v for c, v in zip(facets, facet, strict=True) if c in many]
        subject = " on ".join(_fmt(v) for v in facet if pd.notna(v))
        n_pairs = int(part["n"].max())
        spread = f"mean ± std over {n_pairs} seed pairs" if n_pairs > 1 else "one seed pair"
        varying = _varying(part)
        if not varying:
            fig, axes = _figure(len(SWEEP_METRICS))
            for ax, metric in zip(axes, SWEEP_METRICS, strict=True):
                _draw_bars(ax, part, metric, colors)
            _legend(fig, axes[0], "variant")
            fixed = ", ".join(
                f"{d}={_fmt(part[d].iloc[0])}"
                for d in DIMENSIONS
                if d in part and pd.notna(part[d].iloc[0])
            )
            fig.suptitle(f"{subject} ({fixed}): barriers by variant, {spread}")
            written.append(_save(fig, out / (_slug("barriers", *named) + ".png")))
            continue
        for method, rows in part.groupby("method", sort=True):
            for x in varying:
                fig, axes = _figure(len(SWEEP_METRICS))
                others = [d for d in varying if d != x]
                for ax, metric in zip(axes, SWEEP_METRICS, strict=True):
                    _draw_vs(ax, rows, x, others, metric, colors)
                _legend(fig, axes[0], "variant")
                fig.suptitle(f"{subject}: barrier vs {x}, {method} matching, {spread}")
                name = _slug("barrier_vs", x, *named, method) + ".png"
                written.append(_save(fig, out / name))
    return written


__all__ = ["DIMENSIONS", "SWEEP_METRICS", "plot_pruning", "plot_sweep", "plot_trial_curves"]
