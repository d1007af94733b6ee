"""Effect: STE vs weight vs activation matching on pairs, and the merged net of N (issue 12).

(a) Pairs of deep plain MLPs on digits: midpoint test-loss barrier (loss(0.5) - mean endpoint
    loss) and midpoint accuracy barrier (mean endpoint acc - acc(0.5)) after STE, weight and
    activation matching (and no matching, "naive"), each without renormalisation ("aligned")
    and with REPAIR ``full``. Git Re-Basin reports the STE lowest; here it is checked per pair.
(b) The merged net of N (N = 2..max_n) against N: MergeMany and activation matching to net 0,
    each plain and with REPAIR ``full`` (a BN reset for the BN conv net), plus the unaligned
    average ("naive" + REPAIR). Barriers against the mean endpoint and against the
    output-averaged ensemble of the same N nets.
(c) The same table for spawned children: one MLP trained ``--spawn-epochs`` (default 2), then N
    children trained from it for ``--epochs`` with their own data orders (Frankle et al.'s
    spawning), each then randomly permuted. Their weights share the early parent, so
    weight-based MergeMany has signal to find; (b)'s independent short trainings stay within
    20-40% of their random init (relative weight change), so weight matching there matches
    mostly init noise.

Every endpoint is a short digits training (``--epochs``, default 30) from its own seed; all
numbers are on the digits test split. Regenerate with:

    PYTHONPATH=$PWD python benchmarks/effect_merge_many.py [--quick] [--json PATH]

torch.set_num_threads(1); the full run took 320-650 s on a shared 2-core machine (load-dependent).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import repair_dist as rd
from repair_dist.perm import random_permutation

PAIR_ARCHS = {"mlp8x64": dict(depth=8, width=64), "mlp6x128": dict(depth=6, width=128)}
MANY_ARCHS = {
    "mlp8x64": ("mlp", dict(depth=8, width=64)),
    "vgg11x0.25-bn": ("vgg", dict(depth=11, width=0.25, norm="bn", in_shape=(1, 8, 8))),
}


def train_nets(name: str, cfg: dict, seeds: list[int], train, epochs: int) -> list[nn.Module]:
    nets = []
    for s in seeds:
        torch.manual_seed(s)
        net = rd.build_model(name, **cfg)
        nets.append(rd.train_model(net, train, epochs=epochs, seed=s, device="cpu"))
    return nets


def pair_rows(a, b, train, test, args) -> list[dict[str, Any]]:
    """Midpoint barriers of one pair for every matcher, plain and with REPAIR full."""
    ends = [rd.evaluate(n, test) for n in (a, b)]
    end_loss = statistics.fmean(e["loss"] for e in ends)
    end_acc = statistics.fmean(e["acc"] for e in ends)
    spec = rd.permutation_spec(a)
    sizes = spec.group_sizes(a)
    matchers: dict[str, Callable[[], dict]] = {
        "naive": lambda: {g: torch.arange(n) for g, n in sizes.items()},
        "weight": lambda: rd.weight_matching(a, b, spec=spec),
        "activation": lambda: rd.activation_matching(a, b, train, spec=spec),
        "ste": lambda: rd.ste_matching(
            a, b, train, epochs=args.ste_epochs, lr=args.ste_lr, spec=spec
        ),
    }
    rows = []
    for method, match in matchers.items():
        start = time.perf_counter()
        perm = match()
        seconds = time.perf_counter() - start
        c = rd.apply_permutation(b, perm, spec)
        mid = rd.interpolate([a, c], [0.5, 0.5])
        for variant in ("aligned", "full"):
            net = mid if variant == "aligned" else rd.repair(mid, [a, c], [0.5, 0.5], train)
            m = rd.evaluate(net, test)
            rows.append(
                {
                    "method": method,
                    "variant": variant,
                    "loss_barrier": m["loss"] - end_loss,
                    "acc_barrier": end_acc - m["acc"],
                    "match_seconds": seconds,
                }
            )
    return rows


def part_a(train, test, args) -> list[dict[str, Any]]:
    out = []
    for arch, cfg in PAIR_ARCHS.items():
        nets = train_nets("mlp", cfg, list(range(2 * args.pairs)), train, args.epochs)
        for k in range(args.pairs):
            for row in pair_rows(nets[2 * k], nets[2 * k + 1], train, test, args):
                out.append({"arch": arch, "pair": k, **row})
        print(f"(a) {arch}: {args.pairs} pairs done", flush=True)
    return out


def many_rows(nets, train, test) -> list[dict[str, Any]]:
    n = len(nets)
    ends = [rd.evaluate(x, test) for x in nets]
    end_loss = statistics.fmean(e["loss"] for e in ends)
    end_acc = statistics.fmean(e["acc"] for e in ends)
    ens = rd.evaluate(rd.ensemble(nets), test)
    base = {"N": n, "endpoint_loss": end_loss, "endpoint_acc": end_acc}
    base |= {"ensemble_loss": ens["loss"], "ensemble_acc": ens["acc"]}
    rows = [dict(base, merge="ensemble", loss=ens["loss"], acc=ens["acc"], seconds=0.0)]
    naive = rd.interpolate(nets, [1.0 / n] * n)
    cases: dict[str, Callable[[], nn.Module]] = {
        "naive+full": lambda: rd.repair(naive, nets, [1.0 / n] * n, train),
        "merge_many": lambda: rd.merge_many(nets, train, method="merge_many", variant=None),
        "merge_many+full": lambda: rd.merge_many(nets, train, method="merge_many"),
        "activation": lambda: rd.merge_many(nets, train, method="activation", variant=None),
        "activation+full": lambda: rd.merge_many(nets, train, method="activation"),
    }
    for name, make in cases.items():
        start = time.perf_counter()
        merged = make()
        seconds = time.perf_counter() - start
        m = rd.evaluate(merged, test)
        rows.append(dict(base, merge=name, loss=m["loss"], acc=m["acc"], seconds=seconds))
    for r in rows:
        r["loss_barrier"] = r["loss"] - end_loss
        r["acc_barrier"] = end_acc - r["acc"]
        r["loss_vs_ensemble"] = r["loss"] - ens["loss"]
        r["acc_vs_ensemble"] = ens["acc"] - r["acc"]
    return rows


def part_b(train, test, args) -> list[dict[str, Any]]:
    out = []
    for arch, (name, cfg) in MANY_ARCHS.items():
        nets = train_nets(name, cfg, [100 + k for k in range(args.max_n)], train, args.epochs)
        for n in range(2, args.max_n + 1):
            out += [{"arch": arch, **r} for r in many_rows(nets[:n], train, test)]
            print(f"(b) {arch}: N={n} done", flush=True)
    return out


def part_c(train, test, args) -> list[dict[str, Any]]:
    """Permuted children spawned from one early parent: alignment is needed and well posed."""
    [parent] = train_nets("mlp", PAIR_ARCHS["mlp8x64"], [7], train, args.spawn_epochs)
    spec = rd.permutation_spec(parent)
    children = []
    for k in range(args.max_n):
        child = rd.train_model(
            copy.deepcopy(parent), train, epochs=args.epochs, seed=200 + k, device="cpu"
        )
        shuffle = random_permutation(spec.group_sizes(parent), seed=300 + k)
        children.append(rd.apply_permutation(child, shuffle, spec))
    out = []
    for n in range(2, args.max_n + 1):
        out += [{"arch": "mlp8x64-spawned", **r} for r in many_rows(children[:n], train, test)]
        print(f"(c) spawned: N={n} done", flush=True)
    return out


def print_a(rows: list[dict[str, Any]]) -> None:
    print("\n(a) midpoint barriers on pairs (test split; mean over pairs, [min, max])")
    print("| arch | method | loss barrier | + REPAIR full | acc barrier | + REPAIR full |")
    print("|---|---|---|---|---|---|")
    archs = list(dict.fromkeys(r["arch"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for arch in archs:
        for method in methods:
            cells = []
            for key in ("loss_barrier", "acc_barrier"):
                for variant in ("aligned", "full"):
                    v = [
                        r[key]
                        for r in rows
                        if (r["arch"], r["method"], r["variant"]) == (arch, method, variant)
                    ]
                    cells.append(f"{statistics.fmean(v):.3f} [{min(v):.3f}, {max(v):.3f}]")
            print(f"| {arch} | {method} | " + " | ".join(cells) + " |")
        for variant in ("aligned", "full"):
            pick = {
                (r["pair"], r["method"]): r["loss_barrier"]
                for r in rows
                if r["arch"] == arch and r["variant"] == variant
            }
            pairs = sorted({p for p, _ in pick})
            wins = sum(pick[(p, "ste")] <= pick[(p, "weight")] for p in pairs)
            print(f"{arch} {variant}: STE loss barrier <= weight matching's on {wins}/{len(pairs)}")


def print_b(rows: list[dict[str, Any]], title: str) -> None:
    print(f"\n{title} merged net of N (test split): loss barrier vs mean endpoint / vs ensemble")
    merges = [m for m in dict.fromkeys(r["merge"] for r in rows)]
    print("| arch | N | endpoint loss/acc | " + " | ".join(merges) + " |")
    print("|---|---|---|" + "---|" * len(merges))
    for arch in dict.fromkeys(r["arch"] for r in rows):
        for n in sorted({r["N"] for r in rows if r["arch"] == arch}):
            sel = {r["merge"]: r for r in rows if r["arch"] == arch and r["N"] == n}
            first = next(iter(sel.values()))
            cells = [
                f"{sel[m]['loss_barrier']:+.3f} / {sel[m]['loss_vs_ensemble']:+.3f} "
                f"(acc {sel[m]['acc']:.3f})"
                for m in merges
            ]
            head = f"{first['endpoint_loss']:.3f} / {first['endpoint_acc']:.3f}"
            print(f"| {arch} | {n} | {head} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 pairs, N up to 4, fewer epochs")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--max-n", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--ste-epochs", type=int, default=30)
    parser.add_argument("--ste-lr", type=float, default=0.1)
    parser.add_argument("--spawn-epochs", type=int, default=2, help="(c) parent's epochs")
    parser.add_argument("--parts", default="abc", help="which parts to run, e.g. a, bc, abc")
    parser.add_argument("--json", help="also write every row to this JSON file")
    args = parser.parse_args()
    if args.quick:
        args.pairs, args.max_n, args.epochs, args.ste_epochs = 2, 4, 15, 10
    torch.set_num_threads(1)
    train, test = rd.load_dataset("digits")
    start = time.perf_counter()
    rows_a = part_a(train, test, args) if "a" in args.parts else []
    rows_b = part_b(train, test, args) if "b" in args.parts else []
    rows_c = part_c(train, test, args) if "c" in args.parts else []
    if rows_a:
        print_a(rows_a)
    if rows_b:
        print_b(rows_b, "(b)")
    if rows_c:
        print_b(rows_c, "(c) spawned:")
    print(f"\ntotal {time.perf_counter() - start:.0f}s; args {vars(args)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"args": vars(args), "pairs": rows_a, "many": rows_b, "spawned": rows_c},
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
