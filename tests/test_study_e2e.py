"""Curve and pruning studies end to end: real local Ray, a real sqlite MLflow store (copied
from the session template) and real Parquet. Every unit lands once in every table and once in
MLflow, with its plot; a second run redoes nothing (no refit, no re-prune); the results
command shows the new tables."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from repair_dist.cli import main as cli_main
from repair_dist.store import CheckpointStore
from repair_dist.sweep import results
from repair_dist.sweep.config import ArchGrid, CurveConfig, PruningConfig, Sweep
from repair_dist.sweep.figures import unit_figures
from repair_dist.sweep.runner import run_sweep
from repair_dist.sweep.studies import curve as curve_study
from repair_dist.sweep.tracking import default_tracking_uri, sync_from_parquet

pytestmark = pytest.mark.timeout(300)


def studies_sweep() -> Sweep:
    return Sweep(
        name="studies-e2e",
        dataset="digits",
        archs=(ArchGrid("mlp", widths=(16,), depths=(3,)),),
        seeds=(0, 1),
        epochs=2,
        methods=("activation",),
        variants=("full",),
        alphas=3,
        curve=CurveConfig(epochs=1),
        pruning=PruningConfig(sparsities=(0.5, 0.9), variants=("full",)),
    )


def _mtimes(root: Path, sweep: str, tables: tuple[str, ...]) -> dict[str, int]:
    files = [p for t in tables for p in (root / t / f"sweep={sweep}").glob("*.parquet")]
    return {str(p): p.stat().st_mtime_ns for p in files}


def _assert_each_unit_once(root: Path, sweep: Sweep, uri: str) -> None:
    units = sweep.study_trials()
    curve_keys = {u.key() for u in units if u.study == "curve"}
    prune_units = [u for u in units if u.study == "prune"]
    merge_keys = {t.key() for t in sweep.trials()}
    trials = results.read_table(root, "trials", sweep.name)
    assert set(trials["trial_key"]) == merge_keys | curve_keys
    assert not trials.duplicated(["trial_key", "variant"]).any()
    curve_rows = trials[trials["trial_key"].isin(curve_keys)]
    assert sorted(curve_rows["variant"]) == ["curve-aligned", "curve-naive"]
    assert curve_rows[["barrier_loss_max", "barrier_acc_max", "curve_seconds"]].notna().all().all()
    assert (trials["residual"] == "output").all()  # merge rows record the mode too
    curves = results.read_table(root, "curves", sweep.name)
    assert not curves.duplicated(["trial_key", "variant", "alpha", "split"]).any()
    on_curve = curves[curves["trial_key"].isin(curve_keys)]
    assert len(on_curve) == 5 * len(sweep.alpha_grid()) * 2
    pruning = results.read_table(root, "pruning", sweep.name)
    per_endpoint = len(sweep.pruning.sparsities) * (2 + len(sweep.pruning.variants))
    assert len(pruning) == len(prune_units) * per_endpoint
    assert not pruning.duplicated(["endpoint_key", "kind", "sparsity", "variant"]).any()
    filters = results.read_table(root, "filters", sweep.name)
    assert len(filters) == len(sweep.endpoints()) * 3
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(sweep.name)
    runs = [
        r
        for r in client.search_runs([exp.experiment_id], max_results=1000)
        if "trial_key" in r.data.tags
    ]
    keys = sorted(r.data.tags["trial_key"] for r in runs)
    assert keys == sorted(merge_keys | curve_keys | {u.key() for u in prune_units})
    by_key = {r.data.tags["trial_key"]: r for r in runs}
    curve_run = by_key[next(iter(curve_keys))]
    assert curve_run.data.tags["study"] == "curve"
    assert "barrier_loss_max.curve-aligned" in curve_run.data.metrics
    assert "curve_seconds.curve-naive" in curve_run.data.metrics
    prune_run = by_key[prune_units[0].key()]
    assert "test_acc.global_l1.repaired-full.s0.9" in prune_run.data.metrics
    unit_figures(root, sweep.name)  # drawn on demand, from the rows (compacted or not)
    for key in {*curve_keys, *(u.key() for u in prune_units)}:
        png = root / "plots" / f"sweep={sweep.name}" / f"{key}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curve_and_pruning_studies_land_once_and_a_rerun_redoes_nothing(
    ray_ready, mlflow_root, capsys
):
    sweep, root = studies_sweep(), mlflow_root
    uri = default_tracking_uri(root)
    out = run_sweep(sweep, root=root)
    units = sweep.study_trials()
    assert (out.trials_run, out.studies_run, out.studies_reused) == (1, len(units), 0)
    assert len(units) == 1 + len(sweep.endpoints())  # one curve pair, every endpoint pruned
    _assert_each_unit_once(root, sweep, uri)

    store = CheckpointStore(root / "checkpoints")
    curve_unit = next(u for u in units if u.study == "curve")
    fits = [curve_study._fit_key(curve_unit, m) for m in ("none", "activation-output")]
    written = _mtimes(root, sweep.name, ("trials", "curves", "pruning", "filters"))
    fitted = {k: os.stat(Path(store.path(k)) / "meta.json").st_mtime_ns for k in fits}

    again = run_sweep(sweep, root=root)  # no refit, no re-prune, no new rows or runs
    assert (again.trials_run, again.studies_run, again.studies_reused) == (0, 0, len(units))
    assert _mtimes(root, sweep.name, ("trials", "curves", "pruning", "filters")) == written
    assert {k: os.stat(Path(store.path(k)) / "meta.json").st_mtime_ns for k in fits} == fitted
    _assert_each_unit_once(root, sweep, uri)

    capsys.readouterr()
    assert cli_main(["results", sweep.name, "--root", str(root), "--table", "pruning"]) == 0
    shown = capsys.readouterr().out
    assert "repaired-full" in shown and "test_acc" in shown
    assert cli_main(["results", sweep.name, "--root", str(root), "--table", "filters"]) == 0
    assert "gamma_abs_median" in capsys.readouterr().out
    assert cli_main(["results", sweep.name, "--root", str(root), "--table", "curves"]) == 0
    assert "curve-aligned" in capsys.readouterr().out


def test_with_mlflow_down_study_rows_still_land_and_the_next_run_logs_each_unit_once(
    ray_ready, mlflow_root
):
    sweep = Sweep(
        name="studies-offline",
        dataset="digits",
        archs=(ArchGrid("mlp", widths=(16,), depths=(3,)),),
        seeds=(0, 1),
        epochs=1,
        methods=(),
        alphas=3,
        curve=CurveConfig(epochs=1),
        pruning=PruningConfig(sparsities=(0.9,), variants=("full",)),
    )
    units = sweep.study_trials()
    out = run_sweep(sweep, root=mlflow_root, tracking_uri="http://127.0.0.1:9")  # nothing listens
    assert out.mlflow_problems and out.studies_run == len(units)
    assert len(results.read_table(mlflow_root, "pruning", sweep.name)) == 2 * 3  # 2 endpoints

    uri = default_tracking_uri(mlflow_root)
    # sync-mlflow backfills every unit as the live run would have logged it, once
    assert sync_from_parquet(mlflow_root, uri, sweep.name) == len(units)
    assert sync_from_parquet(mlflow_root, uri, sweep.name) == 0
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(sweep.name)
    by_key = {
        r.data.tags["trial_key"]: r
        for r in client.search_runs([exp.experiment_id], max_results=1000)
        if "trial_key" in r.data.tags
    }
    for unit in units:
        run = by_key[unit.key()]
        assert run.data.tags["study"] == unit.study
        assert run.data.tags["mlflow.runName"] == unit.run_name()
        assert run.data.params["trial_key"] == unit.key()
    prune_unit = next(u for u in units if u.study == "prune")
    assert "test_acc.global_l1.repaired-full.s0.9" in by_key[prune_unit.key()].data.metrics
    for _ in range(2):  # the next runs compute nothing and log each unit once
        again = run_sweep(sweep, root=mlflow_root)
        assert (again.studies_run, again.studies_reused) == (0, len(units))
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(sweep.name)
        runs = client.search_runs([exp.experiment_id], max_results=1000)
        keys = sorted(r.data.tags["trial_key"] for r in runs if "trial_key" in r.data.tags)
        assert keys == sorted(u.key() for u in units)


def test_fit_curve_data_parallel_keeps_the_ends_and_its_ranks_in_step(ray_ready, tmp_path):
    """Two Ray Train ranks (gloo) fit one curve: the ends are exactly A and B, M moved off the
    linear midpoint, and the ranks' middle points agree bit for bit (checked on the ranks:
    a divergence fails the fit)."""
    import torch

    import repair_dist as rd
    from repair_dist.location import Location
    from repair_dist.sweep.ddp import fit_curve_data_parallel

    sweep = Sweep(
        name="ddp-curve",
        dataset="digits",
        archs=(ArchGrid("mlp", widths=(16,), depths=(3,)),),
        seeds=(0, 1),
        epochs=1,
        train_workers=2,
        cpus_per_worker=0.5,
    )
    ep_a, ep_b = sweep.endpoints()
    nets = []
    for ep in (ep_a, ep_b):
        torch.manual_seed(ep.seed)
        nets.append(rd.build_model(ep.model, **ep.model_kwargs(None)).eval())
    curve = fit_curve_data_parallel(
        nets[0],
        nets[1],
        ep_a,
        kind="bezier",
        epochs=1,
        lr=0.05,
        batch_size=64,
        seed=0,
        data_root=None,
        cpus_per_worker=0.5,
        gpus_per_worker=0.0,
        storage=Location.of(tmp_path / "tune"),
    )
    for t, end in ((0.0, nets[0]), (1.0, nets[1])):
        for k, v in end.state_dict().items():
            assert torch.equal(curve.point(t).state_dict()[k], v), (t, k)
    midpoint = rd.interpolate(nets, [0.5, 0.5]).state_dict()
    assert any(not torch.equal(curve.mid[k], midpoint[k]) for k, _ in nets[0].named_parameters())
    assert len(list((tmp_path / "tune").glob("curve-*"))) == 1  # one Ray Train run


def test_a_sweep_with_train_workers_fits_its_curves_on_ray_train(ray_ready, tmp_path):
    """``train_workers > 1``: endpoints and curves both train data-parallel on Ray Train; the
    curve unit writes its rows as usual and a rerun fits nothing again."""
    sweep = Sweep(
        name="ddp-curves",
        dataset="digits",
        archs=(ArchGrid("mlp", widths=(16,), depths=(3,)),),
        seeds=(0, 1),
        epochs=1,
        methods=(),
        alphas=3,
        curve=CurveConfig(epochs=1),
        train_workers=2,
        cpus_per_worker=0.5,
    )
    out = run_sweep(sweep, root=tmp_path, mlflow=False)
    assert out.studies_run == 1
    assert len(list((tmp_path / "tune").glob("curve-*"))) == 2  # curve-aligned, curve-naive
    trials = results.read_table(tmp_path, "trials", sweep.name)
    assert sorted(trials["variant"]) == ["curve-aligned", "curve-naive"]
    assert trials["barrier_loss_max"].notna().all()
    again = run_sweep(sweep, root=tmp_path, mlflow=False)
    assert (again.studies_run, again.studies_reused) == (0, 1)
    assert len(list((tmp_path / "tune").glob("curve-*"))) == 2  # no new fit


def test_merge_many_units_land_once_equal_the_pair_path_at_n2_and_ste_pairs_run(
    ray_ready, mlflow_root, capsys
):
    """Issue 12 at sweep level: 3 seeds give one pair (0, 1) and the N-tuples (0, 1) and
    (0, 1, 2), so seed 2 trains only because a tuple names it. The pair trials run ``weight``
    and ``ste`` (the matcher registry's third method); the N = 2 merge of the same seeds is
    the pair path's midpoint: same accuracy and loss, unaligned and weight-aligned, plain and
    repaired. A rerun computes and logs nothing new."""
    from repair_dist.sweep.config import MergeManyConfig

    sweep = Sweep(
        name="merges-e2e",
        dataset="digits",
        archs=(ArchGrid("mlp", widths=(16,), depths=(3,)),),
        seeds=(0, 1, 2),
        epochs=2,
        data_limit=200,  # STE trains on the train split: a few steps per epoch
        methods=("weight", "ste"),
        variants=("full",),
        alphas=3,
        merge_many=MergeManyConfig(n_models=(2, 3), methods=("weight", "merge_many")),
    )
    root, uri = mlflow_root, default_tracking_uri(mlflow_root)
    units = sweep.study_trials()
    out = run_sweep(sweep, root=root)
    assert (out.endpoints_trained, out.trials_run, out.studies_run) == (3, 2, 2)
    assert {e.seed for e in sweep.endpoints()} == {0, 1, 2}

    def check() -> None:
        merges = results.read_table(root, "merges", sweep.name)
        assert set(merges["trial_key"]) == {u.key() for u in units}
        assert len(merges) == 2 * (1 + 2 * 2)  # naive, then (aligned, full) per method
        assert not merges.duplicated(["trial_key", "method", "variant"]).any()
        assert sorted(merges["seeds"].unique()) == ["0,1", "0,1,2"]
        trials = results.read_table(root, "trials", sweep.name)
        ste = trials[trials["method"] == "ste"]
        assert sorted(ste["variant"]) == ["aligned", "full", "naive"]
        assert ste[["acc_mid", "loss_mid", "barrier_loss_mid"]].notna().all().all()
        weight = trials[trials["method"] == "weight"].set_index("variant")
        pair = merges[merges["seeds"] == "0,1"].set_index("variant")
        assert (weight["seed_a"] == 0).all() and (weight["seed_b"] == 1).all()
        end_acc = (weight["acc_a"].iloc[0] + weight["acc_b"].iloc[0]) / 2
        assert pair["endpoint_acc"].iloc[0] == pytest.approx(end_acc)
        for variant, method in (("naive", "none"), ("aligned", "weight"), ("full", "weight")):
            row = pair[pair["method"] == method].loc[variant]
            assert row["acc"] == pytest.approx(weight.loc[variant, "acc_mid"], abs=1e-9)
            assert row["loss"] == pytest.approx(weight.loc[variant, "loss_mid"], rel=1e-5)
            assert row["barrier_acc"] == pytest.approx(
                weight.loc[variant, "barrier_acc_mid"], abs=1e-9
            )
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(sweep.name)
        runs = [
            r
            for r in client.search_runs([exp.experiment_id], max_results=1000)
            if r.data.tags.get("study") == "merge_many"
        ]
        assert sorted(r.data.tags["trial_key"] for r in runs) == sorted(u.key() for u in units)
        for r in runs:
            assert "barrier_acc.merge_many.full" in r.data.metrics
            assert "ensemble_gap_acc.none.naive" in r.data.metrics
        unit_figures(root, sweep.name, keys=[u.key() for u in units])  # drawn on demand
        for unit in units:
            png = root / "plots" / f"sweep={sweep.name}" / f"{unit.key()}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    check()
    written = _mtimes(root, sweep.name, ("merges", "trials"))
    again = run_sweep(sweep, root=root)
    assert (again.endpoints_trained, again.trials_run, again.studies_run) == (0, 0, 0)
    assert again.studies_reused == len(units)
    assert _mtimes(root, sweep.name, ("merges", "trials")) == written
    check()

    capsys.readouterr()
    assert cli_main(["results", sweep.name, "--root", str(root), "--table", "merges"]) == 0
    shown = capsys.readouterr().out
    assert "merge_many" in shown and "ensemble_gap_acc" in shown and "n_models" in shown
