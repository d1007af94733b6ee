"""Effect: learned curves between aligned vs naive endpoints (Tatro et al. 2020), on real data.

For every setting (deep plain MLP on digits, the same on Fashion-MNIST when its files are on
this machine, a VGG11 width-1/4 BN net on digits) and every endpoint pair:

1. train A and B from different seeds; align B to A by activation matching;
2. the straight lines: naive (B as trained), aligned, and aligned + REPAIR (``full`` for plain
   nets, the BN ``reset`` for BN nets), via :func:`repair_dist.pipeline.merge_trial`;
3. for each number of curve-training epochs: a curve (quadratic Bezier; ``--kind``) fitted to (A, aligned B)
   and one to (A, naive B), same seed, profiled on an 11-point t grid with BN statistics
   re-estimated at every t; barriers on the test split (:func:`repair_dist.curve_barriers`).

Prints (a) the barriers of lines and curves after the largest epoch count, (b) the curve
barrier against curve-training epochs, aligned vs naive, means over pairs. Regenerate with

    PYTHONPATH=$PWD python benchmarks/effect_curves.py [--quick] [--json PATH]

Runs on one torch thread; the default run takes a few minutes on a laptop-class CPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

import torch

import repair_dist as rd
from repair_dist.pipeline import merge_trial

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import fmt, machine_info, print_machine, print_table, write_json  # noqa: E402

FASHION_ROOT = "/usr/share/datasets/fashion-mnist"

SETTINGS: dict[str, dict[str, Any]] = {
    "mlp8x64-digits": dict(
        dataset="digits",
        model="mlp",
        cfg=dict(depth=8, width=64, norm="none", in_shape=(1, 8, 8)),
        endpoint_epochs=30,
        repair="full",
    ),
    "mlp6x128-fashion": dict(
        dataset="fashion-mnist",
        opts=dict(limit_train=10000, limit_test=2000),
        model="mlp",
        cfg=dict(depth=6, width=128, norm="none", in_shape=(1, 28, 28)),
        endpoint_epochs=10,
        repair="full",
    ),
    "vgg11w0.25bn-digits": dict(
        dataset="digits",
        model="vgg",
        cfg=dict(depth=11, width=0.25, norm="bn", in_shape=(1, 8, 8)),
        endpoint_epochs=12,
        repair="reset",
    ),
}


def endpoint(setting: dict[str, Any], seed: int, train) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = rd.build_model(setting["model"], **setting["cfg"])
    return rd.train_model(net, train, epochs=setting["endpoint_epochs"], seed=seed)


def line_rows(name: str, pair: int, a, b, train, test, repair: str, ts: int) -> list[dict]:
    table = merge_trial(a, b, train, test, variants=[repair], alphas=ts).barriers
    paths = {"naive": "line naive", "aligned": "line aligned", repair: f"line aligned+{repair}"}
    if repair == "reset":  # BN: curves re-estimate statistics at every t, so the fair naive
        # line does too (merge_trial's naive line keeps the interpolated running statistics)
        naive = rd.interpolation_curve(a, b, train, test, alphas=ts, variants=["reset"])
        naive.attrs.clear()
        table = rd.barriers(naive.assign(variant="naive+reset")).merge(table, how="outer")
        paths["naive+reset"] = "line naive+reset"
    rows = []
    for _, r in table.iterrows():
        rows.append(
            {
                "setting": name,
                "pair": pair,
                "path": paths[r["variant"]],
                "epochs": 0,
                "barrier_loss_max": float(r["barrier_loss_max"]),
                "barrier_acc_max": float(r["barrier_acc_max"]),
                "barrier_loss_mid": float(r["barrier_loss_mid"]),
                "acc_ends": (float(r["acc_a"]) + float(r["acc_b"])) / 2,
                "seconds": 0.0,
            }
        )
    return rows


def curve_rows(
    name: str, pair: int, a, b, c, train, test, epochs: list[int], ts: int, kind: str
) -> list[dict]:
    rows = []
    for e in epochs:
        for which, other in (("curve aligned", c), ("curve naive", b)):
            curve = rd.fit_curve(a, other, train, kind=kind, epochs=e, seed=pair)
            got = rd.curve_barriers(rd.curve_profile(curve, train, test, ts=ts))
            rows.append(
                {
                    "setting": name,
                    "pair": pair,
                    "path": which,
                    "epochs": e,
                    "barrier_loss_max": got["barrier_loss_max"],
                    "barrier_acc_max": got["barrier_acc_max"],
                    "barrier_loss_mid": got["barrier_loss_mid"],
                    "acc_ends": (got["acc_a"] + got["acc_b"]) / 2,
                    "seconds": curve.seconds,
                }
            )
    return rows


def mean_of(rows: list[dict], key: str, **match: Any) -> float:
    vals = [r[key] for r in rows if all(r[k] == v for k, v in match.items())]
    return statistics.fmean(vals) if vals else float("nan")


def report(rows: list[dict], epochs: list[int]) -> None:
    top = max(epochs)
    for name in dict.fromkeys(r["setting"] for r in rows):
        seen = {r["path"] for r in rows if r["setting"] == name}
        paths = sorted(seen, key=lambda p: (p.startswith("curve"), "aligned" in p, "+" in p))
        table = []
        for path in paths:
            e = 0 if path.startswith("line") else top
            sel = dict(setting=name, path=path, epochs=e)
            table.append(
                [
                    path,
                    e or "",
                    fmt(mean_of(rows, "barrier_loss_max", **sel)),
                    fmt(mean_of(rows, "barrier_loss_mid", **sel)),
                    fmt(mean_of(rows, "barrier_acc_max", **sel)),
                    fmt(mean_of(rows, "seconds", **sel)),
                ]
            )
        print_table(
            f"{name}: test barriers, mean over pairs (endpoint acc "
            f"{fmt(mean_of(rows, 'acc_ends', setting=name, path='line naive'))})",
            table,
            ["path", "curve epochs", "loss max", "loss mid", "acc max", "fit s"],
        )
        by_epoch = []
        for e in epochs:
            al = mean_of(rows, "barrier_loss_max", setting=name, path="curve aligned", epochs=e)
            nv = mean_of(rows, "barrier_loss_max", setting=name, path="curve naive", epochs=e)
            al_acc = mean_of(rows, "barrier_acc_max", setting=name, path="curve aligned", epochs=e)
            nv_acc = mean_of(rows, "barrier_acc_max", setting=name, path="curve naive", epochs=e)
            by_epoch.append([e, fmt(al), fmt(nv), fmt(al_acc), fmt(nv_acc)])
        print_table(
            f"{name}: curve max test barrier vs curve-training epochs",
            by_epoch,
            ["epochs", "loss aligned", "loss naive", "acc aligned", "acc naive"],
        )
        al = mean_of(rows, "barrier_loss_max", setting=name, path="curve aligned", epochs=top)
        nv = mean_of(rows, "barrier_loss_max", setting=name, path="curve naive", epochs=top)
        ratios = []
        for line_path in ("line naive", "line naive+reset"):
            line = mean_of(rows, "barrier_loss_max", setting=name, path=line_path, epochs=0)
            if line == line:
                ratios.append(
                    f"vs {line_path}: naive curve {fmt(nv / line)}x, aligned {fmt(al / line)}x"
                )
        print(
            f"{name}: after {top} epochs aligned curve < naive curve: {al < nv}; "
            + "; ".join(ratios)
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2, help="endpoint pairs per setting")
    parser.add_argument("--epochs", default="1,2,5,10,20", help="curve-training epoch counts")
    parser.add_argument("--kind", default="bezier", choices=rd.CURVE_KINDS)
    parser.add_argument("--ts", type=int, default=11, help="points on the t / alpha grid")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--quick", action="store_true", help="1 pair, epochs 1,5")
    parser.add_argument("--json", default=None, help="write every row to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pairs, epochs = args.pairs, sorted(int(e) for e in args.epochs.split(","))
    if args.quick:
        pairs, epochs = 1, [1, 5]
    info = machine_info()
    print_machine(info)

    rows: list[dict] = []
    for name in args.settings.split(","):
        setting = SETTINGS[name]
        if setting["dataset"] == "fashion-mnist" and not os.path.isdir(FASHION_ROOT):
            print(f"\n{name}: skipped, no Fashion-MNIST at {FASHION_ROOT}")
            continue
        start = time.perf_counter()
        train, test = rd.load_dataset(setting["dataset"], **setting.get("opts", {}))
        for pair in range(pairs):
            a = endpoint(setting, 2 * pair, train)
            b = endpoint(setting, 2 * pair + 1, train)
            c = rd.apply_permutation(b, rd.activation_matching(a, b, train))
            rows += line_rows(name, pair, a, b, train, test, setting["repair"], args.ts)
            rows += curve_rows(name, pair, a, b, c, train, test, epochs, args.ts, args.kind)
        print(f"{name}: {time.perf_counter() - start:.0f}s", flush=True)
    report(rows, epochs)
    meta = {"machine": info, "kind": args.kind, "epochs": epochs, "pairs": pairs}
    write_json(args.json, {**meta, "rows": rows})


if __name__ == "__main__":
    main()
