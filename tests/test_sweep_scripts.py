"""Every study in sweeps/ builds a valid sweep, and its --smoke version runs end to end."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from repair_dist.sweep import results
from repair_dist.sweep.config import Sweep
from repair_dist.sweep.runner import run_sweep
from repair_dist.sweep.validation import validate_sweep

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
SCRIPTS = sorted(p.stem for p in SWEEPS.glob("*.py"))
# imagenet_resnet50 --smoke runs on a multi-node fake-GPU cluster in test_multinode_sweep.py.
LOCAL_SMOKES = [s for s in SCRIPTS if s != "imagenet_resnet50"]


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"sweep_{name}", SWEEPS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_script_is_covered():
    assert {
        "quickstart",
        "mlp_depth",
        "mlp_width",
        "resnet20_width",
        "vgg_depth",
        "norm_ablation",
        "imagenet_resnet50",
        "curves_alignment",
        "prune_repair",
        "filter_collapse",
        "merge_many",
    } <= set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_full_sweeps_are_well_formed(name):
    sweep = load(name).build_sweep(smoke=False)
    assert isinstance(sweep, Sweep) and (sweep.trials() or sweep.study_trials())
    # Full studies need data or GPUs this machine may not have: check everything else.
    validate_sweep(sweep, check_data=False)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", [s for s in LOCAL_SMOKES if s != "quickstart"])
def test_smoke_sweeps_run_end_to_end(ray_ready, tmp_path, name):
    sweep = load(name).build_sweep(smoke=True)
    out = run_sweep(sweep, root=tmp_path, mlflow=False)
    trials = results.read_table(tmp_path, "trials", sweep.name)
    merges = trials[trials["trial_key"].isin({t.key() for t in sweep.trials()})]
    assert out.trials_run == len(sweep.trials()) == merges["trial_key"].nunique()
    assert len(merges) == len(sweep.trials()) * (2 + len(sweep.variants))
    assert trials[["acc_mid", "loss_mid"]].notna().all().all()
    # studies (curves, pruning): every unit ran, and its last table marks it finished
    assert out.studies_run == len(sweep.study_trials())
    filters = results.read_table(tmp_path, "filters", sweep.name)
    assert set(filters["endpoint_key"]) == {ep.key() for ep in sweep.endpoints()}
    # merge-many units: one row per (method, variant) and the unaligned average, each once
    merged = results.read_table(tmp_path, "merges", sweep.name)
    units = [u for u in sweep.study_trials() if u.study == "merge_many"]
    assert set(merged["trial_key"]) == {u.key() for u in units}
    for unit in units:
        rows = merged[merged["trial_key"] == unit.key()]
        methods, variants = unit.setting("methods"), unit.setting("variants")
        assert len(rows) == 1 + len(methods) * (1 + len(variants))
        assert (rows["n_models"] == len(unit.endpoints)).all()
        assert rows[["acc", "barrier_acc", "ensemble_gap_acc"]].notna().all().all()


@pytest.mark.timeout(240)
def test_the_quickstart_command_prints_its_barrier_table_and_where_to_look(
    ray_ready, tmp_path, capsys
):
    from repair_dist.cli import main

    assert main(["quickstart", "--smoke", "--root", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for expected in (
        "Endpoints (test accuracy)",
        "Barriers at the midpoint",
        "full",
        "naive",
        "Parquet tables",
        "repair-dist ui",
        "repair-dist plot",
    ):
        assert expected in printed, expected
    sweep = load("quickstart").build_sweep(smoke=True)
    trials = results.read_table(tmp_path, "trials", sweep.name)
    assert len(trials) == len(sweep.trials()) * (2 + len(sweep.variants))
