"""MLflow is a view of the results: one child run per trial under one parent per sweep, found
again by tag so that a resumed sweep never duplicates a run; an MLflow outage fails fast with
TrackingUnavailable, and the Parquet tables backfill MLflow later, exactly once."""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from repair_dist.sweep import tracking as tracking_mod
from repair_dist.sweep.results import write_rows
from repair_dist.sweep.tracking import (
    Tracker,
    TrackingUnavailable,
    curve_metrics,
    default_tracking_uri,
    sync_from_parquet,
    trial_metrics,
)

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")
VARIANTS = ("naive", "aligned", "full")
PARAMS = {
    "model": "mlp",
    "width": 64.0,
    "depth": 6,
    "norm": "none",
    "dataset": "digits",
    "method": "weight",
    "seed_a": 0,
    "seed_b": 1,
    "endpoint_a": "ea",
    "endpoint_b": "eb",
    "lr": None,
}


def _barriers(scale: float = 1.0) -> pd.DataFrame:
    rows = []
    for i, v in enumerate(VARIANTS):
        b = scale * 0.3 / (i + 1)
        rows.append(
            {
                "variant": v,
                "acc_a": 0.95,
                "acc_b": 0.94,
                "loss_a": 0.2,
                "loss_b": 0.21,
                "acc_mid": 0.9 - b,
                "loss_mid": 0.3 + b,
                "barrier_acc_mid": b,
                "barrier_loss_mid": 2 * b,
                "barrier_acc_max": b,
                "barrier_loss_max": 2 * b,
                "reduction_vs_aligned": float("nan") if v == "naive" else 0.5,
                "reduction_loss_vs_aligned": 0.5,
                "seconds": 1.0,
            }
        )
    return pd.DataFrame(rows)


def _curves() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"variant": v, "alpha": a, "split": s, "loss": 1 + a + i, "acc": 0.9 - a / 10}
            for i, v in enumerate(VARIANTS)
            for a in (0.0, 0.5, 1.0)
            for s in ("train", "test")
        ]
    )


@pytest.fixture
def uri(mlflow_root: Path) -> str:
    return default_tracking_uri(mlflow_root)


def _runs(uri: str, sweep: str, filter_string: str = "") -> list:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(sweep)
    return [] if exp is None else client.search_runs([exp.experiment_id], filter_string)


def test_default_uri_is_sqlite_under_the_results_root(tmp_path: Path) -> None:
    assert default_tracking_uri(tmp_path / "r") == f"sqlite:///{tmp_path / 'r' / 'mlflow.db'}"
    assert (tmp_path / "r").is_dir()


def test_metric_names_per_variant_and_curves_as_steps() -> None:
    m = trial_metrics(_barriers())
    assert m["barrier_acc_mid.full"] == pytest.approx(0.1)
    assert m["barrier_loss_mid.aligned"] == pytest.approx(0.3)
    assert {
        "acc_mid.naive",
        "loss_mid.full",
        "barrier_acc_max.full",
        "reduction_vs_aligned.full",
        "acc_a",
        "acc_b",
        "loss_a",
        "loss_b",
        "seconds",
    } <= set(m)
    assert "reduction_vs_aligned.naive" not in m  # NaN: left out, not logged as NaN
    assert "acc_a.full" not in m  # endpoint values once, without a variant
    steps = curve_metrics(_curves())
    assert ("curve.alpha", 0.5, 1) in steps
    assert ("curve.test.full.loss", 3.5, 1) in steps
    assert ("curve.train.naive.acc", 0.8, 2) in steps
    with pytest.raises(ValueError, match="variant"):
        trial_metrics(_barriers().drop(columns="variant"))


