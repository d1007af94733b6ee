"""Benchmark: the alignment statistics pass (issue "Ray actors shard every pass over data").

Prints ratios measured side by side in one run (DESIGN.md §7), never absolute-time assertions:

(a) statistics pass for nets A and B together / plain eval forward of A and B, same batches,
    for a deep MLP and a ResNet20-style BN net (target <= 1.3), with a breakdown: forward with
    the hooks only (activation copies, no statistics) vs the float64 statistics arithmetic.
(b) the reference-notebook way (REPAIR / Git Re-Basin): for every probe separately, re-run the
    sub-network up to it for both nets over the whole dataset and accumulate float64 outer
    products, sums and squares; then build the correlation.  Reference / ours = speed-up.
    Checked numerically: both give the same correlation matrices (allclose, atol 1e-8).
    MLP only (the prefix of ``net.blocks``); ResNet20 is left out of (b) to keep the run short.
(c) the same pass sharded over 1 and 2 Ray workers (ShardPool) vs in-process.
(d) driver reduction (StatsDict.merge of per-shard partials) / the whole pass.
(e) memory: peak RSS growth of the pass (fresh process per dataset size) and the bytes of the
    resulting statistics, for growing datasets: streaming statistics do not grow with n.

Usage: python benchmarks/bench_stats.py [--quick] [--json PATH]
Each part uses torch.set_num_threads(1); timings are medians of --repeats interleaved runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from functools import reduce
from typing import Any

import torch

import repair_dist as rd
from repair_dist.data import BatchPlan
from repair_dist.passes import Probe, StatsDict, alignment_stats_pass, tap
from repair_dist.perm import permutation_spec
from repair_dist.perm.activation import alignment_probes, repair_only_probes

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    fmt,
    interleaved_medians,
    machine_info,
    median_time,
    print_machine,
    print_table,
    timed,
    write_json,
)

MLP_KW = dict(depth=8, width=128, norm="none", in_shape=(1, 8, 8))
RESNET_KW = dict(width=2, norm="bn", in_shape=(3, 32, 32))

#: (quick, default) sizes; every part of the default run stays well under 3 minutes on 2 cores.
SIZES = {
    "mlp_n": (8192, 32768),
    "resnet_n": (32, 128),
    "ray_n": (16384, 32768),
    "mem_n": ((2048, 8192), (2048, 8192, 131072)),
}


# ------------------------------------------------------------------------------------------
# nets and data


def pair(model: str, kw: dict[str, Any]) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Two independently initialised nets (seeds 0 and 1), in eval mode."""
    nets = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        nets.append(rd.build_model(model, **kw).eval())
    return nets[0], nets[1]


def synthetic(n: int, shape: tuple[int, ...]) -> torch.utils.data.Dataset:
    train, _ = rd.load_dataset("synthetic", n_train=n, n_test=16, shape=shape)
    return train


@torch.no_grad()
def plain_forward(net_a, net_b, plan: BatchPlan) -> None:
    """The baseline: eval forward of A and B over the same batches, nothing observed."""
    net_a.eval()
    net_b.eval()
    for x, _ in plan.batches():
        net_a(x)
        net_b(x)


@torch.no_grad()
def forward_with_taps(net_a, net_b, plan: BatchPlan, probes) -> None:
    """The pass without its statistics: hooks copy every probe's activation, then drop them."""
    acts_a: dict = {}
    acts_b: dict = {}
    with tap(net_a, probes, acts_a), tap(net_b, probes, acts_b):
        for x, _ in plan.batches():
            net_a(x)
            net_b(x)
            acts_a.clear()
            acts_b.clear()


def stats_bytes(stats: StatsDict) -> int:
    total = 0
    for v in stats.values():
        for t in vars(v).values():
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


# ------------------------------------------------------------------------------------------
# (b) the reference-notebook way


def mlp_prefix(net, probe: Probe, x: torch.Tensor) -> torch.Tensor:
    """The MLP's sub-network from the input up to ``probe`` (``blocks.<i>.<linear|norm|act>``)."""
    _, i, part = probe.module.split(".")
    i = int(i)
    h = x.flatten(1)
    for block in net.blocks[:i]:
        h = block(h)
    block = net.blocks[i]
    h = block.linear(h)
    if part != "linear":
        h = block.norm(h)
        if part == "act":
            h = block.act(h)
    return torch.relu(h) if probe.relu else h


