"""Studies in the sweep (curves, issue 10; pruning and filter collapse, issue 11), in process:
each unit writes its rows once, a rerun loads a fitted curve instead of fitting it again, bad
settings are one line each before anything runs, and old Parquet files still read."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from repair_dist.location import Location
from repair_dist.store import CheckpointStore
from repair_dist.sweep import results
from repair_dist.sweep.config import ArchGrid, CurveConfig, PruningConfig, Sweep, SweepConfigError
from repair_dist.sweep.studies import curve as curve_study
from repair_dist.sweep.trainables import run_study_trial, train_endpoint, write_endpoint_rows
from repair_dist.sweep.validation import validate_sweep


def study_sweep(**kw) -> Sweep:
    base = dict(
        name="studies",
        dataset="digits",
        archs=(ArchGrid("mlp", widths=(16,), depths=(3,)),),
        seeds=(0, 1),
        epochs=2,
        methods=("activation",),
        variants=("full",),
        alphas=3,
        curve=CurveConfig(epochs=1),
        pruning=PruningConfig(sparsities=(0.5, 0.9), variants=("full", "rescale")),
    )
    return Sweep(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A store holding the sweep's two endpoints (trained once for the module)."""
    root = tmp_path_factory.mktemp("studies")
    store = CheckpointStore(root / "checkpoints")
    sweep = study_sweep()
    for ep in sweep.endpoints():
        row = train_endpoint(ep, store)
        write_endpoint_rows(Location.of(root), sweep.name, ep, row, store)
    return root, store, sweep


def _problems(sweep: Sweep) -> list[str]:
    with pytest.raises(SweepConfigError) as err:
        validate_sweep(sweep)
    return err.value.problems


def test_bad_study_settings_are_one_line_each_before_anything_runs():
    problems = _problems(
        study_sweep(
            curve=CurveConfig(kind="spline", epochs=0, ts=(0.0, 0.5, 1.5)),
            pruning=PruningConfig(kinds=("global_l1", "magic", "filter_bn"), sparsities=(1.0,)),
            residual="mean",
        )
    )
    assert len(problems) == 7, problems
    for field, word in [
        ("curve.kind", "spline"),
        ("curve.epochs", "0"),
        ("curve.ts", "1.5"),
        ("pruning.kinds", "magic"),
        ("pruning.kinds", "BatchNorm"),
        ("pruning.sparsities", "1"),
        ("residual", "mean"),
    ]:
        assert any(p.startswith(field) and word in p for p in problems), (field, problems)
    # a study-only sweep may list no merge methods; a plain sweep may not
    validate_sweep(study_sweep(methods=()), check_data=False)
    assert any("methods" in p for p in _problems(study_sweep(methods=(), curve=None, pruning=None)))


def test_study_configs_roundtrip_through_yaml_shaped_mappings_and_catch_typos():
    sweep = study_sweep(residual="sum")
    back = Sweep.from_dict(sweep.to_dict())
    assert back == sweep and [u.key() for u in back.study_trials()] == [
        u.key() for u in sweep.study_trials()
    ]
    d = {**sweep.to_dict(), "curve": {"kind": "bezier", "epoch": 3}}
    with pytest.raises(
        SweepConfigError, match=r"curve\.epoch: unknown key \(did you mean 'epochs'"
    ):
        Sweep.from_dict(d)


def test_the_residual_mode_and_curve_settings_are_part_of_the_keys():
    out, summed = study_sweep(), study_sweep(residual="sum")
    assert out.trials()[0].key() != summed.trials()[0].key()
    curve_out, curve_sum = out.study_trials()[0], summed.study_trials()[0]
    assert curve_out.study == "curve" and curve_out.key() != curve_sum.key()
    # the naive curve does not depend on the matching: both modes share its fitted M
    assert curve_study._fit_key(curve_out, "none") == curve_study._fit_key(curve_sum, "none")
    assert curve_study._fit_key(curve_out, "activation-output") != curve_study._fit_key(
        curve_sum, "activation-sum"
    )
    longer = study_sweep(curve=CurveConfig(epochs=2)).study_trials()[0]
    assert longer.key() != curve_out.key()
    # the pruning units do not depend on the curve settings or the residual mode
    assert [u.key() for u in out.study_trials()[1:]] == [u.key() for u in summed.study_trials()[1:]]


