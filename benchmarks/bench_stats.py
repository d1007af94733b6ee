"""Benchmark: the alignment statistics pass (issue "Ray actors shard every pass over data").

Prints ratios measured side by side in one run (DESIGN.md §7), never absolute-time assertions:

(a) statistics pass for nets A and B together / plain eval forward of A and B, same batches,
    for a deep MLP and a ResNet20-style BN net. "trial" = what a merge trial runs (cross
    matrices at matching probes, per-channel moments at REPAIR-only probes); targets
    <= 2.0 (MLP 8x128) and <= 1.5 (ResNet20x2). Breakdown: forward with the hooks centring the
    activations only (no moments), and the same trial pass with the former float64 engine
    (defensive clone, float64 copy, float64 GEMM), measured interleaved in the same run.
(b) a fair reference-notebook way (REPAIR / Git Re-Basin): for every *matching* probe,
    re-run the sub-network up to it for both nets over the whole dataset and accumulate
    float64 outer products, sums and squares; only those correlation matrices. Ours = the
    activation-matching pass (matching probes only). Reported with the forward-work ratio
    (linear-layer MACs of all prefix re-runs / one full forward); target speed-up >= depth/2.
    Checked numerically: correlations agree to 2e-6 (float32 batch-centred vs float64).
    MLP only (the prefix of ``net.blocks``).
(c) the same pass sharded over 1 and 2 Ray workers (ShardPool, shards pulled from a queue)
    vs in-process, on the cores as they are and with a neighbour process busy on one core.
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
from repair_dist.passes import (
    Probe,
    StatsDict,
    alignment_stats_pass,
    flatten_channels,
    tap,
)
from repair_dist.passes.streaming import ProbeTap, Workspace
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
#: Targets of the trial ratio (issue 9), per model.
TRIAL_TARGETS = {"mlp d8 w128": 2.0, "resnet20 w2 bn": 1.5}
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


@torch.inference_mode()
def plain_forward(net_a, net_b, plan: BatchPlan) -> None:
    """The baseline: eval forward of A and B over the same batches, nothing observed, under
    ``inference_mode`` as the statistics pass runs its forwards (the fastest plain forward)."""
    net_a.eval()
    net_b.eval()
    for x, _ in plan.batches():
        net_a(x)
        net_b(x)


@torch.no_grad()
def forward_with_taps(net_a, net_b, plan: BatchPlan, probes, lean) -> None:
    """The trial pass without its cross matrices and merges: every probe's tap centres its
    activation and reduces it to sums as the pass does (A's matching probes into kept
    buffers, the rest into one scratch)."""
    ws = Workspace()
    skip = set(lean)
    taps_a = {p: ProbeTap(p, ws, keep=p not in skip) for p in probes}
    taps_b = {p: ProbeTap(p, ws) for p in probes}
    with torch.inference_mode(), tap(net_a, probes, {}, taps_a), tap(net_b, probes, {}, taps_b):
        for x, _ in plan.batches():
            net_a(x)
            net_b(x)


def _float64_moments(a: torch.Tensor, b: torch.Tensor, cross: bool) -> tuple:
    """One batch as the former engine computed it: float64 copies, centred, float64 GEMM."""
    fa, fb = flatten_channels(a).double(), flatten_channels(b).double()
    ca, cb = fa - fa.mean(0), fb - fb.mean(0)
    return (ca * ca).sum(0), (cb * cb).sum(0), ca.T @ cb if cross else None


@torch.no_grad()
def float64_trial_pass(net_a, net_b, plan: BatchPlan, probes, lean) -> None:
    """The former engine's trial pass (clone in the hook, float64 moments), for comparison."""
    acts_a: dict = {}
    acts_b: dict = {}
    skip = set(lean)
    with tap(net_a, probes, acts_a), tap(net_b, probes, acts_b):
        for x, _ in plan.batches():
            net_a(x)
            net_b(x)
            for p in probes:
                _float64_moments(acts_a.pop(p), acts_b.pop(p), p not in skip)


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


