"""Filter collapse (Zhou et al. 2020; issue 11): BN vs psBN at a normal and a high learning
rate, and with Adam; collapsed and dead units per layer, and what they do to merging.

Each training setting is one sweep (a sweep has one optimizer and learning rate):
``build_sweep(setting=...)`` with a setting of :data:`SETTINGS`. Every endpoint writes its
``filters`` rows (channels, collapsed = |gamma| < 0.01, dead = never positive before the ReLU
on the train data, median |gamma| per layer) and the pairs run activation matching with REPAIR,
so the ``trials`` table holds the barriers of the same nets. ``python sweeps/filter_collapse.py``
runs every setting and prints the per-layer counts, test accuracy and barriers side by side;
``repair-dist sweep sweeps/filter_collapse.py`` runs the first setting only.
"""

from __future__ import annotations

import argparse
import sys

from repair_dist.sweep.config import ArchGrid, Sweep

#: setting -> (optimizer, lr): SGD at the recipe's lr, at 10x and at 33x, and Adam at its
#: default. On VGG11 x0.25 / digits BN filters collapsed only at lr 1.0 (7 and 9 of 688
#: channels after 30 epochs, ``benchmarks/effect_prune.py --part collapse``), none at 0.3.
SETTINGS: dict[str, tuple[str, float]] = {
    "sgd-lr0.03": ("sgd", 0.03),
    "sgd-lr0.3": ("sgd", 0.3),
    "sgd-lr1.0": ("sgd", 1.0),
    "adam-lr0.001": ("adam", 1e-3),
}


def build_sweep(smoke: bool = False, setting: str = "sgd-lr0.03") -> Sweep:
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; choose one of {', '.join(SETTINGS)}")
    optimizer, lr = SETTINGS[setting]
    if smoke:
        return Sweep(
            name=f"filter-collapse-smoke-{setting}",
            dataset="digits",
            archs=(ArchGrid("vgg", widths=(0.125,), depths=(11,), norms=("bn", "psbn")),),
            seeds=(0, 1),
            epochs=1,
            optimizer=optimizer,
            lr=lr,
            methods=("activation",),
            variants=("reset", "full"),
            alphas=3,
        )
    return Sweep(
        name=f"filter-collapse-{setting}",
        dataset="digits",
        archs=(ArchGrid("vgg", widths=(0.25,), depths=(11,), norms=("bn", "psbn")),),
        seeds=(0, 1, 2, 3),
        epochs=25,
        optimizer=optimizer,
        lr=lr,
        methods=("activation",),
        variants=("reset", "full"),
        alphas=11,
    )


def report(root: str, sweeps: list[Sweep]) -> str:
    """Per setting and norm: collapsed/dead per layer (mean over seeds), test accuracy and
    the midpoint accuracy barriers per variant, from the Parquet tables."""
    import pandas as pd

    from repair_dist.sweep import results

    parts = []
    for sweep in sweeps:
        filters = results.read_table(root, "filters", sweep.name)
        endpoints = results.read_table(root, "endpoints", sweep.name)
        trials = results.read_table(root, "trials", sweep.name)
        layers = (
            filters.groupby(["norm", "layer"], sort=False)[["channels", "collapsed", "dead"]]
            .mean()
            .reset_index()
        )
        acc = endpoints.groupby("norm")["test_acc"].mean().rename("test_acc")
        barrier = trials.pivot_table(
            index="norm", columns="variant", values="barrier_acc_mid", aggfunc="mean"
        ).add_prefix("barrier_acc_mid.")
        totals = (
            filters.groupby("norm")[["collapsed", "dead"]].sum()
            / filters.groupby("norm")["endpoint_key"].nunique().to_numpy()[:, None]
        )
        per_norm = pd.concat([acc, totals.add_suffix("_per_net"), barrier], axis=1).reset_index()
        parts.append(f"== {sweep.name} ==\n{results.format_table(per_norm)}")
        parts.append(results.format_table(layers))
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    from repair_dist.sweep.runner import run_sweep

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--root", default="results")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args(argv)
    sweeps = [build_sweep(args.smoke, s) for s in args.settings]
    for sweep in sweeps:
        run_sweep(sweep, root=args.root)
    print(report(args.root, sweeps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
