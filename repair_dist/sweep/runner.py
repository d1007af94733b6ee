"""Run a sweep: stage 1 trains the distinct endpoints, stage 2 runs one trial per (pair, method).

Resume is by content, not by Tune's experiment state: before each stage the runner asks the
checkpoint store (stage 1) and the ``trials`` Parquet table (stage 2) what is already done and
schedules only the rest. Rerunning the same command after Ctrl+C, a killed driver or a lost
node therefore retrains nothing, recomputes no finished trial and writes no duplicate row; the
MLflow child runs are found again by their ``trial_key`` tag, so none is duplicated either.

MLflow is written by this driver only (from each finished trial's Parquet files), so worker
nodes need no route to the tracking server and an unreachable server loses nothing: the
Parquet tables are the record and ``repair-dist sync-mlflow`` backfills MLflow later.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

# Quiet Tune: our own progress lines instead of its tables.
# Must be set before Tune is imported.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
from ray import tune  # noqa: E402

from ..distributed import ensure_ray, init_local_ray, release_cached_pools  # noqa: E402
from ..location import Location  # noqa: E402
from ..storage import (  # noqa: E402
    StorageError,
    as_storage_error,
    disk_full,
    is_storage_error,
)
from ..store import CheckpointStore, CorruptCheckpoint  # noqa: E402
from . import results  # noqa: E402
from .config import EndpointConfig, Sweep, TrialSpec  # noqa: E402
from .lock import SweepLock  # noqa: E402
from .preflight import local_resources, preflight  # noqa: E402
from .studies import StudySpec, study  # noqa: E402
from .tracking import (  # noqa: E402
    Tracker,
    TrackingUnavailable,
    default_tracking_uri,
    sync_from_parquet,
    trial_artifacts,
)
from .trainables import (  # noqa: E402
    endpoint_filters,
    endpoint_trainable,
    merge_trainable,
    study_trainable,
    train_endpoint,
    trial_from_dict,
    trial_to_dict,
    write_endpoint_rows,
)
from .validation import validate_sweep  # noqa: E402

log = logging.getLogger(__name__)


class SweepIncomplete(RuntimeError):
    """``Tuner.fit()`` returned but some trials did not finish (Ctrl+C, errors)."""


@dataclass
class SweepOutcome:
    """What a run of :func:`run_sweep` did and where its results are."""

    sweep: str
    root: str
    tracking_uri: str | None
    endpoints_trained: int
    endpoints_reused: int
    trials_run: int
    trials_reused: int
    seconds: float
    #: Units of the sweep's studies (curves, pruning) computed now, and found finished.
    studies_run: int = 0
    studies_reused: int = 0
    summary: pd.DataFrame = field(default_factory=pd.DataFrame)
    mlflow_problems: list[str] = field(default_factory=list)


class _NoTuneRestoreHint(logging.Filter):
    """Drops Tune's "Resume experiment with: Tuner.restore(...)": resuming a sweep means
    rerunning the same command (resume is by content), which our own message says."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore(" not in record.getMessage()


#: Tune logs its hint through the logger of ``ray.tune.tune``.
TUNE_LOGGER = "ray.tune.tune"
logging.getLogger(TUNE_LOGGER).addFilter(_NoTuneRestoreHint())


class Progress(tune.Callback):
    """One quiet line per finished trial: done/running/failed of total, with an ETA.

    Counted per trial id, not per event: Tune starts a retried trial again after
    ``on_trial_recover`` (and may report a trial twice), so event counts drifted
    ("10/12 done, 4 running" at the end of a sweep with retries).
    """

    def __init__(self, stage: str, total: int) -> None:
        self.stage, self.total = stage, total
        self._running: set[str] = set()
        self._done: set[str] = set()
        self._failed: set[str] = set()
        self.started = time.monotonic()

    @property
    def done(self) -> int:
        return len(self._done)

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def failed(self) -> int:
        return len(self._failed)

    def _line(self) -> None:
        elapsed = time.monotonic() - self.started
        left = self.total - self.done - self.failed
        eta = f"{elapsed / self.done * left:.0f}s" if self.done else "?"
        print(
            f"[{self.stage}] {self.done}/{self.total} done, {self.running} running, "
            f"{self.failed} failed, {elapsed:.0f}s elapsed, ETA {eta}",
            file=sys.stderr,  # looked up per call: Tune pickles its callbacks
            flush=True,
        )

    def on_trial_start(self, iteration, trials, trial, **info):  # noqa: ANN001
        self._running.add(trial.trial_id)

    def on_trial_recover(self, iteration, trials, trial, **info):  # noqa: ANN001
        self._running.discard(trial.trial_id)  # failed, will start again

    def on_trial_complete(self, iteration, trials, trial, **info):  # noqa: ANN001
        self._running.discard(trial.trial_id)
        self._failed.discard(trial.trial_id)
        self._done.add(trial.trial_id)
        self._line()

    def on_trial_error(self, iteration, trials, trial, **info):  # noqa: ANN001
        self._running.discard(trial.trial_id)
        if trial.trial_id not in self._done:
            self._failed.add(trial.trial_id)
        self._line()