def part_a(name, net_a, net_b, plan, probes, repeats):
    lean = repair_only_probes(permutation_spec(net_a))  # what a trial without closed_form runs
    fns = {
        "plain": lambda: plain_forward(net_a, net_b, plan),
        "taps": lambda: forward_with_taps(net_a, net_b, plan, probes, lean),
        "ours": lambda: alignment_stats_pass(net_a, net_b, batches=plan.batches(), probes=probes),
        "trial": lambda: alignment_stats_pass(
            net_a, net_b, batches=plan.batches(), probes=probes, moments_only=lean
        ),
        "trial_f64": lambda: float64_trial_pass(net_a, net_b, plan, probes, lean),
    }
    for fn in fns.values():  # warm-up (allocator, lazy init), not timed
        fn()
    t = interleaved_medians(fns, repeats)
    return {
        "model": name,
        "n": len(plan.dataset),
        "batch_size": plan.batch_size,
        "probes": len(probes),
        "seconds": t,
        "ratio_stats_over_plain": t["ours"] / t["plain"],
        "ratio_trial_stats_over_plain": t["trial"] / t["plain"],
        "ratio_trial_f64_over_plain": t["trial_f64"] / t["plain"],
        "ratio_taps_over_plain": t["taps"] / t["plain"],
        "trial_target": TRIAL_TARGETS[name],
    }


@torch.inference_mode()
def forward_and_gemms(net_a, net_b, plan: BatchPlan, probes) -> None:
    """The floor of any pass that computes the same cross matrices in float32: the plain
    forward of A and B plus one C x C GEMM per matching probe and batch, over the raw
    activations, with no centring, sums or merging."""
    acts: dict = {}

    def keep(p, act):
        return act

    with tap(net_a, probes, acts, keep), tap(net_b, probes, {}, lambda p, b: acts[p].T @ b):
        for x, _ in plan.batches():
            net_a(x)
            net_b(x)


def mlp_forward_macs(net, probes) -> tuple[int, int]:
    """(MACs of one full forward, MACs of re-running the prefix up to every probe): the
    forward work of ours vs the reference, counted in linear-layer multiply-adds."""
    layers = [b.linear for b in net.blocks]
    costs = [m.in_features * m.out_features for m in layers]
    full = sum(costs) + net.head.in_features * net.head.out_features
    prefixes = sum(sum(costs[: int(p.module.split(".")[1]) + 1]) for p in probes)
    return full, prefixes


def part_b(name, net_a, net_b, plan, repeats):
    """Fair reference: one prefix re-run per matching probe, only the matching correlations."""
    spec = permutation_spec(net_a)
    probes = alignment_probes(spec, repair=False)  # what activation matching reads
    fns = {
        "ours": lambda: alignment_stats_pass(net_a, net_b, batches=plan.batches(), probes=probes),
        "reference": lambda: reference_correlations(net_a, net_b, plan, probes),
        "floor": lambda: forward_and_gemms(net_a, net_b, plan, probes),
    }
    for fn in fns.values():
        fn()
    t = interleaved_medians(fns, repeats)
    ours = alignment_stats_pass(net_a, net_b, batches=plan.batches(), probes=probes)
    ref = reference_correlations(net_a, net_b, plan, probes)
    diffs = [float((ref[p] - ours[p].corr()).abs().max()) for p in probes]
    for p, d in zip(probes, diffs, strict=True):
        assert torch.allclose(ref[p], ours[p].corr(), rtol=0, atol=2e-6), (p, d)
    full, prefixes = mlp_forward_macs(net_a, probes)
    return {
        "model": name,
        "n": len(plan.dataset),
        "probes": len(probes),
        "depth": len(net_a.blocks),
        "seconds": t,
        "speedup_ours_vs_reference": t["reference"] / t["ours"],
        "speedup_ceiling": t["reference"] / t["floor"],
        "forward_work_ratio": prefixes / full,
        "reference_max_abs_corr_diff": max(diffs),
    }


