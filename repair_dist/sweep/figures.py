"""A sweep's figures, drawn from its tables: one summary per sweep, per-unit figures on demand.

Why not a figure per trial while the sweep runs: rendering a PNG costs the driver about 0.2 s
of CPU, more than a tiny trial's own compute, so at hundreds of trials the driver fell behind
Tune and slowed the trials it shared cores with. The runner now draws only the sweep-level
summary (:func:`sweep_figures`) when a sweep ends; ``repair-dist plot SWEEP --units`` draws any
trial's or study unit's figure later, from the same rows (:func:`unit_figures`).
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

from ..location import Location
from . import results
from .plots import plot_sweep, plot_trial_curves
from .studies import STUDIES


def _out(loc: Location, out_dir: str | os.PathLike | None, *default: str) -> Path:
    if out_dir is not None:
        return Path(out_dir)
    if loc.local_path is None:
        raise ValueError(f"results root {loc.uri} is not on this machine: pass --out DIR")
    return loc.local_path.joinpath(*default)


def sweep_figures(
    root: str | os.PathLike | Location, sweep: str, out_dir: str | os.PathLike | None = None
) -> list[str]:
    """Barrier figures of the whole sweep (:func:`~.plots.plot_sweep`) into ``out_dir``
    (default ``<root>/figures/sweep=<sweep>``); [] when the sweep has no trials yet."""
    loc = Location.of(root)
    trials = results.read_table(loc, "trials", sweep)
    if trials.empty:
        return []
    return plot_sweep(trials, _out(loc, out_dir, "figures", f"sweep={sweep}"))


def unit_figures(
    root: str | os.PathLike | Location,
    sweep: str,
    out_dir: str | os.PathLike | None = None,
    keys: Collection[str] | None = None,
) -> list[str]:
    """One figure per merge trial (loss/accuracy vs alpha) and per study unit (its study's
    figure), or only those whose key is in ``keys``; into ``out_dir`` (default
    ``<root>/plots/sweep=<sweep>``), named ``<key>.png``. Returns the paths written."""
    loc = Location.of(root)
    out = _out(loc, out_dir, "plots", f"sweep={sweep}")
    wanted = None if keys is None else set(keys)
    written: list[str] = []
    trial_meta = results.unit_metadata(loc, "trials", sweep)
    curves = results.read_table(loc, "curves", sweep)
    for key, rows in curves.groupby("trial_key", sort=True):
        meta = trial_meta.get(str(key), {})
        if results.STUDY_KEY in meta or (wanted is not None and key not in wanted):
            continue  # a study unit's curves: its study draws them below
        name = meta.get(results.TRIAL_RUN_NAME_KEY, str(key))
        written.append(plot_trial_curves(rows, out / f"{key}.png", title=f"{sweep}: {name}"))
    for st in STUDIES.values():
        for key, meta in sorted(results.unit_metadata(loc, st.tables[-1], sweep).items()):
            if meta.get(results.STUDY_KEY) != st.name or (wanted is not None and key not in wanted):
                continue
            frames = {t: results.unit_rows(loc, t, sweep, key) for t in st.tables}
            name = meta.get(results.TRIAL_RUN_NAME_KEY, key)
            written.append(st.plot(frames, str(out / f"{key}.png"), f"{sweep}: {name}"))
    if wanted is not None:
        missing = wanted - {Path(p).stem for p in written}
        if missing:
            raise ValueError(
                f"sweep {sweep!r} has no finished trial or unit {', '.join(sorted(missing))} "
                f"under {loc.uri}"
            )
    return written


__all__ = ["sweep_figures", "unit_figures"]