class TrialPublisher(tune.Callback):
    """Plots and logs each finished stage-2 trial from its Parquet files, off the critical path.

    A driver-side background thread does the work, so Tune schedules the next trial at once
    and worker nodes need neither matplotlib output paths nor a route to MLflow. An
    unreachable MLflow is recorded in ``problems``; Parquet stays the record.
    """

    def __init__(self, tracker: Tracker | None, root: Location) -> None:
        self.tracker, self.root = tracker, root
        self.problems: list[str] = []
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks
        return {**self.__dict__, "_queue": None, "_thread": None}

    def publish(self, spec: TrialSpec | StudySpec) -> None:
        if isinstance(spec, StudySpec):
            self._publish_study(spec)
            return
        try:
            plot_trial(self.root, spec)
        except Exception as err:  # a figure must never fail a sweep
            log.warning("plot of trial %s failed: %s", spec.key(), err)
        if self.tracker is None:
            return
        try:
            log_trial_to_mlflow(self.tracker, self.root, spec)
        except TrackingUnavailable as err:
            if not self.problems:  # once: the sweep's summary repeats it with the count
                log.warning("MLflow unavailable, Parquet kept (sync later): %s", err)
            self.problems.append(str(err))

    def _publish_study(self, spec: StudySpec) -> None:
        try:
            plot_study(self.root, spec)
        except Exception as err:  # a figure must never fail a sweep
            log.warning("plot of %s unit %s failed: %s", spec.study, spec.key(), err)
        if self.tracker is None:
            return
        try:
            log_study_to_mlflow(self.tracker, self.root, spec)
        except TrackingUnavailable as err:
            if not self.problems:  # once: the sweep's summary repeats it with the count
                log.warning("MLflow unavailable, Parquet kept (sync later): %s", err)
            self.problems.append(str(err))

    def _work(self) -> None:
        assert self._queue is not None
        while (spec := self._queue.get()) is not None:
            self.publish(spec)

    def on_trial_complete(self, iteration, trials, trial, **info):  # noqa: ANN001
        if self._thread is None:
            self._queue = queue.Queue()
            self._thread = threading.Thread(target=self._work, name="publish", daemon=True)
            self._thread.start()
        config = trial.config
        if "study" in config:
            self._queue.put(StudySpec.from_dict(config["study"]))
        else:
            self._queue.put(trial_from_dict(config["trial"]))

    def drain(self) -> None:
        """Wait until every queued trial is plotted and logged."""
        if self._thread is not None and self._queue is not None:
            self._queue.put(None)
            self._thread.join()
        self._thread = self._queue = None


RootLike = str | os.PathLike | Location


def _trial_frame(root: RootLike, table: str, spec: TrialSpec) -> pd.DataFrame:
    """One trial's rows of a table: reads its own file only (not the whole sweep's table)."""
    import pyarrow.parquet as pq

    root = Location.of(root)
    path = root.table_file(table, spec.sweep, spec.key())
    return pq.read_table(path, filesystem=root.fs).to_pandas()


def plot_trial(root: RootLike, spec: TrialSpec) -> str | None:
    """The trial's loss/acc-vs-alpha PNG beside the tables (local roots; else no file)."""
    root = Location.of(root)
    if not root.local:
        return None
    from .plots import plot_trial_curves

    path = root.plot_file(spec.sweep, spec.key())
    if not os.path.exists(path):
        curves = _trial_frame(root, "curves", spec)
        plot_trial_curves(curves, path, title=f"{spec.sweep}: {spec.run_name()}")
    return path


def log_trial_to_mlflow(tracker: Tracker, root: RootLike, spec: TrialSpec) -> str:
    root = Location.of(root)
    rows = _trial_frame(root, "trials", spec)
    curves = _trial_frame(root, "curves", spec)
    artifacts = trial_artifacts(root, spec.sweep, spec.key())
    key = spec.key()
    return tracker.log_trial(key, spec.params(), rows, curves, artifacts, run_name=spec.run_name())


