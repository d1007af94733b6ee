"""MLflow tracking of sweeps (DESIGN.md §5): a view of the Parquet results, never the record.

Layout: experiment = sweep name; one parent run per sweep (tag ``sweep_parent=<sweep>``); one
child run per trial (tag ``trial_key``). Endpoints get no runs: DESIGN.md §5 promises trials
only, and the ``endpoints`` Parquet table is their record. MLflow never
deduplicates runs, so every run is looked up by its tag before one is created, and after
creating one the lookup is repeated: if two processes raced, the oldest run wins and the
others are deleted. A resumed sweep therefore reuses its runs instead of duplicating them.

Parquet files are the results of record; MLflow is a convenience for browsing. Logging is
idempotent (a reused run only receives the params and metrics it does not have yet, so
metric histories never double), fails fast (no HTTP retries, a short timeout) and raises
:class:`TrackingUnavailable`, which the runner catches so that an MLflow outage never fails
a trial; :func:`sync_from_parquet` later backfills whatever is missing.

Every call goes through an explicit :class:`~mlflow.tracking.MlflowClient` with an explicit
tracking URI; nothing relies on MLflow's global active run, because trials log from parallel
processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..location import SAFE_NAME, TABLES, Location
from .results import (
    TRIAL_ID_COLUMNS,
    TRIAL_PARAMS_KEY,
    TRIAL_RUN_NAME_KEY,
    TRIAL_TABLES,
    read_table,
)

# No usage reporting from MLflow (its UI shows a banner otherwise); read per call by MLflow.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

if TYPE_CHECKING:  # mlflow is imported lazily: it costs seconds and only trackers need it
    from mlflow.tracking import MlflowClient

    from .run_writer import RunWriter

#: Tag of the per-sweep parent run.
PARENT_TAG = "sweep_parent"
#: Metrics of a trial that do not depend on the variant (logged once, without a suffix).
ENDPOINT_METRICS = ("acc_a", "acc_b", "loss_a", "loss_b", "seconds")
#: Per-variant metrics, logged as ``<metric>.<variant>``; also any ``barrier_*``/``reduction_*``.
VARIANT_METRICS = (
    "acc_mid",
    "loss_mid",
    "barrier_acc_mid",
    "barrier_loss_mid",
    "barrier_acc_max",
    "barrier_loss_max",
    "reduction_vs_aligned",
    "reduction_loss_vs_aligned",
)
#: Columns of the trials table that become params of a backfilled run.
_PARAM_COLUMNS = (
    "sweep",
    "trial_key",
    *TRIAL_ID_COLUMNS,
    "method",
    "seed_a",
    "seed_b",
    "endpoint_a",
    "endpoint_b",
    "residual",
)
_MAX_METRICS, _MAX_PARAMS, _MAX_PARAM_LEN = 1000, 100, 6000
_ENV_LOCK = threading.RLock()
log = logging.getLogger(__name__)
#: sqlite stores checked complete (or built) by this process: checked once, not per call.
_READY_STORES: set[str] = set()


class TrackingUnavailable(RuntimeError):
    """MLflow could not be reached or refused a write; the results in Parquet are unaffected."""


def _local_root(root: str | os.PathLike | Location) -> Location:
    loc = Location.of(root)
    if not loc.local:
        raise ValueError(
            f"results root {loc.uri} is not on this machine: the default MLflow store is a "
            "sqlite file under a local root; pass --tracking-uri (e.g. an MLflow server)"
        )
    return loc


def default_tracking_uri(root: str | os.PathLike | Location) -> str:
    """``sqlite:///<abs root>/mlflow.db`` (MLflow 3 refuses plain file stores); creates root.

    ValueError for a root that is not local (sqlite needs a local file).
    """
    loc = _local_root(root).makedirs()
    return loc.mlflow_uri  # type: ignore[return-value]


def default_artifact_root(root: str | os.PathLike | Location) -> str:
    """``<abs root>/mlartifacts``: where runs of a local store keep their files."""
    return _local_root(root).mlflow_artifacts  # type: ignore[return-value]


def _sqlite_root(uri: str) -> Path | None:
    """The directory holding the database of a ``sqlite:///`` URI (None for other stores)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :]).parent


# ---- the sqlite store: built atomically ----------------------------------------------------


