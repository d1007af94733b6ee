"""A new, finished MLflow run written in one SQL transaction (sqlite stores only).

Why: through the client, a trial's run costs ``create_run`` + ``log_batch`` +
``set_terminated``, and MLflow's SQLAlchemy store turns them into six sessions, ORM objects for
every param and metric, a latest-metric merge and a re-read of the run: about 20 ms of driver
CPU per trial in isolation and ~40 ms inside a busy sweep driver, most of the driver's cost at
1,000 trials (issue 13). The rows themselves are few: one ``runs`` row, its tags, params,
metric values and the latest value per metric key. This module writes exactly those rows
through SQLAlchemy Core, against the table definitions of the installed MLflow
(``mlflow.store.tracking.dbmodels.models``), in a single transaction of MLflow's own session
maker (its sqlite pragmas and error mapping included): about 3 ms per run.

What it relies on, and why that is safe enough:

- It is used only for a run that does not exist yet, by a sweep's only writer (an
  ``exclusive`` :class:`~repair_dist.sweep.tracking.Tracker`); updating an existing run keeps
  MLflow's client, which merges with what the run holds.
- Keys and values go through MLflow's own validators and NaN/inf sanitiser; the latest value
  per key is chosen as MLflow does (greatest ``(step, timestamp, value)``).
- The store's schema is the installed MLflow's head revision (``ensure_sqlite_store`` checks
  it before any client is made), and ``tests/test_run_writer.py`` proves that a run written
  here reads back through MLflow's client (``get_run``, metric histories, ``search_runs``
  filters) exactly as the same run logged through the client does.
- Other stores (an MLflow server over HTTP, Postgres, MySQL) get ``None`` from
  :func:`sql_store` and keep the client path.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # mlflow is imported lazily: it costs seconds and only trackers need it
    from mlflow.entities import Metric, Param
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking import MlflowClient


def sql_store(client: MlflowClient) -> SqlAlchemyStore | None:
    """The client's store when it is MLflow's SQLAlchemy store on a sqlite file, else None."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    if isinstance(store, SqlAlchemyStore) and getattr(store, "db_type", None) == "sqlite":
        return store
    return None


class RunWriter:
    """Writes new finished runs into one experiment of a sqlite MLflow store."""

    def __init__(self, store: SqlAlchemyStore, experiment_id: str) -> None:
        from mlflow.entities import LifecycleStage

        experiment = store.get_experiment(experiment_id)
        if experiment.lifecycle_stage != LifecycleStage.ACTIVE:
            raise ValueError(f"MLflow experiment {experiment_id} is not active")
        self.store = store
        self.experiment_id = experiment_id
        self._artifact_location = experiment.artifact_location

    def write(
        self,
        tags: Mapping[str, str],
        params: Sequence[Param],
        metrics: Sequence[Metric],
        *,
        start_time: int,
        end_time: int,
        status: str = "FINISHED",
    ) -> str:
        """Create the run with its tags, params and metrics, ended with ``status``; its id.

        All or nothing: a failure (a bad key, a locked database) leaves no run behind and
        raises MLflow's exception, as the client would.
        """
        from mlflow.entities import LifecycleStage, RunStatus, RunTag, SourceType
        from mlflow.store.tracking.dbmodels.models import (
            SqlLatestMetric,
            SqlMetric,
            SqlParam,
            SqlRun,
            SqlTag,
        )
        from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME, MLFLOW_USER
        from mlflow.utils.uri import append_to_uri_path
        from mlflow.utils.validation import (
            _validate_batch_log_data,
            _validate_param_keys_unique,
        )
        from sqlalchemy import insert

        RunStatus.from_string(status)  # raises on an unknown status
        run_tags = [RunTag(str(k), str(v)) for k, v in tags.items()]
        metrics, params, run_tags = _validate_batch_log_data(list(metrics), list(params), run_tags)
        _validate_param_keys_unique(params)
        run_id = uuid.uuid4().hex
        run_name = dict(tags).get(MLFLOW_RUN_NAME) or run_id
        if MLFLOW_RUN_NAME not in tags:
            run_tags.append(RunTag(MLFLOW_RUN_NAME, run_name))
        values = self._metric_rows(run_id, metrics)
        with self.store.ManagedSessionMaker(read_only=False) as session:
            session.execute(
                insert(SqlRun.__table__),
                [
                    {
                        "run_uuid": run_id,
                        "name": run_name,
                        "source_type": SourceType.to_string(SourceType.UNKNOWN),
                        "source_name": "",
                        "entry_point_name": "",
                        "user_id": dict(tags).get(MLFLOW_USER, "unknown"),
                        "status": status,
                        "start_time": start_time,
                        "end_time": end_time,
                        "deleted_time": None,
                        "source_version": "",
                        "lifecycle_stage": LifecycleStage.ACTIVE,
                        "artifact_uri": append_to_uri_path(
                            self._artifact_location, run_id, self.store.ARTIFACTS_FOLDER_NAME
                        ),
                        "experiment_id": int(self.experiment_id),
                    }
                ],
            )
            rows = {
                SqlTag: [{"run_uuid": run_id, "key": t.key, "value": t.value} for t in run_tags],
                SqlParam: [{"run_uuid": run_id, "key": p.key, "value": p.value} for p in params],
                SqlMetric: values,
                SqlLatestMetric: list(_latest(values).values()),
            }
            for model, table_rows in rows.items():
                if table_rows:
                    session.execute(insert(model.__table__), table_rows)
        return run_id

    def _metric_rows(self, run_id: str, metrics: Sequence[Metric]) -> list[dict[str, Any]]:
        """One row per distinct metric value, NaN/inf sanitised as MLflow stores them."""
        rows: dict[tuple[str, int, int, float, bool], dict[str, Any]] = {}
        for m in metrics:
            is_nan, value = self.store.sanitize_metric_value(float(m.value))
            ident = (m.key, int(m.timestamp), int(m.step or 0), value, is_nan)
            rows.setdefault(
                ident,
                {
                    "run_uuid": run_id,
                    "key": m.key,
                    "value": value,
                    "timestamp": int(m.timestamp),
                    "step": int(m.step or 0),
                    "is_nan": is_nan,
                },
            )
        return list(rows.values())


def _latest(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per key, the value MLflow keeps as latest: greatest (step, timestamp, value)."""
    latest: dict[str, dict[str, Any]] = {}
    for row in rows:
        old = latest.get(row["key"])
        if old is None or (row["step"], row["timestamp"], row["value"]) > (
            old["step"],
            old["timestamp"],
            old["value"],
        ):
            latest[row["key"]] = row
    return latest


__all__ = ["RunWriter", "sql_store"]