def _study_frames(root: RootLike, spec: StudySpec) -> dict[str, pd.DataFrame]:
    """One study unit's rows of every table it writes (its own files only)."""
    import pyarrow.parquet as pq

    loc = Location.of(root)
    frames = {}
    for table in study(spec.study).tables:
        path = loc.table_file(table, spec.sweep, spec.key())
        frames[table] = pq.read_table(path, filesystem=loc.fs).to_pandas()
    return frames


def plot_study(root: RootLike, spec: StudySpec) -> str | None:
    """The unit's figure beside the tables (local roots; else no file)."""
    root = Location.of(root)
    if not root.local:
        return None
    path = root.plot_file(spec.sweep, spec.key())
    if not os.path.exists(path):
        title = f"{spec.sweep}: {spec.run_name()}"
        study(spec.study).plot(_study_frames(root, spec), path, title)
    return path


def study_artifacts(root: RootLike, spec: StudySpec) -> list[str]:
    """A unit's files for its MLflow run: its Parquet files and its plot (local roots)."""
    loc = Location.of(root)
    if not loc.local:
        return []
    paths = [loc.table_file(t, spec.sweep, spec.key()) for t in study(spec.study).tables]
    return [p for p in [*paths, loc.plot_file(spec.sweep, spec.key())] if os.path.isfile(p)]


def log_study_to_mlflow(tracker: Tracker, root: RootLike, spec: StudySpec) -> str:
    """The unit's child run (tag ``trial_key``, like a merge trial's; tag ``study``)."""
    metrics, steps = study(spec.study).mlflow(_study_frames(root, spec))
    run_id, _ = tracker._log_child(
        "trial_key",
        spec.key(),
        spec.params(),
        metrics,
        steps,
        study_artifacts(root, spec),
        spec.run_name(),
        {"study": spec.study},
    )
    return run_id


def finished_studies(root: RootLike, specs: Sequence[StudySpec]) -> set[str]:
    """Keys of the units whose last table file exists (written last, so it marks them done)."""
    import pyarrow.fs as pafs

    loc = Location.of(root)
    done = set()
    for spec in specs:
        path = loc.table_file(study(spec.study).tables[-1], spec.sweep, spec.key())
        if loc.fs.get_file_info(path).type == pafs.FileType.File:
            done.add(spec.key())
    return done


def finished_trials(root: RootLike, sweep: str) -> set[str]:
    """Trial keys with a ``trials`` file (written last by a trial, so it marks completion)."""
    done = results.read_table(root, "trials", sweep, columns=["trial_key"])
    return set(done["trial_key"].astype(str))


def _ray_up(address: str | None) -> None:
    if address:
        from ..distributed import connect

        connect(address)
    elif os.environ.get("RAY_ADDRESS"):
        ensure_ray()
    else:
        init_local_ray()


def _trial_resources(sweep: Sweep) -> Any:
    """One worker: the trial itself computes. N workers: a placement group, driver + N."""
    cpus, gpus, n = sweep.cpus_per_worker, sweep.gpus_per_worker, sweep.workers_per_trial
    if n <= 1 and not sweep.amp:  # amp needs a pass worker, even a single one
        return {"cpu": cpus, "gpu": gpus}
    worker = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    return tune.PlacementGroupFactory([{"CPU": 0.25}] + [worker] * n)


def _fit(
    trainable: Any,
    name: str,
    item: str,
    configs: list[dict],
    resources: Any,
    *,
    root: Location,
    callbacks: Sequence[tune.Callback],
    sweep: Sweep,
    verbose: int,
    max_failures: int,
) -> list[BaseException]:
    """Run the grid; returns the errors of trials that failed for good."""
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space={item: tune.grid_search(configs)},
        tune_config=tune.TuneConfig(
            reuse_actors=True, max_concurrent_trials=sweep.max_concurrent_trials
        ),
        run_config=tune.RunConfig(
            name=name,
            **root.tune.ray_storage(),
            verbose=verbose,
            callbacks=list(callbacks),
            failure_config=tune.FailureConfig(max_failures=max_failures),
        ),
    )
    return list(tuner.fit().errors)


