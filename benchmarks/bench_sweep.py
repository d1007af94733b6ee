"""Benchmark: orchestration overhead of the Ray Tune sweep runner (issue "Ray Tune sweep runner").

Overhead = (Tune + MLflow + Parquet + Ray) / trial compute, for the quickstart's MLP trials
(DESIGN.md §7, target <= 10%), as ratios of timings taken in this run:

(i)  the compute of each merge trial called directly (``repair_dist.pipeline.merge_trial``) on
     endpoints trained here with ``train_model`` (mlp depth 8 width 64, digits, seeds 0/1);
(ii) the same trials through ``run_sweep``: a first run, in its own process as a user's would
     be, trains the endpoints (stage 1) and runs the trials; then the trials' results
     (trials/curves/layers tables, plots, MLflow store, Tune state) are deleted and a second run
     in this process - Ray start + stage 2 only, endpoints reused - is timed. Overhead = that
     wall time - the sum of the trials' in-trial compute (the ``seconds`` column of the
     ``trials`` table; (i) is the cross-check).

Breakdown: Ray start, sweep validation, the stage-2 Tune fit (trial compute, per-trial IO,
Tune scheduling, MLflow logging from the driver's callback), the final MLflow sync; and,
measured separately so a user can extrapolate to hundreds of trials: Tune's fixed and
per-trial cost (no-op trials), the trainable's import in a fresh worker process, a trial's
checkpoint/data loading, Parquet writes and plot, and ``Tracker.log_trial`` for one trial.

Trials run one at a time (``max_concurrent_trials=1``) so that wall time - compute is the
overhead; the quickstart itself lets Tune run trials concurrently on the free CPUs.

Usage: python benchmarks/bench_sweep.py [--quick] [--json PATH] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    fmt,
    machine_info,
    print_machine,
    print_table,
    timed,
    write_json,
)

import repair_dist as rd  # noqa: E402
from repair_dist.sweep import results, runner  # noqa: E402
from repair_dist.sweep.config import ArchGrid, Sweep  # noqa: E402
from repair_dist.sweep.runner import run_sweep  # noqa: E402
from repair_dist.sweep.tracking import Tracker, default_tracking_uri  # noqa: E402
from repair_dist.sweep.trainables import merge_for_spec  # noqa: E402

NAME = "bench-sweep"


def make_sweep(epochs: int, alphas: int) -> Sweep:
    return Sweep(
        name=NAME,
        dataset="digits",
        archs=(ArchGrid("mlp", widths=(64,), depths=(8,)),),
        seeds=(0, 1),
        epochs=epochs,
        alphas=alphas,
        max_concurrent_trials=1,
    )


# ------------------------------------------------------------------------------------------
# (i) direct compute


def train_endpoints(sweep: Sweep, train) -> dict[int, torch.nn.Module]:
    nets = {}
    for ep in sweep.endpoints():
        torch.manual_seed(ep.seed)  # as the runner does: init is part of the seed's identity
        net = rd.build_model(ep.model, **ep.model_kwargs())
        nets[ep.seed] = rd.train_model(
            net, train, epochs=ep.epochs, seed=ep.seed, batch_size=ep.batch_size, lr=ep.lr
        )
    return nets


def run_direct(spec, nets, train, test):
    return merge_for_spec(spec, nets[spec.a.seed], nets[spec.b.seed], train, test)


# ------------------------------------------------------------------------------------------
# instrumentation of the runner (wrappers around its own functions; nothing else changes)


class Timers:
    """Wraps runner functions to time them while ``run_sweep`` runs."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = defaultdict(list)
        self._saved: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, attr: str, label: str | None = None, by_arg: int | None = None):
        original = getattr(owner, attr)
        times = self.times

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                key = label or attr
                if by_arg is not None:
                    key = f"{key}:{args[by_arg]}"
                times[key].append(time.perf_counter() - start)

        self._saved.append((owner, attr, original))
        setattr(owner, attr, wrapper)

    def __enter__(self) -> Timers:
        self.wrap(runner, "_fit", "tune_fit", by_arg=1)  # _fit(trainable, name, ...)
        self.wrap(runner, "validate_sweep")
        self.wrap(runner, "_ray_up")
        self.wrap(runner, "sync_from_parquet")
        self.wrap(runner, "log_trial_to_mlflow")  # called by the MLflow callback per trial
        self.wrap(runner, "finished_trials")
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, attr, original in reversed(self._saved):
            setattr(owner, attr, original)

    def total(self, key: str) -> float:
        return sum(self.times.get(key, []))