def _hog(stop: Any) -> None:
    """A neighbour: one thread of matmuls on one core until told to stop."""
    torch.set_num_threads(1)
    a = torch.randn(256, 256)
    while not stop.is_set():
        a @ a


def part_c(net_a, net_b, plan, probes, repeats):
    import multiprocessing as mp

    from repair_dist.distributed import ShardPool, WorkerResources, init_local_ray

    res: dict[str, Any] = {"n": len(plan.dataset), "batch_size": plan.batch_size}
    res["parallel_capacity_2proc"] = parallel_capacity()
    res["ray_start_s"], _ = timed(lambda: init_local_ray(num_cpus=2))

    def inproc():
        return alignment_stats_pass(net_a, net_b, batches=plan.batches(), probes=probes)

    inproc()
    expected = inproc()
    pools = {}
    for workers in (1, 2):
        spawn_s, pools[workers] = timed(
            # 0.5 CPU each so both pools fit on 2 cores at once (interleaved timing); every
            # worker still runs 1 torch thread
            lambda w=workers: ShardPool(w, resources=WorkerResources(cpus=0.5), task_timeout_s=300)
        )
        res[f"pool{workers}_spawn_s"] = spawn_s
        res[f"pool{workers}_shards"] = min(len(plan), pools[workers].shards)
    try:
        fns = {"in_process": inproc}
        for workers, pool in pools.items():

            def sharded(pool=pool):
                return pool.run(alignment_stats_pass, [net_a, net_b], plan, probes=probes)

            warm_s, got = timed(sharded)  # ships the plan (dataset) to each worker once
            res[f"pool{workers}_first_run_s"] = warm_s
            res[f"pool{workers}_max_abs_corr_diff"] = max(
                float((got[p].corr() - expected[p].corr()).abs().max()) for p in probes
            )
            fns[f"pool{workers}"] = sharded
        res["free"] = interleaved_medians(fns, repeats)
        ctx = mp.get_context("spawn")
        stop = ctx.Event()
        hog = ctx.Process(target=_hog, args=(stop,), daemon=True)
        hog.start()
        try:
            time.sleep(1.0)
            res["neighbour"] = interleaved_medians(fns, repeats)
        finally:
            stop.set()
            hog.join(timeout=10)
    finally:
        for pool in pools.values():
            pool.shutdown()
    for load in ("free", "neighbour"):
        t = res[load]
        res[f"{load}_speedup_pool2_vs_pool1"] = t["pool1"] / t["pool2"]
        res[f"{load}_speedup_pool2_vs_in_process"] = t["in_process"] / t["pool2"]
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
    mlp = part_a("mlp d8 w128", mlp_a, mlp_b, mlp_plan, mlp_probes, args.repeats)

    res_a, res_b = pair("resnet20", RESNET_KW)
    res_data = synthetic(sizes["resnet_n"], RESNET_KW["in_shape"])
    res_plan = BatchPlan(res_data, args.resnet_batch_size)
    res_probes = alignment_probes(permutation_spec(res_a))
    resnet = part_a("resnet20 w2 bn", res_a, res_b, res_plan, res_probes, args.repeats)

    rows = []
    for r in (mlp, resnet):
        s = r["seconds"]
        rows.append(
            [
                r["model"],
                r["n"],
                r["probes"],
                fmt(s["plain"]),
                fmt(r["ratio_stats_over_plain"]),
                fmt(r["ratio_trial_stats_over_plain"]),
                f"<= {r['trial_target']:g}: "
                + ("yes" if r["ratio_trial_stats_over_plain"] <= r["trial_target"] else "NO"),
                fmt(r["ratio_trial_f64_over_plain"]),
                fmt(r["ratio_taps_over_plain"]),
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
            "stats/plain",
            "trial/plain",
            "target",
            "f64 trial/plain",
            "hooks-only/plain",
        ],
    )
    print(
        "  stats = cross matrices at every probe; trial = what a merge trial without "
        "closed_form runs\n  (cross matrices at matching probes, per-channel moments at "
        "REPAIR-only probes).\n"
        "  f64 trial = the same trial pass as the former engine ran it (clone in the hook, "
        "float64 copies and GEMM);\n  hooks-only = the trial's forward with its hooks "
        "centring each probe as the pass does (sums, centred copy, sums of squares),"
        "\n  no cross GEMM and no float64 merge."
    )
    fair = part_b("mlp d8 w128", mlp_a, mlp_b, mlp_plan, args.repeats)
    print_table(
        "(b) fair reference-notebook way (one prefix re-run per matching probe, float64 outer "
        "products) / ours (the matching pass)",
        [
            [
                fair["model"],
                fair["n"],
                fair["probes"],
                fmt(fair["seconds"]["reference"]),
                fmt(fair["seconds"]["ours"]),
                f"{fair['speedup_ours_vs_reference']:.2f}x",
                f"{fair['speedup_ceiling']:.2f}x",
                f"{fair['forward_work_ratio']:.2f}x",
                f"{fair['depth'] / 2:g}x",
                f"{fair['reference_max_abs_corr_diff']:.1e}",
            ]
        ],
        [
            "model",
            "n",
            "probes",
            "reference s",
            "ours s",
            "speed-up",
            "ceiling",
            "forward work ratio",
            "target",
            "max |corr diff|",
        ],
    )
    print(
        "  forward work ratio = linear-layer MACs of the reference's prefix re-runs / one "
        "full forward (per net).\n  ceiling = reference / (plain forward of A and B + one "
        "float32 GEMM per matching probe and batch,\n  nothing else): the speed-up of a pass "
        "whose statistics cost no more than their cross GEMMs.\n  Correlations agree to 2e-6 for every probe (asserted): "
        "ours is float32 batch-centred, the reference float64."
    )

    # ---- (c)
    ray_res = None
    if not args.skip_ray:
        ray_data = synthetic(sizes["ray_n"], MLP_KW["in_shape"])
        ray_plan = BatchPlan(ray_data, args.batch_size)
        ray_res = part_c(mlp_a, mlp_b, ray_plan, mlp_probes, args.repeats)
        c = ray_res
        rows = []
        for load in ("free", "neighbour"):
            t = c[load]
            rows.append(
                [
                    load,
                    fmt(t["in_process"]),
                    fmt(t["pool1"]),
                    fmt(t["pool2"]),
                    f"{c[f'{load}_speedup_pool2_vs_pool1']:.2f}x",
                    f"{c[f'{load}_speedup_pool2_vs_in_process']:.2f}x",
                ]
            )
        print_table(
            f"(c) sharded statistics pass, MLP, n={c['n']}: Ray ShardPool (1 thread per "
            f"worker, {c['pool2_shards']} shards from a queue) vs in-process (1 thread)",
            rows,
            ["cores", "in-process s", "pool(1) s", "pool(2) s", "2 vs 1 worker", "2 vs in-proc"],
        )
        print(
            "  free = the cores as they are (see capacity); neighbour = another process "
            "running a 1-thread matmul loop\n  throughout. "
            f"|corr diff| vs in-process: {c['pool2_max_abs_corr_diff']:.0e}; Ray start "
            f"{c['ray_start_s']:.1f} s; pool spawn {c['pool2_spawn_s']:.1f} s; 1st run "
            f"{c['pool2_first_run_s']:.2f} s (ships the dataset once).\n"
            f"  Cores' worth of compute 2 plain processes got at that moment (a 1-thread "
            f"matmul loop, 2.0 = 2 idle cores): {c['parallel_capacity_2proc']:.2f}."
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
            "a_stats_pass": [mlp, resnet],
            "b_fair_reference": fair,
            "c_ray": ray_res,
            "d_reduction": red,
            "e_memory": mem,
            "e_stats_bytes_constant": same,
            "total_seconds": total,
        },
    )


if __name__ == "__main__":
    main()
