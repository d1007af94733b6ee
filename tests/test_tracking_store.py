"""The MLflow sqlite store survives a kill during its creation (issue 14, item 1).

MLflow creates a store in place over ~60 migrations; a process killed in between used to
leave a half-built store on which every later log failed for good. The kills here are real
SIGKILLs of a child process, landed deterministically: right after the first statement of a
batch migration (``CREATE TABLE _alembic_tmp_...``), i.e. inside a migration.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy.exc
from mlflow.tracking import MlflowClient

from repair_dist.sweep import tracking as tracking_mod
from repair_dist.sweep.tracking import Tracker, ensure_sqlite_store

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")

_KILL_INSIDE_A_MIGRATION = textwrap.dedent(
    """
    import os, signal, sys
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, "after_cursor_execute")
    def _die(conn, cursor, statement, *args):
        if "_alembic_tmp_" in statement:
            os.kill(os.getpid(), signal.SIGKILL)

    uri = sys.argv[2]
    if sys.argv[1] == "mlflow":  # MLflow's own in-place creation (as before the fix)
        from mlflow.tracking import MlflowClient
        MlflowClient(tracking_uri=uri).search_experiments()
    else:  # ours
        from repair_dist.sweep.tracking import ensure_sqlite_store
        ensure_sqlite_store(uri)
    """
)


def _create_and_get_killed(who: str, uri: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_INSIDE_A_MIGRATION, who, uri],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]  # it really died inside a migration


@pytest.fixture(autouse=True)
def _forget_checked_stores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking_mod, "_READY_STORES", set())


def _log_one_run(uri: str) -> None:
    tracker = Tracker(uri, "s")
    barriers = pd.DataFrame([{"variant": "full", "barrier_acc_mid": 0.1}])
    tracker.log_trial("t0", {"model": "mlp"}, barriers, pd.DataFrame())
    assert tracker.logged_keys("trial_key") == {"t0"}


def test_a_store_half_built_by_a_killed_creation_is_moved_aside_and_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    _create_and_get_killed("mlflow", uri)
    with pytest.raises(sqlalchemy.exc.OperationalError):  # the fault: broken for good
        MlflowClient(tracking_uri=uri).search_experiments()
    with caplog.at_level(logging.WARNING, logger=tracking_mod.__name__):
        _log_one_run(uri)
    [aside] = tmp_path.glob("mlflow.db.incomplete-*")
    [message] = [r.getMessage() for r in caplog.records if r.name == tracking_mod.__name__]
    assert "half-built" in message and str(aside) in message and "\n" not in message


def test_a_kill_during_our_creation_leaves_no_store_and_the_next_use_builds_it(
    tmp_path: Path,
) -> None:
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    _create_and_get_killed("ours", uri)
    assert not db.exists()  # nothing half-built in place: the build ran in a temporary file
    assert list(tmp_path.glob(".mlflow.db.creating-*"))  # ...which the kill left behind
    _log_one_run(uri)
    assert not list(tmp_path.glob(".mlflow.db.creating-*"))  # cleaned by the next builder


def test_a_truncated_store_is_moved_aside_and_a_complete_one_is_left_alone(
    mlflow_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = mlflow_root / "mlflow.db"
    uri = f"sqlite:///{db}"
    intact = mlflow_root.parent / "intact"
    intact.mkdir()
    shutil.copyfile(db, intact / "mlflow.db")
    inode = (intact / "mlflow.db").stat().st_ino
    ensure_sqlite_store(f"sqlite:///{intact / 'mlflow.db'}")
    assert (intact / "mlflow.db").stat().st_ino == inode  # a complete store is not touched

    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 3])  # a full disk mid-write
    with caplog.at_level(logging.WARNING, logger=tracking_mod.__name__):
        _log_one_run(uri)
    [aside] = mlflow_root.glob("mlflow.db.unreadable-*")
    assert aside.stat().st_size == len(data) // 3  # kept, not deleted
    [message] = [r.getMessage() for r in caplog.records if r.name == tracking_mod.__name__]
    assert "unreadable" in message and str(aside) in message
