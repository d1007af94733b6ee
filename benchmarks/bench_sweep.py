"""Benchmark: the sweep driver at hundreds of trials (issue "Sweeps at 1,000 trials").

Everything is a ratio or a per-trial cost measured in this run, on this machine:

(1) Overhead against the number of trials N. For each N, a sweep of N tiny merge trials (MLP on
    digits, 3 alphas, variant ``full``; endpoints trained once beforehand into a shared
    checkpoint store) runs in a fresh process, as a user's ``repair-dist sweep`` would, with
    local Ray and the local MLflow store. Measured inside that process:
    * Tune stage rate: N / wall time of the stage-2 ``Tuner.fit`` (trials only);
    * end-to-end rate: N / wall time of the whole ``run_sweep`` call (planning, Ray start,
      endpoint rows, Tune, draining the MLflow thread, compaction, figures, summary), and its
      ratio to the Tune stage rate (target >= 0.85). Same N trials on both sides;
    * backlog: seconds from the end of the Tune stage until the MLflow thread is drained
      (target <= 5 s);
    * driver CPU per trial: CPU seconds of the driver process (every thread: Tune's
      controller, the MLflow thread, compaction, figures) over the whole call, plus the
      CPU of the child processes it ran and waited for (the in-run compactions), / N
      (target <= 0.05 s). Work in other processes (trials, Ray's daemons) is not in it,
      and nothing is subtracted;
    * driver memory: resident set when the Tune stage ends (after every compaction the
      publisher ran during it) and the peak (``VmHWM``, which includes the end-of-sweep
      compaction and figures; not ``ru_maxrss``, which Linux carries over from the bench's
      own process through fork and exec), and their growth per added trial between
      consecutive N (target: flat); and within one run, the RSS after each in-run
      compaction against the units published so far (separate runs differ by more than
      the slope: Tune's start, batch sizes, concurrency).
(2) A no-op rerun of the largest sweep: wall time of ``repair-dist sweep SCRIPT`` in a fresh
    process, from exec to exit (target <= 3 s), and whether Ray was started (it should not).
(3) ``repair-dist results`` over a sweep of 10,000 trials (``--results-trials``): wall time of
    the command in a fresh process, on one file per trial as a running sweep leaves them and
    after the compaction a finished sweep gets (target <= 2 s), and the compaction's time.

Usage: python benchmarks/bench_sweep.py [--quick] [--json PATH] [--keep DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import fmt, machine_info, print_machine, print_table, write_json  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "bench-sweep"

#: The sweep script every measurement runs (fresh process each time): N trials from
#: ``BENCH_SEEDS`` seeds (all pairs) x ``BENCH_WIDTHS`` widths x 2 methods.
SCRIPT = """
import itertools, os
from repair_dist.sweep.config import ArchGrid, Sweep


def build_sweep(smoke: bool = False) -> Sweep:
    seeds = int(os.environ["BENCH_SEEDS"])
    widths = tuple(int(w) for w in os.environ["BENCH_WIDTHS"].split(","))
    return Sweep(
        name="{name}",
        dataset="digits",
        archs=(ArchGrid("mlp", widths=widths, depths=(3,)),),
        seeds=tuple(range(seeds)),
        pairs=tuple(itertools.combinations(range(seeds), 2)),
        methods=("activation", "weight"),
        variants=("full",),
        alphas=3,
        epochs=1,
        data_limit=600,
    )
"""

#: Runs one sweep in a fresh process and prints the driver's own measurements as JSON.
CHILD = """
import json, resource, sys, time
started = time.monotonic()
cpu0 = time.process_time()
import repair_dist.cli  # first, as in `repair-dist sweep` and every sweep script (.allocator)
import importlib.util
spec = importlib.util.spec_from_file_location("bench_script", {script!r})
module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
from repair_dist.sweep import publish, runner
marks = {{}}
fit, drain = runner._fit, publish.TrialPublisher.drain
def rss_kb():
    status = open("/proc/self/status").read().split("VmRSS:")[1]
    return int(status.split()[0])
