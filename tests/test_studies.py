"""Studies in the sweep (curves, issue 10; pruning and filter collapse, issue 11), in process:
each unit writes its rows once, a rerun loads a fitted curve instead of fitting it again, bad
settings are one line each before anything runs, and old Parquet files still read."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from repair_dist.location import Location
from repair_dist.store import CheckpointStore
from repair_dist.sweep import results, unit_work
from repair_dist.sweep.config import (
    ArchGrid,
    CurveConfig,
    MergeManyConfig,
    PruningConfig,
    Sweep,
    SweepConfigError,
)
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

    monkeypatch.setattr(unit_work, "fit_curve", no_refit)  # what the unit's inputs fit with
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


# --------------------------------------------------------------------------------------------
# merge many (issue 12)
# --------------------------------------------------------------------------------------------


def test_bad_merge_many_settings_are_one_line_each_naming_the_field():
    problems = _problems(
        study_sweep(
            seeds=(0, 1, 2, 3),
            merge_many=MergeManyConfig(
                n_models=(1, 2, 5, "x"),
                methods=("weight", "zip"),
                variants=("aligned", "fool"),
                groups=0,
            ),
        )
    )
    assert len(problems) == 7, problems
    for field, word in [
        ("merge_many.n_models", "'x'"),
        ("merge_many.n_models", "1 below 2"),
        ("merge_many.n_models", "5 more nets than the sweep's 4 seeds"),
        ("merge_many.methods", "zip"),
        ("merge_many.variants", "'aligned' need not be listed"),
        ("merge_many.variants", "fool"),
        ("merge_many.groups", "0"),
    ]:
        assert any(p.startswith(field) and word in p for p in problems), (field, problems)
    assert all("\n" not in p for p in problems)
    # rotating 3 seeds by 3 gives one 3-tuple, not two
    [line] = _problems(
        study_sweep(seeds=(0, 1, 2), merge_many=MergeManyConfig(n_models=(3,), groups=2))
    )
    assert line.startswith("merge_many.groups: 2 distinct 3-tuples") and "only 1" in line
    # a typo in the YAML mapping is one line too
    d = {**study_sweep().to_dict(), "merge_many": {"n_model": [2]}}
    with pytest.raises(SweepConfigError, match=r"merge_many\.n_model: unknown key \(did you mean"):
        Sweep.from_dict(d)


def test_an_odd_seed_is_fine_when_an_n_tuple_merges_it():
    validate_sweep(study_sweep(seeds=(0, 1, 2), merge_many=MergeManyConfig(n_models=(3,))))
    # only pairs of 2 from 3 seeds: seed 2 is still unused, and still reported
    for merge in (None, MergeManyConfig(n_models=(2,))):
        [line] = _problems(study_sweep(seeds=(0, 1, 2), merge_many=merge))
        assert line.startswith("seeds: an odd count (3) leaves seed 2 unpaired")


def test_merge_many_units_are_n_tuples_by_rotation_and_their_endpoints_train_once():
    sweep = Sweep(
        name="many-specs",
        dataset="digits",
        archs=(ArchGrid("mlp", widths=(16, 32), depths=(3,)),),
        seeds=(0, 1, 2, 3),
        methods=("weight",),
        merge_many=MergeManyConfig(n_models=(2, 3, 4), groups=2),
    )
    units = sweep.study_trials()
    seeds = [tuple(e.seed for e in u.endpoints) for u in units]
    # per width: N=2 starts at 0 and 2 (disjoint); N=3 at 0 and 3 (wrapping); N=4 once
    per_width = [(0, 1), (2, 3), (0, 1, 2), (3, 0, 1), (0, 1, 2, 3)]
    assert seeds == per_width * 2
    assert len({u.key() for u in units}) == len(units)
    assert all(len({e.width for e in u.endpoints}) == 1 for u in units)
    # every net a tuple names is an endpoint, each once (pairs and tuples share them)
    endpoints = sweep.endpoints()
    assert len(endpoints) == len(set(endpoints)) == 2 * 4
    assert {e for u in units for e in u.endpoints} == set(endpoints)
    # seeds beyond the pairs: 3 seeds pair as (0, 1); the 3-tuple adds seed 2's nets
    three = Sweep(
        name="many-three",
        dataset="digits",
        archs=(ArchGrid("mlp", widths=(16,), depths=(3,)),),
        seeds=(0, 1, 2),
        methods=("weight",),
        merge_many={"n_models": [3]},
    )
    assert three.seed_pairs() == [(0, 1)]
    assert [e.seed for e in three.endpoints()] == [0, 1, 2]
    # the methods and variants are part of the key; the sweep round-trips through a mapping
    other = dataclasses.replace(
        three, merge_many=MergeManyConfig(n_models=(3,), methods=("weight",))
    )
    assert three.study_trials()[0].key() != other.study_trials()[0].key()
    assert Sweep.from_dict(sweep.to_dict()) == sweep


def test_a_merge_many_unit_measures_the_library_merge_ensemble_and_endpoints(trained):
    import repair_dist as rd
    from repair_dist.data import BatchPlan, load_dataset
    from repair_dist.sweep.studies import study

    root, store, base = trained
    sweep = study_sweep(
        merge_many=MergeManyConfig(
            n_models=(2,), methods=("merge_many", "weight"), variants=("full", "rescale")
        )
    )
    assert sweep.endpoints() == base.endpoints()  # the module's trained nets
    [unit] = [u for u in sweep.study_trials() if u.study == "merge_many"]
    tables = run_study_trial(unit, store, root)
    rows = results.read_table(root, "merges", sweep.name)
    assert len(rows) == len(tables["merges"]) == 1 + 2 * 3
    assert not rows.duplicated(["trial_key", "method", "variant"]).any()
    run_study_trial(unit, store, root)  # a rerun replaces the unit's file
    assert len(results.read_table(root, "merges", sweep.name)) == len(rows)

    nets = [store.load(ep.key())[0] for ep in unit.endpoints]
    ep = unit.endpoints[0]
    train, test = (BatchPlan(d, 500) for d in load_dataset(ep.dataset, limit=ep.data_limit))
    ends = [rd.evaluate(n, test) for n in nets]
    ens = rd.evaluate(rd.ensemble(nets), test)
    by = rows.set_index(["method", "variant"])
    assert by["endpoint_acc"].iloc[0] == pytest.approx(np.mean([e["acc"] for e in ends]))
    assert by["ensemble_loss"].iloc[0] == pytest.approx(ens["loss"])
    assert by.loc[("none", "naive"), "acc"] == pytest.approx(
        rd.evaluate(rd.interpolate(nets, [0.5, 0.5]), test)["acc"]
    )
    for method in ("merge_many", "weight"):
        for variant in ("aligned", "full", "rescale"):
            merged = rd.merge_many(
                nets,
                train,
                method=method,
                variant=None if variant == "aligned" else variant,
                seed=ep.seed,
            )
            got = rd.evaluate(merged, test)
            row = by.loc[(method, variant)]
            assert (row["acc"], row["loss"]) == pytest.approx((got["acc"], got["loss"]))
            assert row["barrier_acc"] == pytest.approx(row["endpoint_acc"] - got["acc"])
            assert row["ensemble_gap_loss"] == pytest.approx(got["loss"] - ens["loss"])
    metrics, steps = study("merge_many").mlflow(tables)
    assert metrics["barrier_acc.merge_many.full"] == by.loc[("merge_many", "full"), "barrier_acc"]
    assert metrics["n_models"] == 2 and steps == []
    png = study("merge_many").plot(tables, str(root / "merge.png"), "t")
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