def test_a_curve_unit_writes_five_lines_and_two_barrier_rows_and_never_refits(trained, monkeypatch):
    root, store, sweep = trained
    unit = sweep.study_trials()[0]
    tables = run_study_trial(unit, store, root)
    ts = sweep.alpha_grid()
    curves = results.read_table(root, "curves", sweep.name)
    assert set(curves["variant"]) == {"naive", "aligned", "full", "curve-naive", "curve-aligned"}
    assert len(curves) == 5 * len(ts) * 2
    assert not curves.duplicated(["trial_key", "variant", "alpha", "split"]).any()
    trials = results.read_table(root, "trials", sweep.name)
    assert sorted(trials["variant"]) == ["curve-aligned", "curve-naive"]
    assert (trials["residual"] == "output").all() and (trials["curve_epochs"] == 1).all()
    assert (trials["curve_seconds"] > 0).all()
    # The curves end at the endpoints: same values as the straight lines at alpha 0 and 1
    # (aligned B computes what B computes).
    by = curves.set_index(["variant", "split", "alpha"])["loss"]
    for split in ("train", "test"):
        for end in (0.0, 1.0):
            for variant in ("curve-naive", "curve-aligned"):
                assert by[(variant, split, end)] == pytest.approx(by[("naive", split, end)])
    fit_keys = [curve_study._fit_key(unit, m) for m in ("none", "activation-output")]
    assert all(store.has(k) for k in fit_keys)
    mtimes = {k: os.stat(Path(store.path(k)) / "meta.json").st_mtime_ns for k in fit_keys}

    # A rerun of the unit (its files lost) loads both curves: fitting is not even possible.
    def no_refit(*args, **kwargs):
        raise AssertionError("a finished curve was fitted again")

    monkeypatch.setattr(curve_study, "fit_curve", no_refit)
    again = run_study_trial(unit, store, root)
    pd.testing.assert_frame_equal(
        again["curves"].drop(columns=[]), tables["curves"], check_exact=False, rtol=1e-6
    )
    np.testing.assert_allclose(again["trials"]["curve_seconds"], tables["trials"]["curve_seconds"])
    assert {k: os.stat(Path(store.path(k)) / "meta.json").st_mtime_ns for k in fit_keys} == mtimes
    assert len(results.read_table(root, "curves", sweep.name)) == len(curves)  # replaced


def test_a_pruning_unit_writes_every_kind_sparsity_and_variant_once(trained):
    root, store, sweep = trained
    units = [u for u in sweep.study_trials() if u.study == "prune"]
    assert len(units) == len(sweep.endpoints())
    run_study_trial(units[0], store, root)
    rows = results.read_table(root, "pruning", sweep.name)
    cfg = sweep.pruning
    per_sparsity = 2 + len(cfg.variants)  # dense, pruned, repaired-*
    assert len(rows) == len(cfg.kinds) * len(cfg.sparsities) * per_sparsity
    assert set(rows["variant"]) == {"dense", "pruned", "repaired-full", "repaired-rescale"}
    assert (rows["endpoint_key"] == units[0].endpoints[0].key()).all()
    assert (rows["model"] == "mlp").all() and (rows["seed"] == units[0].endpoints[0].seed).all()
    pruned = rows[rows["variant"] != "dense"]
    np.testing.assert_allclose(pruned["measured_sparsity"], pruned["sparsity"], atol=1e-3)


def test_filters_rows_add_up_to_the_endpoints_collapsed_filters(trained):
    root, _, sweep = trained
    endpoints = results.read_table(root, "endpoints", sweep.name)
    filters = results.read_table(root, "filters", sweep.name)
    assert set(filters["endpoint_key"]) == set(endpoints["endpoint_key"])
    totals = filters.groupby("endpoint_key")[["collapsed", "dead"]].sum().sum(axis=1)
    for row in endpoints.itertuples():
        assert row.collapsed_filters == totals[row.endpoint_key]
    assert (filters.groupby("endpoint_key").size() == 3).all()  # 3 hidden layers
    assert (filters["channels"] == 16).all() and (filters["model"] == "mlp").all()


def test_version_1_trials_files_still_read_with_the_new_columns_null(tmp_path):
    new = {"residual", "curve_kind", "curve_epochs", "curve_seconds"}
    old = pa.schema([f for f in results.FILE_SCHEMAS["trials"] if f.name not in new])
    path = tmp_path / "trials" / "sweep=old"
    path.mkdir(parents=True)
    row = {f.name: (1.0 if pa.types.is_floating(f.type) else None) for f in old}
    pq.write_table(
        pa.Table.from_pylist([{**row, "trial_key": "t0"}], schema=old), path / "t0.parquet"
    )
    back = results.read_table(tmp_path, "trials")
    assert back["trial_key"].tolist() == ["t0"] and back[sorted(new)].isna().all().all()
    assert results.SCHEMA_VERSION == "2"