def _latest_schema_revision() -> str:
    """MLflow's newest schema revision (its own helper; private, so used in one place)."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    return _get_latest_schema_revision()


def _forget_engine(uri: str) -> None:
    """Drop MLflow's per-process engine of ``uri``: its pooled connections would follow a
    moved-aside file (MLflow's own cache; private, so touched in this one place)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    with SqlAlchemyStore._engine_map_lock:
        engine = SqlAlchemyStore._engine_map.pop(uri, None)
    if engine is not None:
        engine.dispose()


def _store_state(path: Path, head: str) -> tuple[str, str]:
    """``(state, detail)``: ``absent``, ``ready``, ``incomplete`` (an interrupted creation:
    schema short of ``head`` and no runs to lose), ``unreadable``, or ``other`` (an older
    store with runs: left to MLflow, whose message asks for ``mlflow db upgrade``)."""
    if not path.exists():
        return "absent", ""
    if path.stat().st_size == 0:
        return "incomplete", "an empty file"
    try:  # read-write, so that sqlite rolls back a hot journal left by a killed writer
        with contextlib.closing(sqlite3.connect(path, timeout=60)) as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            version = None
            if "alembic_version" in tables:
                row = db.execute("SELECT version_num FROM alembic_version").fetchone()
                version = row[0] if row else None
            leftovers = any(t.startswith("_alembic_tmp") for t in tables)
            if version == head and not leftovers:
                return "ready", ""
            runs = db.execute("SELECT count(*) FROM runs").fetchone()[0] if "runs" in tables else 0
    except sqlite3.DatabaseError as err:
        if getattr(err, "sqlite_errorcode", None) not in (
            sqlite3.SQLITE_NOTADB,
            sqlite3.SQLITE_CORRUPT,
        ):
            raise  # locked, unwritable...: a problem of access, not of the store
        return "unreadable", f"not a readable sqlite database ({err})"
    detail = f"schema {version or 'none'} of {head}, {len(tables)} tables"
    return ("incomplete" if runs == 0 else "other"), detail


def _build_store(path: Path, artifact_root: str) -> None:
    """Create and migrate a store in a temporary file beside ``path``, then link it into
    place: a kill or a full disk mid-creation leaves no half-built ``path`` behind."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    tmp = path.with_name(f".{path.name}.creating-{os.getpid()}-{secrets.token_hex(4)}")
    # MLflow announces its table creation at INFO in every new sweep's output: not news.
    chatty = logging.getLogger("mlflow.store.db.utils")
    level = chatty.level
    chatty.setLevel(logging.WARNING)
    try:
        SqlAlchemyStore(f"sqlite:///{tmp}", artifact_root)
        _forget_engine(f"sqlite:///{tmp}")
        try:
            os.link(tmp, path)  # never replaces a store someone else made meanwhile
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links
            os.replace(tmp, path)
    finally:
        chatty.setLevel(level)
        tmp.unlink(missing_ok=True)


def ensure_sqlite_store(uri: str) -> None:
    """Make sure the ``sqlite:///`` store of ``uri`` exists complete (other URIs: no-op).

    Why: MLflow creates a store in place, running ~60 migrations over seconds; a kill or a
    full disk in between left a half-built store on which every later log and
    ``sync-mlflow`` failed for good. Here a new store is built aside and linked into place
    under a file lock (parallel trackers build it once), and a store left half-built
    earlier, which holds no runs, is moved aside with one warning and rebuilt.
    """
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///") :]).absolute()
    if str(path) in _READY_STORES:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    head = _latest_schema_revision()
    lock = path.with_name(f".{path.name}.lock")
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # released by the kernel if this process dies
        for orphan in path.parent.glob(f".{path.name}.creating-*"):  # from a killed builder
            orphan.unlink(missing_ok=True)
        state, detail = _store_state(path, head)
        if state in ("incomplete", "unreadable"):
            aside = path.with_name(f"{path.name}.{state}-{time.strftime('%Y%m%d-%H%M%S')}")
            _forget_engine(uri)
            os.replace(path, aside)
            for suffix in ("-journal", "-wal", "-shm"):  # its sqlite side files go with it
                with contextlib.suppress(FileNotFoundError):
                    os.replace(f"{path}{suffix}", f"{aside}{suffix}")
            log.warning(
                "MLflow store %s was %s (%s; an interrupted creation?): moved it to %s and "
                "built a new one; `repair-dist sync-mlflow` backfills runs from Parquet",
                path,
                "half-built" if state == "incomplete" else "unreadable",
                detail,
                aside,
            )
        if state not in ("ready", "other"):
            _build_store(path, default_artifact_root(path.parent))
    _READY_STORES.add(str(path))


def _check_safe(what: str, value: str) -> str:
    # Values go into MLflow filter strings between single quotes, which cannot be escaped.
    if not isinstance(value, str) or not SAFE_NAME.match(value):
        raise ValueError(f"{what} {value!r}: use letters, digits and _ . + - only")
    return value


@contextlib.contextmanager
def _fail_fast(timeout: float, max_retries: int) -> Iterator[None]:
    """No retries and a short timeout for MLflow's HTTP calls while inside (env vars are
    read per request); serialised, because the environment is process-wide."""
    settings = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(max_retries),
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, math.ceil(timeout))),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
    }
    with _ENV_LOCK:
        saved = {k: os.environ.get(k) for k in settings}
        os.environ.update(settings)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _now_ms() -> int:
    return int(time.time() * 1000)


def _finite(x: object) -> float | None:
    try:
        v = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _param_value(v: object) -> str:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v)[:_MAX_PARAM_LEN]


def trial_metrics(barriers: pd.DataFrame) -> dict[str, float]:
    """``{name: value}`` from one row per variant: ``barrier_acc_mid.<variant>`` etc.

    Variant-independent values (endpoint accuracies and losses, seconds) come once, without a
    suffix. Non-finite values (a reduction undefined for a zero barrier) are left out.
    """
    if "variant" not in barriers.columns:
        raise ValueError("barriers need a 'variant' column (one row per variant)")
    out: dict[str, float] = {}
    per_variant = [
        c
        for c in barriers.columns
        if c in VARIANT_METRICS or c.startswith(("barrier_", "reduction_"))
    ]
    for _, row in barriers.iterrows():
        variant = str(row["variant"])
        for col in per_variant:
            v = _finite(row[col])
            if v is not None:
                out[f"{col}.{variant}"] = v
        for col in ENDPOINT_METRICS:
            v = _finite(row[col]) if col in barriers.columns else None
            if v is not None:
                out.setdefault(col, v)
    return out


def curve_metrics(curves: pd.DataFrame) -> list[tuple[str, float, int]]:
    """``(name, value, step)`` with step = index of alpha in the sorted alphas of the curve.

    Names: ``curve.<split>.<variant>.loss`` / ``.acc``, plus ``curve.alpha`` (step -> alpha),
    so a chart of a step metric reads against alpha.
    """
    if curves.empty:
        return []
    missing = [c for c in ("variant", "alpha", "split", "loss", "acc") if c not in curves.columns]
    if missing:
        raise ValueError(f"curves lack column(s) {', '.join(missing)}")
    alphas = sorted({float(a) for a in curves["alpha"]})
    step = {a: i for i, a in enumerate(alphas)}
    out = [("curve.alpha", a, i) for i, a in enumerate(alphas)]
    for row in curves.itertuples(index=False):
        for what in ("loss", "acc"):
            v = _finite(getattr(row, what))
            if v is not None:
                name = f"curve.{row.split}.{row.variant}.{what}"
                out.append((name, v, step[float(row.alpha)]))
    return out


def _artifact_dir(path: Path) -> str | None:
    """``<table>`` for a results file (``.../<table>/sweep=<s>/<key>.parquet``), else None.

    A trial's Parquet files are all named ``<trial_key>.parquet``; filing them under their
    table's name keeps them from overwriting each other in the run's artifacts.
    """
    parent = path.parent
    if parent.name.startswith("sweep=") and parent.parent.name in TABLES:
        return parent.parent.name
    return None


def _run_name(params: Mapping[str, Any], key: str) -> str:
    parts = []
    for field, prefix in (("model", ""), ("width", "w"), ("depth", "d"), ("norm", "")):
        v = params.get(field)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            parts.append(f"{prefix}{_param_value(v)}")
    if params.get("seed_a") is not None and params.get("seed_b") is not None:
        parts.append(f"s{_param_value(params['seed_a'])}s{_param_value(params['seed_b'])}")
    if params.get("method"):
        parts.append(str(params["method"]))
    return "-".join(parts) if parts else key


class Tracker:
    """MLflow logging for one sweep through an explicit client (safe in parallel processes).

    ``artifact_root`` defaults to ``<store dir>/mlartifacts`` for a ``sqlite:///`` URI (the
    server decides otherwise). Each MLflow call runs with ``max_retries`` HTTP retries and a
    ``timeout`` in seconds; any failure raises :class:`TrackingUnavailable`.
    """

    def __init__(
        self,
        tracking_uri: str,
        sweep: str,
        *,
        artifact_root: str | os.PathLike | None = None,
        timeout: float = 10.0,
        max_retries: int = 0,
        exclusive: bool = False,
    ) -> None:
        self.tracking_uri = tracking_uri
        #: True when this process is the only writer of the sweep's runs (it holds the
        #: sweep's lock): runs are then found in one tag -> run map built on first use, not
        #: by two searches per run (the race check is only needed between writers).
        self.exclusive = exclusive
        self._run_map: dict[str, str] | None = None
        #: writes a new run in one transaction (sqlite stores, exclusive trackers); None
        #: until first needed, False where the store does not allow it
        self._writer: RunWriter | bool | None = None
        self.sweep = _check_safe("sweep name", sweep)
        if artifact_root is None and (root := _sqlite_root(tracking_uri)) is not None:
            artifact_root = default_artifact_root(root)
        self.artifact_root = None if artifact_root is None else os.fspath(artifact_root)
        self.timeout = timeout
        self.max_retries = max_retries
        self._client_obj: MlflowClient | None = None
        self._experiment: str | None = None
        self._parent: str | None = None

    def __repr__(self) -> str:
        return f"Tracker({self.tracking_uri!r}, {self.sweep!r})"

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (Tune pickles the callbacks holding a tracker): the client and the run
        writer hold this process's database connections, so a copy opens its own."""
        return {**self.__dict__, "_client_obj": None, "_writer": None}

    # -- plumbing --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _guard(self, doing: str) -> Iterator[None]:
        with _fail_fast(self.timeout, self.max_retries):
            try:
                yield
            except TrackingUnavailable:
                raise
            except Exception as e:  # connection, HTTP, database and MLflow errors alike
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                raise TrackingUnavailable(
                    f"MLflow at {self.tracking_uri} failed while {doing}: "
                    f"{type(e).__name__}: {first[:300]}"
                ) from e

    @property
    def _client(self) -> MlflowClient:
        if self._client_obj is None:
            from mlflow.tracking import MlflowClient

            ensure_sqlite_store(self.tracking_uri)
            self._client_obj = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client_obj

    def experiment_id(self) -> str:
        """Id of the experiment named after the sweep (created, or restored, on first use)."""
        if self._experiment is not None:
            return self._experiment
        with self._guard(f"opening experiment {self.sweep!r}"):
            self._experiment = self._get_or_create_experiment()
        return self._experiment

    def _get_or_create_experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        client = self._client
        found = client.get_experiment_by_name(self.sweep)
        if found is None:
            location = None
            if self.artifact_root is not None:
                location = str(Path(self.artifact_root) / self.sweep)
            try:
                return client.create_experiment(
                    self.sweep, artifact_location=location, tags={"repair_dist.sweep": self.sweep}
                )
            except MlflowException:  # created by a parallel process in between
                found = client.get_experiment_by_name(self.sweep)
                if found is None:
                    raise
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        return found.experiment_id

    def _search_all(self, filter_string: str) -> list:
        """Every active run of this experiment matching ``filter_string`` (all pages)."""
        runs, token = [], None
        while True:
            page = self._client.search_runs(
                [self.experiment_id()],
                filter_string=filter_string,
                max_results=1000,
                page_token=token,
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def _search(self, tag: str, value: str) -> list:
        """Active runs of this experiment with ``tags.<tag> = value``, oldest first."""
        runs = self._search_all(f"tags.{tag} = '{_check_safe(tag, value)}'")
        return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))

    def _get_or_create_run(self, tag: str, value: str, tags: Mapping[str, str]) -> tuple[str, bool]:
        """(run id, created) of the run tagged ``tag=value``; races resolve to the oldest run."""
        if self.exclusive and tag == "trial_key":
            return self._get_or_create_exclusive(value, tags)
        existing = self._search(tag, value)
        if existing:
            return existing[0].info.run_id, False
        run = self._client.create_run(self.experiment_id(), tags={tag: value, **tags})
        mine = run.info.run_id
        winner = self._search(tag, value)[0].info.run_id
        if winner != mine:
            self._client.delete_run(mine)
            return winner, False
        return mine, True

    def _runs_by_key(self) -> dict[str, str]:
        """trial_key -> run id of this sweep's runs, built once (one paged query); where two
        runs share a key (an old race), the oldest, as :meth:`_get_or_create_run` picks."""
        if self._run_map is None:
            runs = sorted(
                self._search_all("tags.trial_key != ''"),
                key=lambda r: (r.info.start_time or 0, r.info.run_id),
            )
            found: dict[str, str] = {}
            for run in runs:
                found.setdefault(run.data.tags["trial_key"], run.info.run_id)
            self._run_map = found
        return self._run_map

    def _get_or_create_exclusive(self, value: str, tags: Mapping[str, str]) -> tuple[str, bool]:
        """As :meth:`_get_or_create_run`, for the sweep's only writer: one map, no searches."""
        runs = self._runs_by_key()
        if value in runs:
            return runs[value], False
        run = self._client.create_run(self.experiment_id(), tags={"trial_key": value, **tags})
        runs[value] = run.info.run_id
        return run.info.run_id, True

    # -- public API ------------------------------------------------------------------------

    def parent_run_id(self) -> str:
        """The sweep's parent run (tag ``sweep_parent=<sweep>``), created on first use."""
        if self._parent is None:
            with self._guard(f"finding the parent run of {self.sweep!r}"):
                self._parent, _ = self._get_or_create_run(
                    PARENT_TAG, self.sweep, {"mlflow.runName": self.sweep}
                )
        return self._parent

    def finish(self, status: str = "FINISHED") -> None:
        """Mark the sweep's parent run ``status`` (FINISHED, FAILED, KILLED) at the sweep's end.

        A resumed sweep logs into the same parent again; MLflow lets a finished run take
        more children, so the status only tells how the latest attempt ended.
        """
        parent = self.parent_run_id()
        with self._guard(f"closing the parent run of {self.sweep!r}"):
            self._client.set_terminated(parent, status)

    def close_if_running(self, status: str = "FINISHED") -> None:
        """Mark the parent run ``status`` unless it already ended (a backfill's last step)."""
        parent = self.parent_run_id()
        with self._guard(f"closing the parent run of {self.sweep!r}"):
            if self._client.get_run(parent).info.status == "RUNNING":
                self._client.set_terminated(parent, status)

    def log_parent_artifacts(self, paths: Sequence[str | os.PathLike], directory: str) -> None:
        """Attach sweep-level files (the summary figures) to the parent run, under
        ``directory``; logging them again replaces them."""
        parent = self.parent_run_id()
        with self._guard(f"attaching {directory} to the parent run of {self.sweep!r}"):
            for path in paths:
                self._client.log_artifact(parent, os.fspath(path), directory)

    def logged_keys(self, tag: str = "trial_key") -> set[str]:
        """Every value of ``tag`` among this sweep's active runs (one paged query; for the
        sweep's only writer, the run map it keeps)."""
        if self.exclusive and tag == "trial_key":
            with self._guard(f"listing {tag}s"):
                return set(self._runs_by_key())
        with self._guard(f"listing {tag}s"):
            runs = self._search_all(f"tags.{tag} != ''")
        return {r.data.tags[tag] for r in runs if tag in r.data.tags}

    def log_trial(
        self,
        trial_key: str,
        params: Mapping[str, Any],
        barriers: pd.DataFrame,
        curves: pd.DataFrame,
        artifacts: Sequence[str | os.PathLike] = (),
        *,
        run_name: str | None = None,
    ) -> str:
        """Log one trial into its child run (found by tag ``trial_key``, else created).

        ``barriers``: one row per variant (``barrier_*``, ``acc_mid``, ``loss_mid``,
        ``reduction_vs_aligned`` ...); ``curves``: ``variant, alpha, split, loss, acc``.
        ``artifacts``: files to attach; results-table files go under their table's name
        (``trials/<key>.parquet``, ``curves/<key>.parquet``), others at the top.
        Returns the run id. Raises TrackingUnavailable when MLflow fails.
        """
        run_id, _ = self._log_child(
            "trial_key",
            trial_key,
            params,
            trial_metrics(barriers),
            curve_metrics(curves),
            artifacts,
            run_name,
        )
        return run_id

    def _log_child(
        self,
        tag: str,
        key: str,
        params: Mapping[str, Any],
        metrics: Mapping[str, float],
        steps: Iterable[tuple[str, float, int]],
        artifacts: Sequence[str | os.PathLike],
        run_name: str | None,
        extra_tags: Mapping[str, str] | None = None,
    ) -> tuple[str, bool]:
        _check_safe(tag, key)
        files = [Path(a) for a in artifacts]
        absent = [str(f) for f in files if not f.is_file()]
        if absent:
            raise FileNotFoundError(f"artifacts to log do not exist: {', '.join(absent)}")
        steps = list(steps)
        with self._guard(f"logging {tag}={key}"):
            parent = self.parent_run_id()
            tags = {
                "mlflow.parentRunId": parent,
                "mlflow.runName": run_name or _run_name(params, key),
                "sweep": self.sweep,
                "kind": tag.removesuffix("_key"),
                **(extra_tags or {}),
            }
            if not files and (writer := self._new_run_writer(tag, key)) is not None:
                now = _now_ms()
                run_id = writer.write(
                    tags | {tag: key},
                    _params(params),
                    _metrics(metrics, steps, now),
                    start_time=now,
                    end_time=now,
                )
                self._runs_by_key()[key] = run_id
                return run_id, True
            run_id, created = self._get_or_create_run(tag, key, tags)
            self._write(run_id, created, params, metrics, steps)
            for f in files:
                self._client.log_artifact(run_id, str(f), _artifact_dir(f))
            self._client.set_terminated(run_id, "FINISHED")
        return run_id, created

    def _new_run_writer(self, tag: str, key: str) -> RunWriter | None:
        """The one-transaction writer, when this tracker may use it for run ``tag=key``: the
        sweep's only writer, a run that does not exist yet, a sqlite store."""
        if not (self.exclusive and tag == "trial_key") or key in self._runs_by_key():
            return None
        if self._writer is None:
            from .run_writer import RunWriter, sql_store

            store = sql_store(self._client)
            self._writer = False if store is None else RunWriter(store, self.experiment_id())
        return self._writer or None

    def _write(
        self,
        run_id: str,
        created: bool,
        params: Mapping[str, Any],
        metrics: Mapping[str, float],
        steps: list[tuple[str, float, int]],
    ) -> None:
        """Params and metrics the run lacks (all of them for a new run), in MLflow's batches."""
        have_params: Mapping[str, str] = {}
        have_metrics: set[str] = set()
        if not created:
            data = self._client.get_run(run_id).data
            have_params, have_metrics = data.params, set(data.metrics)
        new_params = [p for p in _params(params) if p.key not in have_params]
        new_metrics = [m for m in _metrics(metrics, steps, _now_ms()) if m.key not in have_metrics]
        # As few calls as MLflow's limits allow (a call is a database transaction): a trial's
        # params and metrics usually fit in one.
        while new_params or new_metrics:
            params_now, new_params = new_params[:_MAX_PARAMS], new_params[_MAX_PARAMS:]
            room = _MAX_METRICS - len(params_now)
            metrics_now, new_metrics = new_metrics[:room], new_metrics[room:]
            self._client.log_batch(run_id, params=params_now, metrics=metrics_now)


