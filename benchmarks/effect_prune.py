"""Effect measurements for issue 11: post-pruning repair, and filter collapse BN vs psBN.

Part 1 (Qu & Horvath 2024): train small nets, prune them with global L1 magnitude pruning at
80/90/95% and report test accuracy of the dense, pruned and repaired (full / rescale /
reshift) nets: does REPAIR with one endpoint recover what pruning lost?

Part 2 (Zhou et al. 2020): train BN and psBN VGGs at a normal and a high SGD learning rate
and with Adam, and report collapsed (|gamma| < 1e-2) and dead (never positive before the
ReLU on the train data) filters per layer, plus test accuracy.

    PYTHONPATH=$PWD python benchmarks/effect_prune.py [--quick] [--out DIR]

Prints the tables; with ``--out DIR`` also writes ``pruning.csv``, ``filters.csv`` and
``filters_summary.csv`` there (the rows of the ``pruning`` and ``filters`` tables). CPU, one thread, digits (and Fashion-MNIST when it is on this machine).
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import pandas as pd
import torch

import repair_dist as rd
from repair_dist.prune import pruning_rows

SPARSITIES = (0.8, 0.9, 0.95)


def train(name: str, cfg: dict, data, *, epochs: int, seed: int = 0, **opt) -> torch.nn.Module:
    torch.manual_seed(seed)  # the init, so every net is reproducible from its seed alone
    net = rd.build_model(name, **cfg)
    revived: list[float] = []
    rd.train_model(
        net,
        data,
        epochs=epochs,
        seed=seed,
        callback=lambda _e, _n, st: revived.append(st["revived"]),
        **opt,
    )
    net.revived_per_epoch = revived  # how many psBN channels were reset at each epoch end
    return net


def pruning_part(quick: bool) -> pd.DataFrame:
    digits = rd.load_dataset("digits")
    nets = [
        ("mlp-8x64 digits", "mlp", {"depth": 8, "width": 64, "in_shape": (1, 8, 8)}, digits, 30),
        ("mlp-8x256 digits", "mlp", {"depth": 8, "width": 256, "in_shape": (1, 8, 8)}, digits, 30),
        (
            "vgg11-w0.25-bn digits",
            "vgg",
            {"depth": 11, "width": 0.25, "norm": "bn", "in_shape": (1, 8, 8)},
            digits,
            20,
        ),
    ]
    fashion = Path("/usr/share/datasets/fashion-mnist")
    if fashion.exists():
        fm = rd.load_dataset("fashion-mnist", limit_train=10000, limit_test=2000)
        nets.append(
            (
                "mlp-8x128 fashion",
                "mlp",
                {"depth": 8, "width": 128, "in_shape": (1, 28, 28)},
                fm,
                10,
            )
        )
    else:
        print(f"(no {fashion}: Fashion-MNIST skipped)")
    frames = []
    for label, name, cfg, (tr, te), epochs in nets:
        t0 = time.perf_counter()
        net = train(name, cfg, tr, epochs=3 if quick else epochs)
        rows = pruning_rows(net, tr, te, sparsities=SPARSITIES, endpoint_key=label)
        print(f"{label}: trained + pruned in {time.perf_counter() - t0:.0f}s")
        frames.append(rows)
    return pd.concat(frames, ignore_index=True)


def collapse_part(quick: bool, seeds: list[int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    tr, te = rd.load_dataset("digits")
    recipes = [
        ("sgd lr 0.03", {"optimizer": "sgd", "lr": 0.03}),
        ("sgd lr 0.3", {"optimizer": "sgd", "lr": 0.3}),
        ("sgd lr 1.0", {"optimizer": "sgd", "lr": 1.0}),
        ("adam lr 1e-3", {"optimizer": "adam", "lr": 1e-3}),
        ("adam lr 1e-2", {"optimizer": "adam", "lr": 1e-2}),
    ]
    frames, summary = [], []
    for norm, (label, opt), seed in itertools.product(("bn", "psbn"), recipes, seeds):
        cfg = {"depth": 11, "width": 0.25, "norm": norm, "in_shape": (1, 8, 8)}
        net = train("vgg", cfg, tr, epochs=3 if quick else 30, seed=seed, **opt)
        key = f"{norm} {label} seed {seed}"
        rows = rd.filter_collapse(net, tr, endpoint_key=key)
        frames.append(rows)
        summary.append(
            {
                "net": key,
                "test_acc": rd.evaluate(net, te)["acc"],
                "channels": int(rows["channels"].sum()),
                "collapsed": int(rows["collapsed"].sum()),
                "dead": int(rows["dead"].sum()),
                "psbn_resets_total": int(sum(net.revived_per_epoch)),
                "gamma_abs_median": float(rows["gamma_abs_median"].median()),
            }
        )
        print(f"{key}: {summary[-1]}")
    return pd.concat(frames, ignore_index=True), pd.DataFrame(summary)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 epochs per net (a smoke run)")
    ap.add_argument("--out", default=None, help="directory for the CSVs (default: print only)")
    ap.add_argument("--part", choices=("all", "pruning", "collapse"), default="all")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="collapse part")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    pd.set_option("display.width", 200)
    if args.part in ("all", "pruning"):
        rows = pruning_part(args.quick)
        if out is not None:
            rows.to_csv(out / "pruning.csv", index=False)
        table = rows.pivot_table(
            index=["endpoint_key", "sparsity"], columns="variant", values="test_acc"
        )[["dense", "pruned", "repaired-full", "repaired-rescale", "repaired-reshift"]]
        print("\nTest accuracy (global_l1):\n" + (100 * table).round(1).to_string())
    if args.part in ("all", "collapse"):
        filters, summary = collapse_part(args.quick, args.seeds)
        if out is not None:
            filters.to_csv(out / "filters.csv", index=False)
            summary.to_csv(out / "filters_summary.csv", index=False)
        print("\nFilter collapse (VGG11 w0.25, digits):\n" + summary.to_string(index=False))
        for col in ("collapsed", "dead"):
            per_layer = filters.pivot_table(
                index="endpoint_key", columns="layer", values=col, sort=False
            )
            print(f"\n{col} per layer:\n" + per_layer.astype(int).to_string())


if __name__ == "__main__":
    main()