def test_log_trial_makes_a_child_run_of_the_sweep_parent(
    uri: str, mlflow_root: Path, tmp_path: Path
) -> None:
    artifact = tmp_path / "curve.png"
    artifact.write_bytes(b"\x89PNG fake")
    tracker = Tracker(uri, "quick")
    run_id = tracker.log_trial("t0123456789abcdef", PARAMS, _barriers(), _curves(), [artifact])
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["trial_key"] == "t0123456789abcdef"
    assert run.data.tags["mlflow.parentRunId"] == tracker.parent_run_id()
    assert run.data.tags["mlflow.runName"] == "mlp-w64-d6-none-s0s1-weight"
    assert run.data.params["width"] == "64" and run.data.params["lr"] == "None"
    assert run.data.metrics["barrier_acc_mid.full"] == pytest.approx(0.1)
    history = client.get_metric_history(run_id, "curve.test.aligned.acc")
    assert [(h.step, h.value) for h in sorted(history, key=lambda h: h.step)] == [
        (0, pytest.approx(0.9)),
        (1, pytest.approx(0.85)),
        (2, pytest.approx(0.8)),
    ]
    assert [a.path for a in client.list_artifacts(run_id)] == ["curve.png"]
    assert (mlflow_root / "mlartifacts" / "quick" / run_id / "artifacts" / "curve.png").is_file()
    parent = client.get_run(tracker.parent_run_id())
    assert parent.data.tags["sweep_parent"] == "quick"
    assert client.get_experiment(run.info.experiment_id).name == "quick"


def test_logging_again_reuses_the_run_and_never_doubles_histories(uri: str) -> None:
    first = Tracker(uri, "quick").log_trial("tk1", PARAMS, _barriers(), _curves())
    again = Tracker(uri, "quick")  # as from another process after a resume
    assert again.log_trial("tk1", PARAMS, _barriers(), _curves()) == first
    other = again.log_trial("tk2", {**PARAMS, "seed_a": 2, "seed_b": 3}, _barriers(), _curves())
    assert other != first
    assert len(_runs(uri, "quick", "tags.trial_key = 'tk1'")) == 1
    assert len(_runs(uri, "quick", "tags.sweep_parent = 'quick'")) == 1
    assert len(_runs(uri, "quick")) == 3  # parent + two trials
    history = MlflowClient(tracking_uri=uri).get_metric_history(first, "curve.test.full.loss")
    assert len(history) == 3


def test_a_creation_race_leaves_one_run(uri: str, monkeypatch) -> None:
    winner = Tracker(uri, "quick").log_trial("tk1", PARAMS, _barriers(), _curves())
    late = Tracker(uri, "quick")
    late.parent_run_id()
    real_search = Tracker._search
    calls = {"n": 0}

    def blind_first_lookup(self, tag, value):
        calls["n"] += 1
        return [] if calls["n"] == 1 else real_search(self, tag, value)

    monkeypatch.setattr(Tracker, "_search", blind_first_lookup)  # it "missed" the other run
    assert late.log_trial("tk1", PARAMS, _barriers(), _curves()) == winner
    assert [r.info.run_id for r in _runs(uri, "quick", "tags.trial_key = 'tk1'")] == [winner]