def run_sweep(
    sweep: Sweep,
    *,
    root: str | os.PathLike | Location = "results",
    store: str | os.PathLike | Location | None = None,
    tracking_uri: str | None = None,
    address: str | None = None,
    verbose: int = 0,
    max_failures: int = 2,
    mlflow: bool = True,
    retrain_corrupt: bool = False,
) -> SweepOutcome:
    """Validate, train missing endpoints, run unfinished trials, log, summarise.

    ``root``: results root (local path, pyarrow URI or Location); ``store``: checkpoint
    store (default ``<root>/checkpoints``); ``tracking_uri``: MLflow (default sqlite under a
    local root, none elsewhere); ``address``: an existing Ray cluster (default:
    ``$RAY_ADDRESS`` or a local loopback-only Ray). Raises SweepConfigError before anything
    runs, SweepIncomplete when some trials did not finish (rerun the same call to resume),
    SweepLocked when another run of this sweep holds ``root``, CorruptCheckpoint when a stored
    endpoint is damaged (``retrain_corrupt=True`` quarantines trained ones and retrains them;
    registered weights are never retrained).
    """
    started = time.monotonic()
    joining = bool(address or os.environ.get("RAY_ADDRESS"))
    if joining:  # a cluster's resources are known once joined (joining starts nothing)
        _ray_up(address)
    # One phase: the sweep, its GPUs/CPUs, the root, the store and MLflow; one message.
    checked = preflight(
        sweep, root, store, tracking_uri, cluster_resources=_resources_before_ray(joining)
    )
    loc, ckpts = checked.root, checked.store
    if tracking_uri is None and mlflow and loc.local:
        tracking_uri = default_tracking_uri(loc)
    # One run per (root, sweep): a second one would redo all the work (see .lock).
    with SweepLock(loc, sweep.name):
        _settle_corrupt(ckpts, sweep.endpoints(), retrain_corrupt)  # before Ray starts
        try:
            return _run_locked(
                sweep, loc, ckpts, tracking_uri, address, verbose, max_failures, started
            )
        except OSError as err:  # the driver's own writes (Tune state, rows, plots, MLflow)
            if is_storage_error(err):
                raise as_storage_error(err, "sweep files under", loc.uri) from err
            _raise_if_disk_full(err, loc, ckpts)
            raise
        except (SweepIncomplete, EOFError, RuntimeError) as err:
            # A full disk also shows up second-hand: Tune reading back a state file it could
            # not finish writing ("EOFError: Ran out of input"), trials failing in odd ways.
            _raise_if_disk_full(err, loc, ckpts)
            raise


def _raise_if_disk_full(err: BaseException, loc: Location, ckpts: CheckpointStore) -> None:
    for what, where in (("results root", loc), ("checkpoint store", ckpts.location)):
        if (problem := disk_full(what, where)) is not None:
            raise StorageError(errno.ENOSPC, problem) from err


def _resources_before_ray(joining: bool) -> dict[str, Any]:
    import ray

    if joining or ray.is_initialized():
        return dict(ray.cluster_resources())
    return local_resources()