def clear_stage2(root: str) -> None:
    """Remove what stage 2 wrote, so a rerun runs every trial again (endpoints are kept)."""
    for sub in ("trials", "curves", "layers", "plots", "mlartifacts"):
        shutil.rmtree(os.path.join(root, sub), ignore_errors=True)
    shutil.rmtree(os.path.join(root, "tune", f"{NAME}-trials"), ignore_errors=True)
    for f in ("mlflow.db", "mlflow.db-journal", "mlflow.db-wal", "mlflow.db-shm"):
        path = os.path.join(root, f)
        if os.path.exists(path):
            os.remove(path)


def sizes(quick: bool) -> tuple[int, int]:
    """(epochs, alphas)."""
    return (3, 5) if quick else (10, 11)


def run1_child(root: str, quick: bool) -> dict[str, Any]:
    """Run 1 in its own process, as a user would: trains the endpoints, runs every trial."""
    torch.set_num_threads(1)
    with Timers() as t:
        wall, out = timed(lambda: run_sweep(make_sweep(*sizes(quick)), root=root))
    return {
        "wall_s": wall,
        "endpoints_trained": out.endpoints_trained,
        "trials_run": out.trials_run,
        "mlflow_problems": out.mlflow_problems,
        "timers": {k: sum(v) for k, v in t.times.items()},
    }


def run1_subprocess(root: str, quick: bool) -> dict[str, Any]:
    """Run 1 in a child process. The rerun must not share this process's MLflow store cache:
    deleting ``mlflow.db`` under a live SQLAlchemy engine leaves it writing to a deleted file."""
    cmd = [sys.executable, os.path.abspath(__file__), "--_run1", root]
    cmd += ["--quick"] if quick else []
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------
# separately measured components


def _noop(config: dict) -> None:
    from ray import tune

    tune.report({"done": 1})


def tune_noop_fit(k: int, storage: str) -> float:
    """Wall time of a Tuner with ``k`` no-op trials, configured like the runner's stages."""
    from ray import tune

    tuner = tune.Tuner(
        tune.with_resources(_noop, {"cpu": 1, "gpu": 0}),
        param_space={"i": tune.grid_search(list(range(k)))},
        tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=1),
        run_config=tune.RunConfig(name=f"noop-{k}", storage_path=storage, verbose=0),
    )
    return timed(tuner.fit)[0]


