"""Sweeps end to end on real local Ray, a real sqlite MLflow store and real Parquet files."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from repair_dist.cli import main as cli_main
from repair_dist.location import Location
from repair_dist.sweep import results
from repair_dist.sweep import tracking as tracking_mod
from repair_dist.sweep.config import ArchGrid, Sweep
from repair_dist.sweep.figures import unit_figures
from repair_dist.sweep.runner import run_sweep
from repair_dist.sweep.tracking import default_tracking_uri, sync_from_parquet

pytestmark = pytest.mark.timeout(300)
REPO = Path(__file__).resolve().parents[1]


def tiny_sweep(name: str = "tiny", seeds=(0, 1), methods=("activation", "weight")) -> Sweep:
    return Sweep(
        name=name,
        dataset="digits",
        archs=(ArchGrid("mlp", widths=(16,), depths=(3,)),),
        seeds=seeds,
        epochs=2,
        methods=methods,
        variants=("full", "closed_form"),
        alphas=3,
    )


def child_runs(tracking_uri: str, sweep: str) -> list:
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(sweep)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if "trial_key" in r.data.tags]


def assert_each_trial_once(root: str, sweep: Sweep, tracking_uri: str | None = None) -> None:
    trials = results.read_table(root, "trials", sweep.name)
    expected_keys = {t.key() for t in sweep.trials()}
    assert set(trials["trial_key"]) == expected_keys
    per_trial = 2 + len(sweep.variants)  # naive, aligned, variants
    assert len(trials) == len(expected_keys) * per_trial
    assert not trials.duplicated(["trial_key", "variant"]).any()
    curves = results.read_table(root, "curves", sweep.name)
    assert not curves.duplicated(["trial_key", "variant", "alpha", "split"]).any()
    assert len(curves) == len(expected_keys) * per_trial * len(sweep.alpha_grid()) * 2
    if tracking_uri:
        keys = [r.data.tags["trial_key"] for r in child_runs(tracking_uri, sweep.name)]
        assert sorted(keys) == sorted(expected_keys)


def test_a_small_sweep_lands_every_barrier_once_in_parquet_mlflow_and_plots(ray_ready, tmp_path):
    sweep = tiny_sweep()
    out = run_sweep(sweep, root=tmp_path)
    root, uri = str(tmp_path), default_tracking_uri(tmp_path)
    assert (out.endpoints_trained, out.trials_run) == (2, 2)
    assert_each_trial_once(root, sweep, uri)
    endpoints = results.read_table(root, "endpoints", sweep.name)
    assert sorted(endpoints["seed"]) == [0, 1] and (endpoints["test_acc"] > 0.3).all()
    layers = results.read_table(root, "layers", sweep.name)
    assert {"naive", "aligned", "full"} <= set(layers["variant"]) and (
        layers["std_ratio"] > 0
    ).all()
    figures = list((tmp_path / "figures" / f"sweep={sweep.name}").glob("*.png"))
    assert figures and all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in figures)
    assert not (tmp_path / "plots").exists()  # per-trial figures are drawn on demand
    drawn = unit_figures(root, sweep.name)
    assert sorted(Path(p).stem for p in drawn) == sorted(t.key() for t in sweep.trials())
    for key in (t.key() for t in sweep.trials()):
        png = tmp_path / "plots" / f"sweep={sweep.name}" / f"{key}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(sweep.name)
    parents = [r for r in client.search_runs([exp.experiment_id]) if "trial_key" not in r.data.tags]
    assert [p.info.status for p in parents] == ["FINISHED"]  # one parent run, closed
    run = child_runs(uri, sweep.name)[0]
    assert (
        "barrier_loss_mid.full" in run.data.metrics
        and "barrier_acc_mid.aligned" in run.data.metrics
    )
    assert {"model", "method", "seed_a"} <= set(run.data.params)

    again = run_sweep(sweep, root=tmp_path)  # nothing left to do: nothing redone, nothing doubled
    assert (again.endpoints_trained, again.trials_run, again.trials_reused) == (0, 0, 2)
    assert_each_trial_once(root, sweep, uri)

    # A fresh process rerunning the finished sweep starts no Ray, opens no MLflow and imports
    # no torch (it only plans, from the store and the tables).
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def rerun(which: Sweep = sweep) -> list[str]:
        code = (
            "import json, sys\n"
            "from repair_dist.sweep.config import Sweep\n"
            "from repair_dist.sweep.runner import run_sweep\n"
            f"sweep = Sweep.from_dict(json.loads({json.dumps(which.to_dict())!r}))\n"
            f"out = run_sweep(sweep, root={root!r})\n"
            "ray = sys.modules.get('ray')\n"
            "print(out.trials_run, out.trials_reused, bool(ray and ray.is_initialized()),"
            " 'mlflow' in sys.modules, 'torch' in sys.modules)\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout.split()

    assert rerun() == ["0", "2", "False", "False", "False"]
    # A replaced MLflow store no longer matches what the marker recorded: the runs come back.
    Path(uri[len("sqlite:///") :]).unlink()
    tracking_mod._forget_engine(uri)  # this process's pooled connection to the deleted file
    tracking_mod._READY_STORES.clear()
    assert rerun() == ["0", "2", "False", "True", "False"]
    assert_each_trial_once(root, sweep, uri)

    # Another sweep over the same stored endpoints, in a fresh process: its trial runs in a
    # Tune worker, and the driver (endpoint rows from the store's meta, Tune, MLflow, Parquet,
    # figures) never imports torch (seconds of CPU and hundreds of MB per sweep).
    other = dataclasses.replace(sweep, name="tiny-stored", methods=("activation",))
    assert rerun(other) == ["1", "0", "True", "True", "False"]
    assert_each_trial_once(root, other, uri)
    rows = results.read_table(root, "endpoints", other.name)
    assert sorted(rows["endpoint_key"]) == sorted(ep.key() for ep in sweep.endpoints())
    assert set(results.read_table(root, "filters", other.name)["endpoint_key"]) == set(
        rows["endpoint_key"]
    )


def test_mlflow_unreachable_still_writes_every_parquet_row_and_sync_backfills(ray_ready, tmp_path):
    sweep = tiny_sweep("offline", methods=("activation",))
    started = time.monotonic()
    out = run_sweep(sweep, root=tmp_path, tracking_uri="http://127.0.0.1:9")  # nothing listens
    assert out.mlflow_problems, "the runner should report that MLflow was unreachable"
    assert time.monotonic() - started < 200
    assert_each_trial_once(str(tmp_path), sweep)
    uri = default_tracking_uri(tmp_path)
    assert sync_from_parquet(tmp_path, uri, sweep.name) == 1
    assert sync_from_parquet(tmp_path, uri, sweep.name) == 0
    assert_each_trial_once(str(tmp_path), sweep, uri)


DRIVER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from test_sweep_e2e import tiny_sweep
    from repair_dist.sweep.runner import run_sweep
    from dataclasses import replace
    # one trial at a time: the kill lands after the first of 4, however fast trials are
    sweep = replace(tiny_sweep("resume", seeds=(0, 1, 2, 3)), max_concurrent_trials=1)
    run_sweep(sweep, root={root!r})
    """
)