@torch.no_grad()
def reference_correlations(net_a, net_b, plan: BatchPlan, probes) -> dict[Probe, torch.Tensor]:
    """One full pass over the data PER PROBE: float64 outer products, sums and squares."""
    net_a.eval()
    net_b.eval()
    out = {}
    for p in probes:
        n, sa, sb, qa, qb, outer = 0, 0.0, 0.0, 0.0, 0.0, 0.0
        for x, _ in plan.batches():
            a = mlp_prefix(net_a, p, x).double()
            b = mlp_prefix(net_b, p, x).double()
            n += a.shape[0]
            sa, sb = sa + a.sum(0), sb + b.sum(0)
            qa, qb = qa + (a * a).sum(0), qb + (b * b).sum(0)
            outer = outer + a.T @ b
        mean_a, mean_b = sa / n, sb / n
        cov = outer / n - torch.outer(mean_a, mean_b)
        std_a = (qa / n - mean_a**2).clamp_min(0).sqrt()
        std_b = (qb / n - mean_b**2).clamp_min(0).sqrt()
        denom = torch.outer(std_a, std_b)
        # dead (constant) units correlate 0, as in CrossMoments.corr
        corr = torch.where(denom > 0, cov / denom.clamp_min(1e-300), torch.zeros_like(cov))
        out[p] = corr.clamp(-1.0, 1.0)
    return out


# ------------------------------------------------------------------------------------------
# parts


def part_a(name, net_a, net_b, plan, probes, repeats, with_reference):
    lean = repair_only_probes(permutation_spec(net_a))  # what a trial without closed_form runs
    fns = {
        "plain": lambda: plain_forward(net_a, net_b, plan),
        "taps": lambda: forward_with_taps(net_a, net_b, plan, probes),
        "ours": lambda: alignment_stats_pass(net_a, net_b, batches=plan.batches(), probes=probes),
        "trial": lambda: alignment_stats_pass(
            net_a, net_b, batches=plan.batches(), probes=probes, moments_only=lean
        ),
    }
    if with_reference:
        fns["reference"] = lambda: reference_correlations(net_a, net_b, plan, probes)
    for fn in fns.values():  # warm-up (allocator, lazy init), not timed
        fn()
    t = interleaved_medians(fns, repeats)
    res = {
        "model": name,
        "n": len(plan.dataset),
        "batch_size": plan.batch_size,
        "probes": len(probes),
        "seconds": t,
        "ratio_stats_over_plain": t["ours"] / t["plain"],
        "ratio_trial_stats_over_plain": t["trial"] / t["plain"],
        "ratio_taps_over_plain": t["taps"] / t["plain"],
        "share_of_pass_in_stats_arithmetic": max(0.0, t["ours"] - t["taps"]) / t["ours"],
    }
    if with_reference:
        ours = alignment_stats_pass(net_a, net_b, batches=plan.batches(), probes=probes)
        ref = reference_correlations(net_a, net_b, plan, probes)
        diffs = [float((ref[p] - ours[p].corr()).abs().max()) for p in probes]
        for p, d in zip(probes, diffs, strict=True):
            assert torch.allclose(ref[p], ours[p].corr(), rtol=0, atol=1e-8), (p, d)
        res["speedup_ours_vs_reference"] = t["reference"] / t["ours"]
        res["reference_max_abs_corr_diff"] = max(diffs)
    return res


def part_c(net_a, net_b, plan, probes, repeats):
    from repair_dist.distributed import ShardPool, WorkerResources, init_local_ray

    res: dict[str, Any] = {"n": len(plan.dataset), "batch_size": plan.batch_size}
    res["parallel_capacity_2proc"] = parallel_capacity()
    res["ray_start_s"], _ = timed(lambda: init_local_ray(num_cpus=2))

    def inproc():
        return alignment_stats_pass(net_a, net_b, batches=plan.batches(), probes=probes)

    inproc()
    res["in_process_s"] = median_time(inproc, repeats)
    expected = inproc()
    for workers in (1, 2):
        spawn_s, pool = timed(
            lambda w=workers: ShardPool(w, resources=WorkerResources(cpus=1.0), task_timeout_s=300)
        )
        try:

            def sharded(pool=pool):
                return pool.run(alignment_stats_pass, [net_a, net_b], plan, probes=probes)

            warm_s, got = timed(sharded)  # ships the plan (dataset) to each worker once
            res[f"pool{workers}_spawn_s"] = spawn_s
            res[f"pool{workers}_first_run_s"] = warm_s
            res[f"pool{workers}_s"] = median_time(sharded, repeats)
            res[f"pool{workers}_max_abs_corr_diff"] = max(
                float((got[p].corr() - expected[p].corr()).abs().max()) for p in probes
            )
        finally:
            pool.shutdown()
            time.sleep(0.5)  # let Ray release the killed actors' CPUs before the next pool
    res["speedup_pool1_vs_in_process"] = res["in_process_s"] / res["pool1_s"]
    res["speedup_pool2_vs_pool1"] = res["pool1_s"] / res["pool2_s"]
    res["speedup_pool2_vs_in_process"] = res["in_process_s"] / res["pool2_s"]
    import ray

    ray.shutdown()
    return res