def _params(params: Mapping[str, Any]) -> list:
    """MLflow params of a run, values as strings within MLflow's length limit."""
    from mlflow.entities import Param

    return [Param(str(k), _param_value(v)) for k, v in params.items()]


def _metrics(
    metrics: Mapping[str, float], steps: Iterable[tuple[str, float, int]], now: int
) -> list:
    """MLflow metrics of a run: summary values at step 0, then the step (curve) values."""
    from mlflow.entities import Metric

    out = [Metric(k, v, now, 0) for k, v in metrics.items()]
    return out + [Metric(k, v, now, s) for k, v, s in steps]


# --------------------------------------------------------------------------------------------
# backfill from Parquet
# --------------------------------------------------------------------------------------------


def _trial_params(rows: pd.DataFrame, epochs: Mapping[str, int]) -> dict[str, Any]:
    first = rows.iloc[0]
    params = {c: first[c] for c in _PARAM_COLUMNS if c in rows.columns and pd.notna(first[c])}
    if "depth" in rows.columns and pd.isna(first["depth"]):
        params["depth"] = None
    if first.get("endpoint_a") in epochs:
        params["epochs"] = epochs[first["endpoint_a"]]
    return params


def results_tags(root: str | os.PathLike | Location, tables: Sequence[str]) -> dict[str, str]:
    """Tags saying where a run's rows live: the results root and the tables holding rows of
    its ``trial_key``. Runs point at their rows instead of copying files into artifacts:
    copies cost the driver four file writes per trial and go stale when a sweep's tables
    are compacted (``repair-dist results SWEEP --root ROOT`` reads them)."""
    return {"results.root": Location.of(root).uri, "results.tables": ",".join(tables)}