def test_a_killed_driver_resumes_without_redoing_or_duplicating_work(ray_ready, tmp_path):
    sweep = tiny_sweep("resume", seeds=(0, 1, 2, 3))  # 4 trials
    root = str(tmp_path)
    trials_dir = tmp_path / "trials" / "sweep=resume"
    code = DRIVER.format(tests=str(Path(__file__).parent), root=root)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline and proc.poll() is None:
        if trials_dir.exists() and any(trials_dir.glob("*.parquet")):
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started, mid-sweep
    proc.wait(timeout=30)
    finished = results.read_table(root, "trials", "resume")
    n_finished = finished["trial_key"].nunique()
    assert 1 <= n_finished < 4, f"kill should land mid-sweep, found {n_finished} trials"

    out = run_sweep(sweep, root=root)
    assert out.endpoints_trained == 0 and out.trials_run == 4 - n_finished
    after = results.read_table(root, "trials", "resume")
    kept = after[after["trial_key"].isin(finished["trial_key"])]
    order = ["trial_key", "variant"]  # finished trials were not recomputed (their seconds too)
    pd.testing.assert_frame_equal(
        finished.sort_values(order).reset_index(drop=True),
        kept.sort_values(order).reset_index(drop=True),
    )
    assert len(list(trials_dir.glob("*.parquet"))) == 1  # compacted when the sweep ended
    assert_each_trial_once(root, sweep, default_tracking_uri(root))