def part_d(name, net_a, net_b, shape, batch_size, probes, pass_s, shard_counts=(2, 8)):
    """Merge time of per-shard partials / the whole pass (``pass_s`` from part (a)).

    The merge cost depends on the statistics' shapes only, never on the amount of data: the
    partials are computed on ``k`` one-batch shards of fresh synthetic data to keep this cheap.
    """
    out = {}
    for k in shard_counts:
        plan = BatchPlan(synthetic(k * batch_size, shape), batch_size)
        parts = [
            alignment_stats_pass(
                net_a, net_b, batches=plan.batches(plan.shard(i, k)), probes=probes
            )
            for i in range(k)
        ]
        merge_s = median_time(lambda parts=parts: reduce(lambda x, y: x.merge(y), parts), 21)
        out[f"shards{k}"] = {
            "merge_s": merge_s,
            "ratio_merge_over_pass": merge_s / pass_s,
            "partial_bytes": stats_bytes(parts[0]),
        }
    return {"model": name, "pass_s": pass_s, **out}


def _burn(n_iter: int, barrier: Any, queue: Any) -> None:
    torch.set_num_threads(1)
    a = torch.randn(256, 256)
    barrier.wait()
    start = time.perf_counter()
    for _ in range(n_iter):
        a @ a
    queue.put(time.perf_counter() - start)