def _run_locked(
    sweep: Sweep,
    loc: Location,
    ckpts: CheckpointStore,
    tracking_uri: str | None,
    address: str | None,
    verbose: int,
    max_failures: int,
    started: float,
) -> SweepOutcome:
    """The body of :func:`run_sweep`, run while this process holds the sweep's lock."""
    import ray

    if not ray.is_initialized():
        _ray_up(address)
    # Pools this process cached for earlier sharded passes (a notebook's workers=N) are idle
    # now; left alive they hold the CPUs/GPUs the sweep's trials wait for, forever.
    release_cached_pools()

    validate_sweep(sweep, cluster_resources=ray.cluster_resources())

    # ---- stage 1: endpoints ----------------------------------------------------------------
    endpoints = sweep.endpoints()
    todo = [ep for ep in endpoints if not ckpts.has(ep.key())]
    rows = results.read_table(loc, "endpoints", sweep.name, columns=["endpoint_key"])
    written = set(rows["endpoint_key"].astype(str))
    train_cpus = max(1.0, sweep.cpus_per_worker)
    failed: list[BaseException] = []  # errors of trials that never succeeded
    if todo:
        _say(f"[{sweep.name}] stage 1: training {len(todo)} of {len(endpoints)} endpoints")
        fn = tune.with_parameters(
            endpoint_trainable,
            sweep=sweep.name,
            store=ckpts,
            root=loc,
            data_root=sweep.data_root,
            cpus=train_cpus,
            worker_cpus=sweep.cpus_per_worker,
            worker_gpus=sweep.gpus_per_worker,
        )
        # Data-parallel recipes: the trial only coordinates; Ray Train asks for the workers.
        if sweep.train_workers > 1:
            stage1 = {"cpu": 0.5, "gpu": 0}
        else:
            stage1 = {"cpu": train_cpus, "gpu": 1 if sweep.gpus_per_worker else 0}
        failed += _fit(
            fn,
            f"{sweep.name}-endpoints",
            "endpoint",
            [asdict(ep) for ep in todo],
            stage1,
            root=loc,
            callbacks=[Progress("endpoints", len(todo))],
            sweep=sweep,
            verbose=verbose,
            max_failures=max_failures,
        )
    missing = [ep.key() for ep in endpoints if not ckpts.has(ep.key())]
    if missing:
        _raise_if_corrupt(ckpts, endpoints)  # the cause, as the last line, not "rerun"
        _raise_if_storage(failed)
        raise SweepIncomplete(
            f"sweep {sweep.name!r}: {len(missing)} of {len(endpoints)} endpoints did not train "
            f"(interrupted or failed; see {loc.tune}). Rerun the same command to resume."
        )
    rows = results.read_table(loc, "filters", sweep.name, columns=["endpoint_key"])
    with_filters = set(rows["endpoint_key"].astype(str))
    for ep in endpoints:  # endpoints trained by another sweep still get this sweep's row
        if ep.key() not in written:
            row = train_endpoint(ep, ckpts, sweep.data_root)
            write_endpoint_rows(loc, sweep.name, ep, row, ckpts, sweep.data_root)
        elif ep.key() not in with_filters:  # recorded before the filters table existed
            filters = endpoint_filters(ep, ckpts, sweep.data_root)
            results.write_rows(loc, "filters", sweep.name, ep.key(), filters)

    # ---- stage 2: merge trials --------------------------------------------------------------
    trials = sweep.trials()
    done = finished_trials(loc, sweep.name)
    pending = [t for t in trials if t.key() not in done]
    tracker = Tracker(tracking_uri, sweep.name) if tracking_uri else None
    publisher = TrialPublisher(tracker, loc)
    if pending:
        _say(f"[{sweep.name}] stage 2: {len(pending)} of {len(trials)} merge trials to run")
        fn = tune.with_parameters(
            merge_trainable,
            store=ckpts,
            root=loc,
            data_root=sweep.data_root,
            workers=sweep.workers_per_trial,
            cpus=sweep.cpus_per_worker,
        )
        failed += _fit(
            fn,
            f"{sweep.name}-trials",
            "trial",
            [trial_to_dict(t) for t in pending],
            _trial_resources(sweep),
            root=loc,
            callbacks=[Progress("trials", len(pending)), publisher],
            sweep=sweep,
            verbose=verbose,
            max_failures=max_failures,
        )
    publisher.drain()

    # ---- stage 2, studies: curves, pruning, ... (one unit each, like a merge trial) -----------
    units = sweep.study_trials()
    units_done = finished_studies(loc, units)
    units_pending = [u for u in units if u.key() not in units_done]
    if units_pending:
        _say(f"[{sweep.name}] studies: {len(units_pending)} of {len(units)} units to run")
        fn = tune.with_parameters(
            study_trainable,
            store=ckpts,
            root=loc,
            data_root=sweep.data_root,
            workers=sweep.workers_per_trial,
            cpus=sweep.cpus_per_worker,
            amp=sweep.amp,
            worker_cpus=sweep.cpus_per_worker,
            worker_gpus=sweep.gpus_per_worker,
        )
        failed += _fit(
            fn,
            f"{sweep.name}-studies",
            "study",
            [u.to_dict() for u in units_pending],
            _trial_resources(sweep),
            root=loc,
            callbacks=[Progress("studies", len(units_pending)), publisher],
            sweep=sweep,
            verbose=verbose,
            max_failures=max_failures,
        )
    publisher.drain()
    units_done = finished_studies(loc, units)
    units_unfinished = [u for u in units if u.key() not in units_done]
    _catch_up_studies(loc, [u for u in units if u.key() in units_done], tracker, publisher)

    done = finished_trials(loc, sweep.name)
    unfinished = [t for t in trials if t.key() not in done]
    for spec in trials:  # finished by an earlier, interrupted run: plot what is missing
        if spec.key() in done:
            try:
                plot_trial(loc, spec)
            except Exception as err:  # a figure must never fail a sweep
                log.warning("plot of trial %s failed: %s", spec.key(), err)
    # MLflow: anything finished but not logged (earlier interrupted runs, server down) now.
    if tracker is not None:
        try:
            sync_from_parquet(loc, tracking_uri, sweep.name, lock=False, close_parent=False)
            # the parent run's status
            tracker.finish("FAILED" if unfinished or units_unfinished else "FINISHED")
        except TrackingUnavailable as err:
            publisher.problems.append(str(err))
    if unfinished or units_unfinished:
        _raise_if_corrupt(ckpts, [ep for t in unfinished for ep in (t.a, t.b)])
        _raise_if_corrupt(ckpts, [ep for u in units_unfinished for ep in u.endpoints])
        _raise_if_storage(failed)
        everything = [*trials, *units]
        names = ", ".join(t.run_name() for t in [*unfinished, *units_unfinished][:5])
        n_unfinished = len(unfinished) + len(units_unfinished)
        raise SweepIncomplete(
            f"sweep {sweep.name!r}: {n_unfinished} of {len(everything)} trials did not finish "
            f"({names}{', ...' if n_unfinished > 5 else ''}); interrupted or failed, see "
            f"{loc.tune}. Rerun the same command to resume: finished work is kept."
        )
    table = results.read_table(loc, "trials", sweep.name)
    return SweepOutcome(
        sweep=sweep.name,
        root=loc.uri,
        tracking_uri=tracking_uri,
        endpoints_trained=len(todo),
        endpoints_reused=len(endpoints) - len(todo),
        trials_run=len(pending),
        trials_reused=len(trials) - len(pending),
        seconds=time.monotonic() - started,
        studies_run=len(units_pending),
        studies_reused=len(units) - len(units_pending),
        summary=results.summarize(table) if not table.empty else table,
        mlflow_problems=publisher.problems,
    )