def _logged_as_live(
    meta: Mapping[str, str], rows: pd.DataFrame, epochs: Mapping[str, int]
) -> tuple[dict[str, Any], str | None]:
    """(params, run name) exactly as the live run logged them, from the trial's metadata.

    Trials store their MLflow params with their ``trials`` rows; rows written before that
    carry only the table's columns, which give a subset (the old behaviour).
    """
    if TRIAL_PARAMS_KEY in meta:
        return json.loads(meta[TRIAL_PARAMS_KEY]), meta.get(TRIAL_RUN_NAME_KEY)
    return _trial_params(rows, epochs), None


def _sync_study_units(
    results_root: str | os.PathLike | Location,
    tracking_uri: str,
    sweep: str | None,
    lock: bool,
    tracker_options: Mapping[str, Any],
) -> int:
    """Backfill the runs of study units (curves, pruning, ...) that have none, as live runs.

    A unit's last table holds its params, run name and study (written by the unit); its
    metrics come from the study's own :meth:`~repair_dist.sweep.studies.Study.mlflow` over
    its rows, so a backfilled unit equals a live one. Returns the number of runs created.
    """
    from .lock import SweepLock
    from .results import STUDY_KEY, partitions, unit_metadata, unit_rows
    from .studies import STUDIES

    loc = Location.of(results_root)
    units: dict[str, list[tuple[str, Any, dict]]] = {}  # sweep -> [(key, study, metadata)]
    for st in STUDIES.values():
        for part in partitions(loc, st.tables[-1], sweep):
            for key, meta in unit_metadata(loc, st.tables[-1], part.sweep).items():
                if meta.get(STUDY_KEY) == st.name:  # not a merge trial's rows
                    units.setdefault(part.sweep, []).append((key, st, meta))
    created = 0
    for name, found in sorted(units.items()):
        with contextlib.ExitStack() as held:
            if lock:
                _hold(held, SweepLock(results_root, name))
            tracker = Tracker(tracking_uri, name, **{"exclusive": True, **tracker_options})
            logged = tracker.logged_keys("trial_key")
            for key, st, meta in sorted(found, key=lambda f: f[0]):
                if key in logged:
                    continue
                frames = {t: unit_rows(loc, t, name, key) for t in st.tables}
                metrics, steps = st.mlflow(frames)
                _, was_created = tracker._log_child(
                    "trial_key",
                    key,
                    json.loads(meta[TRIAL_PARAMS_KEY]),
                    metrics,
                    steps,
                    (),
                    meta.get(TRIAL_RUN_NAME_KEY),
                    {"study": st.name, **results_tags(loc, st.tables)},
                )
                created += int(was_created)
                logged.add(key)
    return created