def parallel_capacity(n_iter: int = 800) -> float:
    """How many cores' worth of compute 2 processes get right now (2.0 on 2 idle cores).

    Two plain processes each run the same single-threaded matmul loop as one process alone;
    capacity = 2 x (time alone) / (time of the slower of the two together).
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")

    def run(k: int) -> float:
        barrier, queue = ctx.Barrier(k), ctx.Queue()
        procs = [ctx.Process(target=_burn, args=(n_iter, barrier, queue)) for _ in range(k)]
        for p in procs:
            p.start()
        times = [queue.get(timeout=120) for _ in procs]
        for p in procs:
            p.join()
        return max(times)

    return 2 * run(1) / run(2)


# ------------------------------------------------------------------------------------------
# (e) memory, one fresh process per dataset size


def _vm(field: str) -> int:
    with open("/proc/self/status") as f:
        m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
    return int(m.group(1)) * 1024 if m else -1


def memory_child(n: int, batch_size: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    net_a, net_b = pair("mlp", MLP_KW)
    data = synthetic(n, MLP_KW["in_shape"])
    plan = BatchPlan(data, batch_size)
    probes = alignment_probes(permutation_spec(net_a))
    rss_before = _vm("VmRSS")
    try:  # reset the peak-RSS counter (VmHWM) to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        how = "VmHWM after clear_refs"
    except OSError:
        how = "ru_maxrss (process peak, includes imports)"
    stats = alignment_stats_pass(net_a, net_b, batches=plan.batches(), probes=probes)
    if how.startswith("VmHWM"):
        peak = _vm("VmHWM")
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    channels = sum(s.mean_a.numel() for s in stats.values())
    return {
        "n": n,
        "dataset_bytes": sum(t.numel() * t.element_size() for t in data.tensors),
        "rss_before_pass": rss_before,
        "peak_rss_growth_during_pass": peak - rss_before,
        "stats_bytes": stats_bytes(stats),
        "activations_if_stored_bytes": n * channels * 2 * 4,
        "method": how,
    }


def part_e(sizes, batch_size):
    rows = []
    for n in sizes:
        cmd = [sys.executable, os.path.abspath(__file__), "--_memory-child", str(n)]
        cmd += ["--batch-size", str(batch_size)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    return rows


# ------------------------------------------------------------------------------------------


def mb(x: float) -> str:
    return f"{x / 2**20:,.2f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (about 1 minute)")
    ap.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats (median)")
    ap.add_argument("--batch-size", type=int, default=500, help="MLP batch size")
    ap.add_argument("--resnet-batch-size", type=int, default=64)
    ap.add_argument("--skip-ray", action="store_true", help="leave out part (c)")
    ap.add_argument("--_memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._memory_child is not None:
        print(json.dumps(memory_child(args._memory_child, args.batch_size)))
        return

    torch.set_num_threads(1)
    q = 0 if args.quick else 1
    sizes = {k: v[q] for k, v in SIZES.items()}
    started = time.perf_counter()
    info = machine_info()
    print("bench_stats: alignment statistics pass (ratios measured in this run)")
    print_machine(info)
    print(f"mode: {'quick' if args.quick else 'default'}; sizes {sizes}; repeats {args.repeats}")

    # ---- (a) + (b)
    mlp_a, mlp_b = pair("mlp", MLP_KW)
    mlp_data = synthetic(sizes["mlp_n"], MLP_KW["in_shape"])
    mlp_plan = BatchPlan(mlp_data, args.batch_size)
    mlp_probes = alignment_probes(permutation_spec(mlp_a))
    mlp = part_a("mlp d8 w128", mlp_a, mlp_b, mlp_plan, mlp_probes, args.repeats, True)

    res_a, res_b = pair("resnet20", RESNET_KW)
    res_data = synthetic(sizes["resnet_n"], RESNET_KW["in_shape"])
    res_plan = BatchPlan(res_data, args.resnet_batch_size)
    res_probes = alignment_probes(permutation_spec(res_a))
    resnet = part_a("resnet20 w2 bn", res_a, res_b, res_plan, res_probes, args.repeats, False)

    rows = []
    for r in (mlp, resnet):
        s = r["seconds"]
        rows.append(
            [
                r["model"],
                r["n"],
                r["probes"],
                fmt(s["plain"]),
                fmt(s["ours"]),
                fmt(r["ratio_stats_over_plain"]),
                fmt(r["ratio_trial_stats_over_plain"]),
                "yes" if r["ratio_trial_stats_over_plain"] <= 1.3 else "NO",
                fmt(r["ratio_taps_over_plain"]),
                f"{100 * r['share_of_pass_in_stats_arithmetic']:.0f}%",
            ]
        )
    print_table(
        "(a) statistics pass (A and B together) / plain eval forward of A and B, same batches",
        rows,
        [
            "model",
            "n",
            "probes",
            "plain s",
            "stats s",
            "stats/plain",
            "trial/plain",
            "<=1.3?",
            "hooks-only/plain",
            "pass in f64 stats",
        ],
    )
    print(
        "  stats = cross matrices at every probe; trial = what a merge trial without "
        "closed_form runs\n  (cross matrices at matching probes, per-channel moments at "
        "REPAIR-only probes).\n"
        "  hooks-only = the same forward with the probes' hooks copying activations, no "
        "statistics;\n  'pass in f64 stats' = (stats - hooks-only) / stats: the float64 "
        "centring, squares and cross GEMM per probe."
    )
    print_table(
        "(b) reference-notebook way (per-probe sub-network re-run, float64 outer products) / ours",
        [
            [
                mlp["model"],
                mlp["n"],
                mlp["probes"],
                fmt(mlp["seconds"]["reference"]),
                fmt(mlp["seconds"]["ours"]),
                f"{mlp['speedup_ours_vs_reference']:.2f}x",
                f"{mlp['reference_max_abs_corr_diff']:.1e}",
            ]
        ],
        ["model", "n", "probes", "reference s", "ours s", "speed-up", "max |corr diff|"],
    )
    print(
        "  same correlation matrices for every probe (allclose, atol 1e-8: asserted). "
        "ResNet20 is left out of (b)\n  to keep the run short: its reference would re-run "
        f"{len(res_probes)} sub-networks."
    )

    # ---- (c)
    ray_res = None
    if not args.skip_ray:
        ray_data = synthetic(sizes["ray_n"], MLP_KW["in_shape"])
        ray_plan = BatchPlan(ray_data, args.batch_size)
        ray_res = part_c(mlp_a, mlp_b, ray_plan, mlp_probes, args.repeats)
        c = ray_res
        print_table(
            f"(c) sharded statistics pass, MLP, n={c['n']}: Ray ShardPool (1 CPU, 1 thread per "
            "worker) vs in-process (1 thread)",
            [
                ["in-process", fmt(c["in_process_s"]), "", "", "1.00x", ""],
                [
                    "ShardPool(1)",
                    fmt(c["pool1_s"]),
                    fmt(c["pool1_spawn_s"]),
                    fmt(c["pool1_first_run_s"]),
                    f"{c['speedup_pool1_vs_in_process']:.2f}x",
                    f"{c['pool1_max_abs_corr_diff']:.0e}",
                ],
                [
                    "ShardPool(2)",
                    fmt(c["pool2_s"]),
                    fmt(c["pool2_spawn_s"]),
                    fmt(c["pool2_first_run_s"]),
                    f"{c['speedup_pool2_vs_in_process']:.2f}x",
                    f"{c['pool2_max_abs_corr_diff']:.0e}",
                ],
            ],
            ["executor", "pass s", "spawn s", "1st run s", "speed-up", "|corr diff|"],
        )
        print(
            f"  2 workers vs 1 worker: {c['speedup_pool2_vs_pool1']:.2f}x "
            f"(ideal 2x on 2 idle cores); Ray start {c['ray_start_s']:.1f} s.\n"
            f"  Cores' worth of compute 2 plain processes got at that moment (a 1-thread "
            f"matmul loop, 2.0 = 2 idle cores): {c['parallel_capacity_2proc']:.2f}.\n"
            "  The 1st run ships the dataset to each worker once (cached there); later passes "
            "send only batch ids\n  and one copy of the weights."
        )

    # ---- (d)
    red = [
        part_d(
            mlp["model"],
            mlp_a,
            mlp_b,
            MLP_KW["in_shape"],
            args.batch_size,
            mlp_probes,
            mlp["seconds"]["ours"],
        ),
        part_d(
            resnet["model"],
            res_a,
            res_b,
            RESNET_KW["in_shape"],
            8,
            res_probes,
            resnet["seconds"]["ours"],
        ),
    ]
    rows = []
    for r in red:
        for k in (2, 8):
            d = r[f"shards{k}"]
            rows.append(
                [
                    r["model"],
                    k,
                    f"{1e3 * d['merge_s']:.3f}",
                    fmt(r["pass_s"]),
                    f"{d['ratio_merge_over_pass']:.2e}",
                    mb(d["partial_bytes"]),
                ]
            )
    print_table(
        "(d) driver reduction: StatsDict.merge of the shards' partials / whole pass (from (a))",
        rows,
        ["model", "shards", "merge ms", "pass s", "merge/pass", "one partial"],
    )

    # ---- (e)
    mem = part_e(sizes["mem_n"], args.batch_size)
    print_table(
        "(e) memory of the MLP statistics pass vs dataset size (fresh process per size)",
        [
            [
                m["n"],
                mb(m["dataset_bytes"]),
                mb(m["peak_rss_growth_during_pass"]),
                f"{m['stats_bytes']:,} B",
                mb(m["activations_if_stored_bytes"]),
            ]
            for m in mem
        ],
        ["n", "dataset", "peak RSS growth", "StatsDict tensors", "activations if stored"],
    )
    growth = mem[-1]["peak_rss_growth_during_pass"] / max(mem[0]["peak_rss_growth_during_pass"], 1)
    same = len({m["stats_bytes"] for m in mem}) == 1
    print(
        f"  statistics bytes identical for every n: {same}; peak-growth ratio "
        f"n={mem[-1]['n']} / n={mem[0]['n']}: {growth:.2f} (data grew "
        f"{mem[-1]['n'] / mem[0]['n']:.0f}x). Peak = {mem[0]['method']}."
    )
    total = time.perf_counter() - started
    print(f"\ntotal benchmark time {total:.0f} s")
    write_json(
        args.json,
        {
            "benchmark": "bench_stats",
            "mode": "quick" if args.quick else "default",
            "machine": info,
            "sizes": sizes,
            "repeats": args.repeats,
            "a_b_stats_pass": [mlp, resnet],
            "c_ray": ray_res,
            "d_reduction": red,
            "e_memory": mem,
            "e_stats_bytes_constant": same,
            "total_seconds": total,
        },
    )


if __name__ == "__main__":
    main()