def trainable_import_s() -> float:
    """Importing the stage-2 trainable in a fresh process (what a new Tune actor pays)."""
    code = (
        "import time; t = time.perf_counter(); import repair_dist.sweep.trainables, "
        "repair_dist.sweep.plots; print(time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def in_trial_io(spec, outcome, root: str, scratch: str) -> dict[str, float]:
    """What a stage-2 trial does besides ``merge_trial``: load, write Parquet, plot."""
    from repair_dist.data import load_dataset
    from repair_dist.store import CheckpointStore
    from repair_dist.sweep.plots import plot_trial_curves
    from repair_dist.sweep.trainables import trial_tables

    store = CheckpointStore(os.path.join(root, "checkpoints"))
    out = {}
    out["load_checkpoints_s"], _ = timed(
        lambda: (store.load(spec.a.key()), store.load(spec.b.key()))
    )
    out["load_data_s"], _ = timed(lambda: load_dataset(spec.a.dataset))

    def write():
        tables = trial_tables(spec, outcome)
        for t in ("curves", "layers", "trials"):
            results.write_rows(scratch, t, spec.sweep, spec.key(), tables[t], extra="drop")
        return tables

    out["parquet_write_s"], tables = timed(write)
    path = os.path.join(scratch, "plots", f"{spec.key()}.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    out["plot_first_s"], _ = timed(lambda: plot_trial_curves(tables["curves"], path, "bench"))
    out["plot_s"], _ = timed(lambda: plot_trial_curves(tables["curves"], path, "bench"))
    return out


def mlflow_costs(specs, root: str) -> dict[str, float]:
    """``log_trial`` per trial, into the run's own (already migrated) sqlite store.

    A separate experiment (``<sweep>-logtest``), so every call creates a new child run, as
    the runner's callback does for a new trial; the first call also makes the parent run.
    """
    tracker = Tracker(default_tracking_uri(root), f"{NAME}-logtest")
    out = {}
    for i, spec in enumerate(specs):
        out[f"log_trial_{i}_s"], _ = timed(
            lambda s=spec: runner.log_trial_to_mlflow(tracker, root, s)
        )
    return out


# ------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer epochs and alphas")
    ap.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the temporary results root")
    ap.add_argument("--_run1", metavar="ROOT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._run1:
        print(json.dumps(run1_child(args._run1, args.quick)))
        return

    torch.set_num_threads(1)  # as in a trial with cpus_per_worker=1
    epochs, alphas = sizes(args.quick)
    noop_k = (1, 9) if args.quick else (1, 17)
    started = time.perf_counter()
    info = machine_info()
    sweep = make_sweep(epochs, alphas)
    specs = sweep.trials()
    root = tempfile.mkdtemp(prefix="bench-sweep-")
    scratch = tempfile.mkdtemp(prefix="bench-sweep-scratch-")
    log = lambda msg: print(f"[bench_sweep] {msg}", file=sys.stderr, flush=True)  # noqa: E731

    # ---- (i) direct compute
    log("(i) training endpoints and running the trials directly")
    train, test = rd.load_dataset("digits")
    train_s, nets = timed(lambda: train_endpoints(sweep, train))
    if not args.quick:
        run_direct(specs[0], nets, train, test)  # warm-up: lazy imports and allocations
    direct = {}
    outcomes = {}
    for spec in specs:
        direct[spec.key()], outcomes[spec.key()] = timed(
            lambda s=spec: run_direct(s, nets, train, test)
        )

    # ---- (ii) through the runner
    from repair_dist.distributed import init_local_ray

    log("(ii) run 1 (separate process): stage 1 (train endpoints) + stage 2")
    run1 = run1_subprocess(root, args.quick)
    assert run1["endpoints_trained"] == len(sweep.endpoints()), run1
    assert run1["trials_run"] == len(specs) and not run1["mlflow_problems"], run1
    clear_stage2(root)
    log("(ii) run 2: Ray start + stage 2 only (endpoints reused)")
    ray_start_s, _ = timed(init_local_ray)  # what run_sweep's own start-up would cost
    with Timers() as p2:
        run2_s, out2 = timed(lambda: run_sweep(sweep, root=root))
    assert out2.endpoints_reused == len(sweep.endpoints()), out2
    assert out2.trials_run == len(specs), out2
    assert not out2.mlflow_problems, out2.mlflow_problems
    table = results.read_table(root, "trials", NAME)
    in_trial = table.groupby("trial_key")["seconds"].first().to_dict()
    assert set(in_trial) == {s.key() for s in specs}

    # ---- separately measured components
    log("components: Tune no-op trials, worker import, trial IO, MLflow")
    tune_store = os.path.join(scratch, "tune")
    noop = {k: tune_noop_fit(k, tune_store) for k in noop_k}
    import ray

    ray.shutdown()
    import_s = trainable_import_s()
    io = in_trial_io(specs[0], outcomes[specs[0].key()], root, scratch)
    mlf = mlflow_costs(specs, root)

    # ---- numbers
    compute = sum(in_trial.values())
    direct_sum = sum(direct.values())
    overhead = ray_start_s + run2_s - compute
    fit2 = p2.total(f"tune_fit:{NAME}-trials")
    validate_s = p2.total("validate_sweep")
    mlflow_cb_s = p2.total("log_trial_to_mlflow")
    sync_s = p2.total("sync_from_parquet")
    rest_s = run2_s - fit2 - validate_s - sync_s - p2.total("_ray_up")
    tune_per_trial = (noop[noop_k[1]] - noop[noop_k[0]]) / (noop_k[1] - noop_k[0])
    tune_fixed = noop[noop_k[0]] - noop_k[0] * tune_per_trial
    log_steady = mlf[f"log_trial_{len(specs) - 1}_s"]
    # the callback's first call creates the sqlite store (schema migrations) and the parent run
    first_log = p2.times["log_trial_to_mlflow"][0]
    mlflow_fresh_s = first_log - mlf["log_trial_0_s"]
    io_per_trial = io["load_checkpoints_s"] + io["load_data_s"] + io["parquet_write_s"]
    io_per_trial += io["plot_s"]
    per_trial = tune_per_trial + io_per_trial + log_steady
    mean_compute = compute / len(specs)
    fixed = overhead - len(specs) * per_trial
    n_trials = len(specs)

    def extrapolate(n: int) -> float:
        return (fixed + n * per_trial) / (n * mean_compute)

    # ---- tables
    print("\nbench_sweep: orchestration overhead of the sweep runner (ratios measured in this run)")
    print_machine(info)
    print(
        f"mode: {'quick' if args.quick else 'default'}; sweep {NAME!r}: mlp d8 w64 on digits, "
        f"seeds 0/1, {epochs} epochs, methods {', '.join(sweep.methods)}, "
        f"{len(sweep.alpha_grid())} alphas, variants {', '.join(sweep.variants)}; "
        f"{n_trials} stage-2 trials, run one at a time"
    )
    rows = []
    for spec in specs:
        k = spec.key()
        rows.append(
            [spec.run_name(), fmt(direct[k]), fmt(in_trial[k]), f"{in_trial[k] / direct[k]:.2f}"]
        )
    rows.append(["sum", fmt(direct_sum), fmt(compute), f"{compute / direct_sum:.2f}"])
    print_table(
        "(i) trial compute: merge_trial called directly vs inside the Tune trial (Parquet "
        "'seconds')",
        rows,
        ["trial", "direct s", "in Tune s", "ratio"],
    )
    print(f"  endpoints trained directly in {train_s:.1f} s (2 nets, {epochs} epochs)")

    target = "yes" if overhead / compute <= 0.10 else "NO"
    print_table(
        "(ii) stage 2 through run_sweep (endpoints reused): overhead / compute",
        [
            ["Ray start (init_local_ray)", fmt(ray_start_s), f"{ray_start_s / compute:.2f}"],
            ["run_sweep wall (stage 2 only)", fmt(run2_s), f"{run2_s / compute:.2f}"],
            ["  sweep validation (x2)", fmt(validate_s), f"{validate_s / compute:.2f}"],
            ["  stage-2 Tune fit", fmt(fit2), f"{fit2 / compute:.2f}"],
            ["    trial compute (sum)", fmt(compute), "1.00"],
            [
                "    MLflow log from callback (sum)",
                fmt(mlflow_cb_s),
                f"{mlflow_cb_s / compute:.2f}",
            ],
            [
                "    rest: Tune, actor start, trial IO",
                fmt(fit2 - compute - mlflow_cb_s),
                f"{(fit2 - compute - mlflow_cb_s) / compute:.2f}",
            ],
            ["  final MLflow sync", fmt(sync_s), f"{sync_s / compute:.2f}"],
            ["  rest of run_sweep", fmt(rest_s), f"{rest_s / compute:.2f}"],
            ["OVERHEAD = Ray start + wall - compute", fmt(overhead), f"{overhead / compute:.2f}"],
            [
                "overhead without Ray start",
                fmt(overhead - ray_start_s),
                f"{(overhead - ray_start_s) / compute:.2f}",
            ],
        ],
        ["part", "seconds", "/ compute"],
    )
    print(
        f"  overhead / compute = {100 * overhead / compute:.0f}% (target <= 10%: {target}); "
        f"measured per trial: {overhead / n_trials:.1f} s of overhead per {mean_compute:.1f} s "
        f"trial.\n  Run 1, a separate process (stage 1 training "
        f"{run1['timers'].get(f'tune_fit:{NAME}-endpoints', float('nan')):.1f} s + stage 2, "
        f"Ray start included): {run1['wall_s']:.1f} s."
    )

    print_table(
        "components measured separately (for extrapolation)",
        [
            ["Tune fit, fixed cost (no-op trials, intercept)", fmt(tune_fixed), "fixed"],
            ["Tune per trial (no-op trials, slope)", fmt(tune_per_trial), "per trial"],
            ["import of the trainable in a fresh worker", fmt(import_s), "per actor"],
            ["load 2 checkpoints", fmt(io["load_checkpoints_s"]), "per trial"],
            ["load dataset (digits)", fmt(io["load_data_s"]), "per trial"],
            ["Parquet: build + write 3 tables", fmt(io["parquet_write_s"]), "per trial"],
            ["plot PNG", fmt(io["plot_s"]), "per trial"],
            [
                "MLflow fresh sqlite store (1st callback log - a log_trial)",
                fmt(mlflow_fresh_s),
                "fixed",
            ],
            *[
                [f"MLflow Tracker.log_trial, trial {i + 1}", fmt(mlf[f"log_trial_{i}_s"]), ""]
                for i in range(n_trials)
            ],
            ["=> per-trial overhead (Tune + IO + plot + MLflow)", fmt(per_trial), "per trial"],
            ["=> fixed overhead (measured overhead - n x per trial)", fmt(fixed), "fixed"],
        ],
        ["component", "seconds", "kind"],
    )
    known_fixed = ray_start_s + import_s + tune_fixed + mlflow_fresh_s
    print(
        f"  fixed overhead accounted for by Ray start + worker import + Tune fixed + MLflow "
        f"store: {known_fixed:.1f} of {fixed:.1f} s.\n"
        f"  per-trial overhead / mean trial compute = {per_trial / mean_compute:.3f} "
        f"({100 * per_trial / mean_compute:.1f}%: the limit for many trials).\n"
        f"  extrapolated overhead / compute for N trials like these, run one at a time: "
        + ", ".join(f"N={n}: {100 * extrapolate(n):.0f}%" for n in (2, 10, 100, 500))
    )
    total = time.perf_counter() - started
    print(f"\ntotal benchmark time {total:.0f} s")
    write_json(
        args.json,
        {
            "benchmark": "bench_sweep",
            "mode": "quick" if args.quick else "default",
            "machine": info,
            "sweep": {"name": NAME, "epochs": epochs, "alphas": len(sweep.alpha_grid())},
            "trials": {
                s.key(): {
                    "name": s.run_name(),
                    "direct_s": direct[s.key()],
                    "in_tune_s": in_trial[s.key()],
                }
                for s in specs
            },
            "compute_s": compute,
            "direct_compute_s": direct_sum,
            "ray_start_s": ray_start_s,
            "run1": run1,
            "run2_s": run2_s,
            "overhead_s": overhead,
            "ratio_overhead_over_compute": overhead / compute,
            "ratio_overhead_wo_ray_start": (overhead - ray_start_s) / compute,
            "breakdown_run2": {k: sum(v) for k, v in p2.times.items()},
            "tune_noop_fit_s": noop,
            "tune_fixed_s": tune_fixed,
            "tune_per_trial_s": tune_per_trial,
            "trainable_import_s": import_s,
            "in_trial_io": io,
            "mlflow": {**mlf, "fresh_store_s": mlflow_fresh_s},
            "per_trial_overhead_s": per_trial,
            "fixed_overhead_s": fixed,
            "ratio_per_trial_overhead_over_compute": per_trial / mean_compute,
            "extrapolated_ratio": {n: extrapolate(n) for n in (2, 10, 100, 500)},
            "total_seconds": total,
        },
    )
    if args.keep:
        print(f"results root kept: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
