"""A run backfilled by ``sync-mlflow`` is the run the live sweep made: params, metrics, tags
(including where its rows live); its parent run is closed; a backfill never races a running sweep."""

from __future__ import annotations

import shutil

import pytest
import torch
from mlflow.tracking import MlflowClient
from test_sweep_e2e import tiny_sweep

import repair_dist as rd
from repair_dist.store import CheckpointStore
from repair_dist.sweep.lock import SweepLock, SweepLocked
from repair_dist.sweep.publish import log_trial_to_mlflow
from repair_dist.sweep.tracking import PARENT_TAG, Tracker, sync_from_parquet
from repair_dist.sweep.trainables import run_merge_trial


def _runs(uri: str, sweep: str) -> tuple[list, list]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(sweep)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    return (
        [r for r in runs if "trial_key" in r.data.tags],
        [r for r in runs if PARENT_TAG in r.data.tags],
    )


def _histories(uri: str, run) -> dict[str, list[tuple[int, float]]]:
    client = MlflowClient(uri)
    return {
        k: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, k))
        for k in run.data.metrics
    }


def _artifacts(uri: str, run) -> list[str]:
    client = MlflowClient(uri)
    top = client.list_artifacts(run.info.run_id)
    out = []
    for item in top:
        inner = client.list_artifacts(run.info.run_id, item.path) if item.is_dir else [item]
        out += [i.path for i in inner]
    return sorted(out)


def test_a_backfilled_run_equals_the_live_run_and_its_parent_is_closed(tmp_path, mlflow_template):
    sweep = tiny_sweep("backfill", methods=("activation",))
    root = tmp_path / "results"
    store = CheckpointStore(root / "checkpoints")
    for ep in sweep.endpoints():  # untrained endpoints: the logging is under test, not accuracy
        torch.manual_seed(ep.seed)
        store.save(ep.key(), rd.build_model(ep.model, **ep.model_kwargs()), ep.params())
    spec = sweep.trials()[0]
    run_merge_trial(spec, store, root)

    live_uri, backfill_uri = (
        f"sqlite:///{shutil.copyfile(mlflow_template, tmp_path / f'{n}.db')}"
        for n in ("live", "backfill")
    )
    live = Tracker(live_uri, sweep.name)
    log_trial_to_mlflow(live, root, spec)  # what the runner's publisher does per trial
    live.finish("FINISHED")
    assert sync_from_parquet(root, backfill_uri, sweep.name) == 1

    (a,), (parent_a,) = _runs(live_uri, sweep.name)
    (b,), (parent_b,) = _runs(backfill_uri, sweep.name)
    assert a.data.params == b.data.params and len(a.data.params) == len(spec.params())
    assert a.data.metrics == b.data.metrics
    assert _histories(live_uri, a) == _histories(backfill_uri, b)
    tags_a, tags_b = dict(a.data.tags), dict(b.data.tags)
    assert tags_a.pop("mlflow.parentRunId") == parent_a.info.run_id
    assert tags_b.pop("mlflow.parentRunId") == parent_b.info.run_id
    assert tags_a == tags_b and tags_a["mlflow.runName"] == spec.run_name()
    # rows by reference, not copies: the run names where they live
    assert _artifacts(live_uri, a) == _artifacts(backfill_uri, b) == []
    assert (
        tags_a["results.root"] == str(root) and tags_a["results.tables"] == "trials,curves,layers"
    )
    assert a.info.status == b.info.status == "FINISHED"
    assert parent_a.info.status == parent_b.info.status == "FINISHED"
    assert sync_from_parquet(root, backfill_uri, sweep.name) == 0  # idempotent

    with SweepLock(root, sweep.name), pytest.raises(SweepLocked, match="already running"):
        sync_from_parquet(root, live_uri, sweep.name)  # never races a running sweep