def _catch_up_studies(
    loc: Location, finished: Sequence[StudySpec], tracker: Tracker | None, publisher: TrialPublisher
) -> None:
    """Finished units without a plot or an MLflow run (an earlier interrupted run, MLflow
    down) get them now; the ``trial_key`` tag lookup keeps this from duplicating runs."""
    for spec in finished:
        try:
            plot_study(loc, spec)
        except Exception as err:  # a figure must never fail a sweep
            log.warning("plot of %s unit %s failed: %s", spec.study, spec.key(), err)
    if tracker is None or not finished:
        return
    try:
        logged = tracker.logged_keys("trial_key")
        for spec in finished:
            if spec.key() not in logged:
                log_study_to_mlflow(tracker, loc, spec)
    except TrackingUnavailable as err:
        publisher.problems.append(str(err))


def _causes(err: BaseException) -> list[BaseException]:
    """``err`` and what it wraps: Ray's task errors keep the original in ``cause``."""
    seen: list[BaseException] = []
    stack = [err]
    while stack and len(seen) < 20:
        e = stack.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        stack += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return seen


def _raise_if_storage(errors: Sequence[BaseException]) -> None:
    """A trial that failed on a full, read-only or forbidden path: that path, in one line."""
    for err in errors:
        for cause in _causes(err):
            if isinstance(cause, StorageError):
                raise StorageError(cause.errno, str(cause)) from None
            if is_storage_error(cause):
                path = getattr(cause, "filename", None) or "a file"
                raise as_storage_error(cause, "", path) from None  # type: ignore[arg-type]


def _corrupt(ckpts: CheckpointStore, endpoints: Sequence[EndpointConfig]) -> list:
    """The CorruptCheckpoint of every damaged endpoint (each key once)."""
    found: list[CorruptCheckpoint] = []
    for key in dict.fromkeys(ep.key() for ep in endpoints):
        try:
            ckpts.check(key)
        except CorruptCheckpoint as err:
            found.append(err)
    return found


def _raise_if_corrupt(ckpts: CheckpointStore, endpoints: Sequence[EndpointConfig]) -> None:
    found = _corrupt(ckpts, endpoints)
    if found:
        more = f" (and {len(found) - 1} more damaged checkpoints)" if len(found) > 1 else ""
        first = found[0]
        raise CorruptCheckpoint(f"{first}{more}", key=first.key, registered=first.registered)


def _settle_corrupt(
    ckpts: CheckpointStore, endpoints: Sequence[EndpointConfig], retrain: bool
) -> None:
    """Refuse damaged checkpoints, or (asked for) quarantine trained ones to train again."""
    if retrain:
        for err in _corrupt(ckpts, endpoints):
            if not err.registered:
                _say(f"corrupt checkpoint moved to {ckpts.quarantine(err.key)}; training it again")
    _raise_if_corrupt(ckpts, endpoints)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