def timed_fit(*a, **k):
    t = time.monotonic()
    try:
        return fit(*a, **k)
    finally:
        marks.setdefault("fits", []).append((a[1], t, time.monotonic(), rss_kb()))
def timed_drain(self):
    drain(self)
    marks["drained"] = time.monotonic()
published, compact, publish_one = [0], publish.TrialPublisher._compact, publish.TrialPublisher.publish
def counted_publish(self, spec):
    published[0] += 1
    return publish_one(self, spec)
def compact_marked(self, sweep):
    compact(self, sweep)
    marks.setdefault("compactions", []).append((published[0], rss_kb()))
runner._fit, publish.TrialPublisher.drain = timed_fit, timed_drain
publish.TrialPublisher.publish, publish.TrialPublisher._compact = counted_publish, compact_marked
sweep = module.build_sweep()
def children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
t0, c0, k0 = time.monotonic(), time.process_time(), children_cpu()
out = runner.run_sweep(sweep, root={root!r}, store={store!r})
t1, c1, k1 = time.monotonic(), time.process_time(), children_cpu()
import ray
print("BENCH " + json.dumps({{
    "trials_run": out.trials_run, "endpoints_trained": out.endpoints_trained,
    "run_s": t1 - t0, "cpu_s": c1 - c0, "children_cpu_s": k1 - k0, "process_cpu_s": c1 - cpu0,
    "fits": marks.get("fits", []), "drained": marks.get("drained"), "end": t1,
    "compactions": marks.get("compactions", []),
    "maxrss_kb": int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]),
    "ray_started": ray.is_initialized(), "mlflow_problems": len(out.mlflow_problems),
}}))
"""


def sweep_env(seeds: int, widths: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": REPO,
        "BENCH_SEEDS": str(seeds),
        "BENCH_WIDTHS": widths,
        "OMP_NUM_THREADS": "1",
    }


def n_trials(seeds: int, widths: str) -> int:
    return len(list(itertools.combinations(range(seeds), 2))) * len(widths.split(",")) * 2


def run_child(script: str, root: str, store: str, env: dict[str, str]) -> dict[str, Any]:
    code = CHILD.format(script=script, root=root, store=store)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"bench child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("BENCH ") :])


def overhead_point(script: str, scratch: str, store: str, seeds: int, widths: str) -> dict:
    """One fresh sweep of N trials over stored endpoints: the driver's costs (part 1)."""
    root = tempfile.mkdtemp(dir=scratch, prefix="n")
    m = run_child(script, root, store, sweep_env(seeds, widths))
    n = m["trials_run"]
    (name, start, end, rss_tune_end) = next(f for f in m["fits"] if f[0].endswith("-trials"))
    tune_s = end - start
    return {
        "n": n,
        "tune_s": tune_s,
        "run_s": m["run_s"],
        "tune_rate_per_min": 60 * n / tune_s,
        "e2e_rate_per_min": 60 * n / m["run_s"],
        "e2e_over_tune": tune_s / m["run_s"],
        "backlog_s": (m["drained"] - end) if m["drained"] else 0.0,
        "driver_cpu_per_trial": (m["cpu_s"] + m["children_cpu_s"]) / n,
        "compaction_children_cpu_s": m["children_cpu_s"],
        "rss_after_compactions": m["compactions"],
        "maxrss_mb": m["maxrss_kb"] / 1024,
        "rss_tune_end_mb": rss_tune_end / 1024,
        "mlflow_problems": m["mlflow_problems"],
        "root": root,
    }


def _slope(marks: list) -> float:
    """KB of driver RSS per published unit, first mark to last: [(units, rss_kb), ...]."""
    (u0, k0), (u1, k1) = marks[0], marks[-1]
    return (k1 - k0) / (u1 - u0)