def test_an_invalid_sweep_fails_before_anything_runs_with_one_message(tmp_path, capsys):
    script = tmp_path / "bad.py"
    script.write_text(
        "from repair_dist.sweep.config import ArchGrid, Sweep\n"
        "def build_sweep(smoke=False):\n"
        "    return Sweep(name='bad', dataset='digits', archs=(ArchGrid('resnet20', widths=(3.5,)),),\n"
        "                 seeds=(1, 1), methods=('telepathy',))\n"
    )
    code = cli_main(["sweep", str(script), "--root", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert code == 2
    assert "width" in err and "seed" in err and "telepathy" in err
    assert "Traceback" not in err
    assert not (tmp_path / "results").exists()


def test_cli_reports_a_missing_script_and_an_empty_results_root(tmp_path, capsys):
    assert cli_main(["sweep", str(tmp_path / "nope.py")]) == 2
    assert "not found" in capsys.readouterr().err
    assert cli_main(["results", "--root", str(tmp_path)]) == 2
    assert "no trials" in capsys.readouterr().err


REGISTER_SCRIPT = """
from repair_dist.sweep.config import ArchGrid, Sweep
from repair_dist.sweep.figures import unit_figures
def build_sweep(smoke=False):
    return Sweep(name="registered", dataset="digits", archs=(ArchGrid("mlp", widths=(16,), depths=(3,)),),
                 seeds=(0, 1), epochs=2, methods=("activation",), variants=("full",), alphas=3)
"""


def test_registered_weights_become_an_endpoint_that_is_not_retrained(ray_ready, tmp_path, capsys):
    import torch

    import repair_dist as rd
    from repair_dist.store import CheckpointStore

    script = tmp_path / "registered.py"
    script.write_text(REGISTER_SCRIPT)
    root = tmp_path / "results"
    sweep = _load_build(script)(smoke=False)
    ep = next(e for e in sweep.endpoints() if e.seed == 0)
    torch.manual_seed(0)
    net = rd.build_model(ep.model, **ep.model_kwargs())
    rd.train_model(net, rd.load_dataset("digits")[0], epochs=2, seed=0)
    torch.save(net.state_dict(), tmp_path / "mine.pt")  # e.g. a torchvision-format checkpoint

    bad = cli_main(
        [
            "register",
            str(tmp_path / "mine.pt"),
            "--sweep-script",
            str(script),
            "--model",
            "mlp",
            "--seed",
            "7",
            "--root",
            str(root),
        ]
    )
    assert bad == 2 and "0 endpoints" in capsys.readouterr().err
    code = cli_main(
        [
            "register",
            str(tmp_path / "mine.pt"),
            "--sweep-script",
            str(script),
            "--model",
            "mlp",
            "--seed",
            "0",
            "--root",
            str(root),
        ]
    )
    assert code == 0
    meta = CheckpointStore(root / "checkpoints").meta(ep.key())
    assert meta["registered_from"] == str(tmp_path / "mine.pt")

    out = run_sweep(sweep, root=root, mlflow=False)
    assert (out.endpoints_trained, out.endpoints_reused) == (1, 1)  # only seed 1 trained
    loaded, _ = CheckpointStore(root / "checkpoints").load(ep.key())
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def _load_build(path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("registered_sweep", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_sweep


def test_a_mixed_precision_sweep_runs_its_passes_on_a_bf16_worker(ray_ready, tmp_path):
    import dataclasses

    sweep = dataclasses.replace(tiny_sweep("amp", methods=("activation",)), amp=True)
    out = run_sweep(sweep, root=tmp_path, mlflow=False)
    assert out.trials_run == 1
    assert_each_trial_once(str(tmp_path), sweep)
    # The same trial in float32, in process, on the same stored endpoints: close, not equal.
    from repair_dist.store import CheckpointStore
    from repair_dist.sweep.trainables import run_merge_trial

    exact_spec = dataclasses.replace(sweep.trials()[0], amp=False)
    exact = run_merge_trial(
        exact_spec, CheckpointStore(tmp_path / "checkpoints"), str(tmp_path / "x")
    )
    order = ["variant", "alpha", "split"]
    mixed = results.read_table(tmp_path, "curves", "amp").sort_values(order)["loss"].to_numpy()
    plain = exact["curves"].sort_values(order)["loss"].to_numpy()
    assert 0 < abs(mixed - plain).max() < 0.1  # bf16 forwards ran in the trial's worker


def test_a_data_parallel_endpoint_trains_on_ray_train_workers(ray_ready, tmp_path):
    import dataclasses

    from repair_dist.store import CheckpointStore
    from repair_dist.sweep.trainables import train_endpoint

    sweep = dataclasses.replace(tiny_sweep("ddp"), train_workers=2, cpus_per_worker=0.5, epochs=3)
    ep = sweep.endpoints()[0]
    assert ep.train_workers == 2
    store = CheckpointStore(tmp_path / "checkpoints")
    row = train_endpoint(ep, store, cpus_per_worker=0.5, storage=Location.of(tmp_path / "tune"))
    assert row["test_acc"] > 0.3  # the DDP-trained net really learned
    assert store.meta(ep.key())["train_workers"] == 2
    assert len(list((tmp_path / "tune").glob("train-*"))) == 1  # one Ray Train run
    net, _ = store.load(ep.key())
    assert type(net).__name__ == "MLP"  # a plain net, no DDP wrapper left


def test_cli_train_and_merge_two_checkpoints_and_refuse_bad_ones(tmp_path, capsys):
    common = ["--model", "mlp", "--depth", "3", "--width", "16", "--epochs", "3"]
    for seed in ("0", "1"):
        assert cli_main(["train", *common, "--seed", seed, "--out", str(tmp_path / seed)]) == 0
    capsys.readouterr()
    out = tmp_path / "merged"
    code = cli_main(
        [
            "merge",
            str(tmp_path / "0"),
            str(tmp_path / "1"),
            "--variants",
            "full",
            "--alphas",
            "3",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    import pandas as pd

    table = pd.read_parquet(out / "barriers.parquet").set_index("variant")
    assert {"naive", "aligned", "full"} <= set(table.index)
    assert "barrier_loss_mid" in capsys.readouterr().out

    wider = tmp_path / "wide"
    assert (
        cli_main(
            [
                "train",
                "--model",
                "mlp",
                "--depth",
                "3",
                "--width",
                "8",
                "--epochs",
                "1",
                "--seed",
                "2",
                "--out",
                str(wider),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert cli_main(["merge", str(tmp_path / "0"), str(wider)]) == 2
    err = capsys.readouterr().err
    assert "wide" in err and "Traceback" not in err  # names the mismatching checkpoint
    (tmp_path / "1" / "weights.safetensors").write_bytes(b"garbage")
    assert cli_main(["merge", str(tmp_path / "0"), str(tmp_path / "1")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "1") in err and "Traceback" not in err


def test_a_sweep_after_sharded_passes_in_the_same_process_gets_the_cpus(ray_ready, tmp_path):
    """A notebook ran ``workers=2`` passes (a cached pool holding every CPU), then a sweep:
    the sweep releases the idle pool instead of waiting forever for its CPUs."""
    import repair_dist as rd
    from repair_dist.distributed import pool_of_size

    train, _ = rd.load_dataset("digits")
    net = rd.build_model("mlp", depth=2, width=8, in_shape=(1, 8, 8))
    held = pool_of_size(2)  # default workers: 1 CPU each, the whole 2-CPU local cluster
    rd.evaluate(net, train, workers=held)
    out = run_sweep(tiny_sweep("after-pools", methods=("weight",)), root=tmp_path, mlflow=False)
    assert out.trials_run == 1
    assert not held.alive