# ---- "everything is logged": a marker, so a finished sweep's rerun opens no MLflow ---------


def _synced_marker(root: str | os.PathLike | Location, sweep: str) -> Location:
    return Location.of(root).child("state", f"sweep={_check_safe('sweep name', sweep)}")


def _store_identity(tracking_uri: str) -> list[int] | None:
    """A sqlite store's file identity (inode, size, mtime): a store replaced or written to
    since the marker was made no longer matches. Servers: None (the URI and keys only)."""
    path = _sqlite_root(tracking_uri)
    if path is None:
        return None
    db = Path(tracking_uri[len("sqlite:///") :])
    try:
        st = db.stat()
    except OSError:
        return [-1]
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def _synced_record(tracking_uri: str, keys: Iterable[str]) -> dict[str, Any]:
    import hashlib

    digest = hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()
    return {"tracking_uri": tracking_uri, "keys": digest, "store": _store_identity(tracking_uri)}


def mark_mlflow_synced(
    root: str | os.PathLike | Location, sweep: str, tracking_uri: str, keys: Iterable[str]
) -> None:
    """Record that every run of ``keys`` is in ``tracking_uri`` and the parent is closed.

    Why: proving it again costs an MLflow import, a store open and a search over every run
    (seconds at thousands of trials) on each rerun of a finished sweep. The marker lives in
    the results root; a best effort (a root that refuses it only costs the next rerun time).
    """
    marker = _synced_marker(root, sweep)
    try:
        marker.makedirs()
        with marker.fs.open_output_stream(marker.join("mlflow.json")) as out:
            out.write(json.dumps(_synced_record(tracking_uri, keys)).encode())
    except OSError as err:
        log.debug("could not write the MLflow marker of %s: %s", sweep, err)