def noop_rerun(script: str, root: str, store: str, env: dict[str, str]) -> dict[str, Any]:
    """Part 2: ``repair-dist sweep SCRIPT`` on a finished sweep, exec to exit."""
    probe = os.path.join(root, "ray-probe")
    code = textwrap.dedent(
        f"""
        import atexit, sys
        from repair_dist.cli import main
        def probe():
            ray = sys.modules.get("ray")
            started = bool(ray is not None and ray.is_initialized())
            open({probe!r}, "w").write(str(started))
        atexit.register(probe)
        sys.argv = ["repair-dist", "sweep", {script!r}, "--root", {root!r}, "--store", {store!r}]
        raise SystemExit(main())
        """
    )
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"no-op rerun failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return {
        "wall_s": wall,
        "ray_started": open(probe).read() == "True",
        "said": [ln for ln in proc.stdout.splitlines() if "trials run" in ln],
    }


def write_trial_files(root: str, n: int) -> float:
    """``n`` trials' ``trials`` rows (3 variants each), one file per trial, through the real
    writer: what a running sweep of ``n`` trials leaves behind. Returns the seconds taken."""
    import pandas as pd

    from repair_dist.sweep.results import write_rows

    start = time.monotonic()
    for i in range(n):
        key = f"{i:016x}"
        rows = [
            {
                "trial_key": key,
                "endpoint_a": f"a{i % 97:015x}",
                "endpoint_b": f"b{i % 89:015x}",
                "model": "mlp",
                "width": float(16 * (1 + i % 4)),
                "depth": 3,
                "norm": "none",
                "dataset": "digits",
                "method": ("activation", "weight")[i % 2],
                "variant": variant,
                **{c: 0.5 for c in ("acc_a", "acc_b", "loss_a", "loss_b", "acc_mid", "loss_mid")},
                "barrier_acc_mid": 0.1 * j,
                "barrier_loss_mid": 0.2 * j,
                "barrier_loss_max": 0.2 * j,
                "barrier_acc_max": 0.1 * j,
                "reduction_vs_aligned": 0.5,
                "reduction_loss_vs_aligned": 0.5,
                "seconds": 0.2,
                "seed_a": i % 10,
                "seed_b": 10 + i % 10,
            }
            for j, variant in enumerate(("naive", "aligned", "full"))
        ]
        write_rows(root, "trials", NAME, key, pd.DataFrame(rows))
    return time.monotonic() - start


def results_wall(root: str) -> float:
    start = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "repair_dist.cli", "results", NAME, "--root", root],
        env={**os.environ, "PYTHONPATH": REPO},
        capture_output=True,
        check=True,
    )
    return time.monotonic() - start