def test_the_parent_run_closes_and_takes_children_after_a_resume(uri: str) -> None:
    tracker = Tracker(uri, "quick")
    tracker.log_trial("tk1", PARAMS, _barriers(), _curves())
    tracker.finish()
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(tracker.parent_run_id()).info.status == "FINISHED"
    resumed = Tracker(uri, "quick")
    child = resumed.log_trial("tk2", PARAMS, _barriers(), _curves())
    assert resumed.parent_run_id() == tracker.parent_run_id()
    assert client.get_run(child).data.tags["mlflow.parentRunId"] == tracker.parent_run_id()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_server_fails_fast(monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")  # the user's own setting
    tracker = Tracker(f"http://127.0.0.1:{_free_port()}", "quick", timeout=2)
    start = time.monotonic()
    with pytest.raises(TrackingUnavailable, match="127.0.0.1"):
        tracker.log_trial("tk1", PARAMS, _barriers(), _curves())
    assert time.monotonic() - start < 10
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "7"  # restored afterwards


def test_a_broken_store_is_tracking_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    tracker = Tracker(f"sqlite:///{tmp_path / 'file' / 'mlflow.db'}", "quick")
    with pytest.raises(TrackingUnavailable):
        tracker.log_trial("tk1", PARAMS, _barriers(), _curves())


def test_bad_inputs_are_errors_of_the_caller_not_of_mlflow(uri: str, tmp_path: Path) -> None:
    tracker = Tracker(uri, "quick")
    with pytest.raises(ValueError, match="trial_key"):
        tracker.log_trial("x' OR '1'='1", PARAMS, _barriers(), _curves())
    with pytest.raises(FileNotFoundError, match="missing.png"):
        tracker.log_trial("tk1", PARAMS, _barriers(), _curves(), [tmp_path / "missing.png"])
    with pytest.raises(ValueError, match="sweep name"):
        Tracker(uri, "bad name")


def _write_trial(root: Path, sweep: str, key: str, pair: tuple[int, int]) -> None:
    ids = {k: PARAMS[k] for k in ("model", "width", "depth", "norm", "dataset")}
    trials = _barriers().assign(
        trial_key=key,
        endpoint_a=f"e{pair[0]}",
        endpoint_b=f"e{pair[1]}",
        method="weight",
        seed_a=pair[0],
        seed_b=pair[1],
        **ids,
    )
    write_rows(root, "trials", sweep, key, trials)
    write_rows(root, "curves", sweep, key, _curves().assign(trial_key=key, method="weight"))
    endpoints = pd.DataFrame(
        [
            {
                "endpoint_key": f"e{s}",
                **ids,
                "seed": s,
                "epochs": 3,
                "train_loss": 0.1,
                "train_acc": 0.9,
                "test_loss": 0.2,
                "test_acc": 0.9,
                "collapsed_filters": 0,
                "train_seconds": 1.0,
            }
            for s in pair
        ]
    )
    write_rows(root, "endpoints", sweep, f"e{pair[0]}e{pair[1]}", endpoints)


def test_sync_from_parquet_backfills_missing_trials_once(uri: str, mlflow_root: Path) -> None:
    for key, pair in (("ta", (0, 1)), ("tb", (2, 3))):
        _write_trial(mlflow_root, "quick", key, pair)
    _write_trial(mlflow_root, "other", "tc", (0, 1))
    Tracker(uri, "quick").log_trial("ta", PARAMS, _barriers(), _curves())  # logged live

    assert sync_from_parquet(mlflow_root, uri, "quick") == 1
    assert sync_from_parquet(mlflow_root, uri) == 1  # only "other" was still missing
    assert sync_from_parquet(mlflow_root, uri) == 0
    (tb,) = _runs(uri, "quick", "tags.trial_key = 'tb'")
    assert "backfilled_from" not in tb.data.tags  # a backfilled run equals a live one
    assert tb.data.params["seed_a"] == "2" and tb.data.params["epochs"] == "3"
    assert tb.data.metrics["barrier_acc_mid.full"] == pytest.approx(0.1)
    assert "curve.test.full.loss" in tb.data.metrics
    client = MlflowClient(tracking_uri=uri)
    assert client.list_artifacts(tb.info.run_id) == []  # rows by reference, not copies
    assert tb.data.tags["results.root"] == str(mlflow_root)
    assert len(_runs(uri, "quick", "tags.trial_key = 'ta'")) == 1


def test_sync_with_nothing_written_creates_nothing(uri: str, mlflow_root: Path) -> None:
    assert sync_from_parquet(mlflow_root, uri) == 0


def test_tracking_module_is_the_only_mlflow_user() -> None:
    """DESIGN.md §2: only repair_dist/sweep/ imports MLflow."""
    package = Path(tracking_mod.__file__).parents[1]
    imports = re.compile(r"^\s*(import|from)\s+mlflow\b", re.MULTILINE)
    users = [
        p.relative_to(package).as_posix()
        for p in package.rglob("*.py")
        if imports.search(p.read_text()) and p.parent.name != "sweep"
    ]
    assert users == []