def mlflow_synced(
    root: str | os.PathLike | Location, sweep: str, tracking_uri: str, keys: Iterable[str]
) -> bool:
    """True when :func:`mark_mlflow_synced` recorded exactly these keys in this same store.

    Runs deleted in the MLflow UI afterwards are not noticed; ``repair-dist sync-mlflow``
    (which always searches) restores them.
    """
    marker = _synced_marker(root, sweep)
    try:
        with marker.fs.open_input_stream(marker.join("mlflow.json")) as f:
            recorded = json.loads(f.read().decode())
    except (OSError, ValueError):
        return False
    return recorded == _synced_record(tracking_uri, keys)


def _hold(stack: contextlib.ExitStack, lock: Any) -> None:
    """Hold ``lock`` for the stack's life; a root that cannot take a lock file (a read-only
    copy of results) is synced without one, with a warning."""
    try:
        stack.enter_context(lock)
    except OSError as err:
        log.warning("syncing without the sweep lock %s: %s", lock, err)


def sync_from_parquet(
    results_root: str | os.PathLike | Location,
    tracking_uri: str,
    sweep: str | None = None,
    *,
    lock: bool = True,
    close_parent: bool = True,
    **tracker_options: Any,
) -> int:
    """Create the MLflow runs of trials in the Parquet tables that have none yet.

    For a sweep whose logging failed (MLflow down, a crash between the Parquet write and the
    MLflow call) or that ran without tracking. Looks trials up by their ``trial_key`` tag, so
    running it again creates nothing. Returns the number of runs created. Local results roots
    also attach the trial's Parquet files as artifacts. A backfilled run is the run the live
    sweep would have made: same params, metrics, tags and run name.

    ``lock``: hold each sweep's lock (:class:`~repair_dist.sweep.lock.SweepLock`) while
    syncing it, so a backfill never races a running sweep's own logging (SweepLocked then);
    the runner, which holds the lock already, passes False. ``close_parent``: mark a parent
    run left RUNNING as FINISHED (the runner sets the status itself).
    """
    from .lock import SweepLock
    from .results import STUDY_KEY, unit_metadata

    trials = read_table(results_root, "trials", sweep)
    created = _sync_study_units(results_root, tracking_uri, sweep, lock, tracker_options)
    if trials.empty:
        return created
    curves = read_table(results_root, "curves", sweep)
    endpoints = read_table(results_root, "endpoints", sweep, columns=["endpoint_key", "epochs"])
    epochs = dict(zip(endpoints["endpoint_key"], endpoints["epochs"], strict=True))
    for name, rows in trials.groupby("sweep", sort=True):
        with contextlib.ExitStack() as held:
            if lock:
                _hold(held, SweepLock(results_root, str(name)))
            tracker = Tracker(tracking_uri, str(name), **{"exclusive": True, **tracker_options})
            logged = tracker.logged_keys("trial_key")
            metadata = unit_metadata(results_root, "trials", str(name))
            sweep_curves = curves[curves["sweep"] == name]
            for key, group in rows.groupby("trial_key", sort=True):
                meta = metadata.get(str(key), {})
                if key in logged or STUDY_KEY in meta:  # a study unit's rows: synced above
                    continue
                params, run_name = _logged_as_live(meta, group, epochs)
                _, was_created = tracker._log_child(
                    "trial_key",
                    str(key),
                    params,
                    trial_metrics(group),
                    curve_metrics(sweep_curves[sweep_curves["trial_key"] == key]),
                    (),
                    run_name,
                    results_tags(results_root, TRIAL_TABLES),
                )
                created += int(was_created)
            if close_parent:
                tracker.close_if_running()
    return created


__all__ = [
    "ENDPOINT_METRICS",
    "PARENT_TAG",
    "VARIANT_METRICS",
    "Tracker",
    "TrackingUnavailable",
    "curve_metrics",
    "default_artifact_root",
    "default_tracking_uri",
    "ensure_sqlite_store",
    "mark_mlflow_synced",
    "mlflow_synced",
    "results_tags",
    "sync_from_parquet",
    "trial_metrics",
]