def results_part(scratch: str, n: int) -> dict[str, Any]:
    """Part 3: ``repair-dist results`` over ``n`` trial files, then over the compacted table."""
    from repair_dist.sweep.compaction import compact_sweep

    root = os.path.join(scratch, "results-10k")
    write_s = write_trial_files(root, n)
    files_s = min(results_wall(root) for _ in range(2))
    start = time.monotonic()
    compact_sweep(root, NAME)
    compact_s = time.monotonic() - start
    compacted_s = min(results_wall(root) for _ in range(3))
    return {
        "trials": n,
        "write_s": write_s,
        "results_files_s": files_s,
        "compact_s": compact_s,
        "results_compacted_s": compacted_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer and smaller sweeps")
    parser.add_argument("--results-trials", type=int, default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--keep", default=None, help="keep the scratch results in this dir")
    args = parser.parse_args()

    info = machine_info()
    print("bench_sweep: the sweep driver at hundreds of trials (ratios measured in this run)")
    print_machine(info)
    # (seeds, widths) per point: N = C(seeds, 2) x widths x 2 methods
    points = (
        [(6, "16"), (10, "16,24")]
        if args.quick
        else [
            (6, "16"),
            (10, "16,24,32"),
            (15, "16,20,24"),
            (15, "16,20,24,28,32,36"),
            (21, "16,20,24,28,32,36"),
        ]
    )
    n_results = args.results_trials or (2000 if args.quick else 10000)
    scratch = args.keep or tempfile.mkdtemp(prefix="bench-sweep-")
    os.makedirs(scratch, exist_ok=True)
    script = os.path.join(scratch, "bench_sweep_script.py")
    with open(script, "w") as f:
        f.write(SCRIPT.format(name=NAME))
    store = os.path.join(scratch, "checkpoints")
    try:
        # Endpoints once, for every point (the largest grid covers the others): stage 1 is
        # not what is measured here.
        seeds, widths = max(points, key=lambda p: n_trials(*p))
        widths_all = ",".join(sorted({w for _, ws in points for w in ws.split(",")}, key=int))
        warm = run_child(script, os.path.join(scratch, "warm"), store, sweep_env(seeds, widths_all))
        print(f"\nendpoints trained beforehand: {warm['endpoints_trained']} (not measured)")

        rows = [overhead_point(script, scratch, store, s, w) for s, w in points]
        print_table(
            "(1) driver overhead against N (fresh process per N, local Ray + MLflow sqlite)",
            [
                (
                    r["n"],
                    fmt(r["tune_rate_per_min"]),
                    fmt(r["e2e_rate_per_min"]),
                    f"{r['e2e_over_tune']:.2f}",
                    f"{r['backlog_s']:.2f}",
                    f"{r['driver_cpu_per_trial']:.3f}",
                    f"{r['rss_tune_end_mb']:.0f}",
                    f"{r['maxrss_mb']:.0f}",
                )
                for r in rows
            ],
            [
                "N trials",
                "Tune stage /min",
                "end-to-end /min",
                "e2e/Tune (>=0.85)",
                "backlog s (<=5)",
                "driver CPU s/trial (<=0.05)",
                "driver RSS after Tune MB",
                "driver peak RSS MB",
            ],
        )
        print("driver memory per added trial (after the Tune stage / at the peak):")
        for small, large in itertools.pairwise(rows):
            span = large["n"] - small["n"]
            after = 1024 * (large["rss_tune_end_mb"] - small["rss_tune_end_mb"]) / span
            peak = 1024 * (large["maxrss_mb"] - small["maxrss_mb"]) / span
            print(f"  N={small['n']} -> {large['n']}: {after:+.1f} KB / {peak:+.1f} KB")
        print("driver RSS within one run, after each in-run compaction (units published: MB):")
        for r in rows:
            marks = r["rss_after_compactions"]
            if len(marks) >= 2:
                seq = ", ".join(f"{u}: {k / 1024:.1f}" for u, k in marks)
                slopes = [f"{_slope(marks):+.1f} KB per trial from the first"]
                if len(marks) >= 3:  # the first interval: Tune's and MLflow's caches filling
                    slopes.append(f"{_slope(marks[1:]):+.1f} from the second")
                print(f"  N={r['n']}: {seq}; {', '.join(slopes)}")
        big = rows[-1]
        noop = noop_rerun(script, big["root"], store, sweep_env(*points[-1]))
        print(
            f"\n(2) no-op rerun of the N={big['n']} sweep (`repair-dist sweep`, exec to exit): "
            f"{noop['wall_s']:.2f} s (target <= 3), Ray started: {noop['ray_started']}"
        )
        res = results_part(scratch, n_results)
        print_table(
            f"(3) `repair-dist results` over {res['trials']} trials (fresh process, best of runs)",
            [
                ("one file per trial (a running sweep)", f"{res['results_files_s']:.2f}"),
                ("after compaction (a finished sweep)", f"{res['results_compacted_s']:.2f}"),
                ("the compaction itself", f"{res['compact_s']:.2f}"),
            ],
            ["table state", "seconds"],
        )
        write_json(
            args.json,
            {"machine": info, "overhead": rows, "noop_rerun": noop, "results": res},
        )
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
