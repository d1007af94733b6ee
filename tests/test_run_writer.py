"""A run written in one SQL transaction (``run_writer``) is, read through MLflow's client, the
run the client itself would have made: same tags, params, latest metrics, metric histories,
status and artifact location; searchable by the same filters; all or nothing on failure."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from repair_dist.sweep.run_writer import RunWriter, sql_store
from repair_dist.sweep.tracking import (
    Tracker,
    default_tracking_uri,
    trial_metrics,
)
from tests.test_tracking import PARAMS, _barriers, _curves

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")


@pytest.fixture
def uri(mlflow_root: Path) -> str:
    return default_tracking_uri(mlflow_root)


def _histories(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, str]]]:
    """Every metric's (step, value) pairs; values as repr, so NaN equals NaN."""
    keys = client.get_run(run_id).data.metrics
    return {
        k: sorted((m.step, repr(m.value)) for m in client.get_metric_history(run_id, k))
        for k in keys
    }


def _own_tags(tags: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if k != "mlflow.parentRunId"}


def test_a_run_written_in_one_transaction_reads_back_as_the_clients_run(uri: str) -> None:
    fast = Tracker(uri, "fast", exclusive=True)  # the sweep's only writer: one transaction
    slow = Tracker(uri, "slow")  # create_run + log_batch + set_terminated
    fast_id = fast.log_trial("tk1", PARAMS, _barriers(), _curves())
    slow_id = slow.log_trial("tk1", PARAMS, _barriers(), _curves())
    assert isinstance(fast._writer, RunWriter) and slow._writer is None  # both paths taken

    client = MlflowClient(tracking_uri=uri)
    a, b = client.get_run(fast_id), client.get_run(slow_id)
    assert a.data.params == b.data.params
    assert a.data.metrics == b.data.metrics
    assert _own_tags(a.data.tags) == {**_own_tags(b.data.tags), "sweep": "fast"}
    assert a.data.tags["mlflow.parentRunId"] == fast.parent_run_id()
    assert _histories(client, fast_id) == _histories(client, slow_id)
    for field in ("status", "lifecycle_stage", "run_name", "user_id"):
        assert getattr(a.info, field) == getattr(b.info, field), field
    assert a.info.status == "FINISHED" and a.info.end_time >= a.info.start_time > 0
    experiment = client.get_experiment(a.info.experiment_id)
    assert a.info.artifact_uri == f"{experiment.artifact_location}/{fast_id}/artifacts"
    assert client.list_artifacts(fast_id) == []

    # MLflow's search (which reads the latest-metric and param tables) finds it
    wanted = trial_metrics(_barriers())["barrier_acc_mid.full"]
    query = f"metrics.`barrier_acc_mid.full` = {wanted} and params.width = '64'"
    found = client.search_runs([a.info.experiment_id], query)
    assert [r.info.run_id for r in found] == [fast_id]
    children = client.search_runs(
        [a.info.experiment_id], f"tags.mlflow.parentRunId = '{fast.parent_run_id()}'"
    )
    assert [r.info.run_id for r in children] == [fast_id]


def test_a_written_run_is_found_again_and_never_doubled(uri: str) -> None:
    first = Tracker(uri, "quick", exclusive=True).log_trial("tk1", PARAMS, _barriers(), _curves())
    resumed = Tracker(uri, "quick", exclusive=True)  # another process, after a resume
    assert resumed.log_trial("tk1", PARAMS, _barriers(), _curves()) == first
    shared = Tracker(uri, "quick")  # a non-exclusive writer searches by tag
    assert shared.log_trial("tk1", PARAMS, _barriers(), _curves()) == first
    client = MlflowClient(tracking_uri=uri)
    assert len(client.get_metric_history(first, "curve.test.full.loss")) == 3
    exp = client.get_experiment_by_name("quick").experiment_id
    assert len(client.search_runs([exp], "tags.trial_key = 'tk1'")) == 1


def test_nan_inf_and_repeated_keys_are_stored_as_mlflow_stores_them(uri: str) -> None:
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("direct")
    t = 1_700_000_000_000
    metrics = [
        Metric("m", math.nan, t, 0),
        Metric("m", math.inf, t, 1),
        Metric("m", -math.inf, t, 1),
        Metric("m", 1.5, t, 1),
        Metric("m", 1.5, t, 1),  # an exact duplicate: stored once, as MLflow does
        Metric("late", 2.0, t + 5, 0),
        Metric("late", 3.0, t, 0),
    ]
    params = [Param("p", "v")]
    store = sql_store(client)
    assert store is not None
    written = RunWriter(store, exp).write(
        {"mlflow.runName": "w"}, params, metrics, start_time=t, end_time=t
    )
    logged = client.create_run(exp, tags={"mlflow.runName": "w"}).info.run_id
    client.log_batch(logged, metrics=metrics, params=params)
    client.set_terminated(logged)

    assert _histories(client, written) == _histories(client, logged)
    latest = [client.get_run(r).data.metrics for r in (written, logged)]
    assert latest[0] == latest[1] == {"m": 1.7976931348623157e308, "late": 2.0}
    nan_value = [m.value for m in client.get_metric_history(written, "m") if m.step == 0]
    assert len(nan_value) == 1 and math.isnan(nan_value[0])


def test_a_failed_write_leaves_no_run(uri: str) -> None:
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("direct")
    store = sql_store(client)
    assert store is not None
    writer = RunWriter(store, exp)
    with pytest.raises(MlflowException, match=r"metrics\[0\]\.name"):
        writer.write({}, [], [Metric("../escape", 1.0, 1, 0)], start_time=1, end_time=1)
    with pytest.raises(MlflowException, match="Duplicate parameter keys"):
        writer.write({}, [Param("p", "1"), Param("p", "2")], [], start_time=1, end_time=1)
    # fails inside the transaction, after the run's row: the whole run is rolled back
    too_big = Metric("m", 1.0, 2**70, 0)
    with pytest.raises(MlflowException):
        writer.write(
            {"mlflow.runName": "x"}, [Param("p", "1")], [too_big], start_time=1, end_time=1
        )
    assert client.search_runs([exp]) == []


def test_only_sqlite_stores_take_the_one_transaction_path() -> None:
    assert sql_store(MlflowClient(tracking_uri="http://127.0.0.1:9")) is None


def test_a_tracker_that_wrote_runs_still_pickles(uri: str) -> None:
    """Tune pickles its callbacks, and the MLflow publisher holds a tracker."""
    import pickle

    tracker = Tracker(uri, "quick", exclusive=True)
    first = tracker.log_trial("tk1", PARAMS, _barriers(), _curves())
    copy = pickle.loads(pickle.dumps(tracker))
    assert copy.log_trial("tk1", PARAMS, _barriers(), _curves()) == first
    assert copy.log_trial("tk2", PARAMS, _barriers(), _curves()) != first
    assert isinstance(copy._writer, RunWriter)
