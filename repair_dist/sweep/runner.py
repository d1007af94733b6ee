"""Run a sweep: stage 1 trains the distinct endpoints, stage 2 runs one trial per (pair, method).

Resume is by content, not by Tune's experiment state: before each stage the runner asks the
checkpoint store (stage 1) and the ``trials`` Parquet table (stage 2) what is already done and
schedules only the rest. Rerunning the same command after Ctrl+C, a killed driver or a lost
node therefore retrains nothing, recomputes no finished trial and writes no duplicate row; the
MLflow child runs are found again by their ``trial_key`` tag, so none is duplicated either.

MLflow is written by this driver only (from each finished trial's Parquet rows), so worker
nodes need no route to the tracking server and an unreachable server loses nothing: the
Parquet tables are the record and ``repair-dist sync-mlflow`` backfills MLflow later.

The driver stays off the critical path at thousands of trials: what is left to do is decided
from the store and the tables *before* Ray starts (a finished sweep reruns in about a second,
without Ray); the sweep is validated once; each finished trial costs the driver Tune's own
bookkeeping plus three MLflow calls on a background thread (:mod:`.publish`); figures are drawn
once per sweep (:mod:`.figures`); and the sweep's tables are compacted when it ends
(:mod:`.compaction`), so reading them later opens a few files, not one per trial.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from ..allocator import release_freed_memory
from ..location import Location
from ..storage import (
    StorageError,
    as_storage_error,
    disk_full,
    is_storage_error,
)
from ..store import CheckpointStore, CorruptCheckpoint
from . import results
from .compaction import compact_sweep
from .config import EndpointConfig, Sweep, TrialSpec
from .lock import SweepLock
from .preflight import local_resources, preflight
from .studies import StudySpec, study
from .tracking import (
    Tracker,
    TrackingUnavailable,
    default_tracking_uri,
    mark_mlflow_synced,
    mlflow_synced,
    sync_from_parquet,
)
from .validation import validate_models

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


RootLike = str | os.PathLike | Location


def finished_studies(root: RootLike, specs: Sequence[StudySpec]) -> set[str]:
    """Keys of the units with rows in their study's last table (written last: marks done)."""
    loc = Location.of(root)
    done: set[str] = set()
    by_table: dict[tuple[str, str], set[str]] = {}
    for spec in specs:
        where = (study(spec.study).tables[-1], spec.sweep)
        if where not in by_table:
            by_table[where] = results.unit_keys(loc, *where)
        if spec.key() in by_table[where]:
            done.add(spec.key())
    return done


def finished_trials(root: RootLike, sweep: str) -> set[str]:
    """Trial keys with ``trials`` rows (written last by a trial, so they mark completion)."""
    return results.unit_keys(root, "trials", sweep)


@dataclass
class Plan:
    """What is left of a sweep, decided from the store and the tables before Ray starts."""

    endpoints: list[EndpointConfig]
    train: list[EndpointConfig]
    trials: list[TrialSpec]
    pending: list[TrialSpec]
    units: list[StudySpec]
    units_pending: list[StudySpec]

    @property
    def needs_ray(self) -> bool:
        return bool(self.train or self.pending or self.units_pending)


def plan_sweep(sweep: Sweep, loc: Location, ckpts: CheckpointStore) -> Plan:
    """What is left to do: endpoints to train, trials and study units without rows."""
    endpoints = sweep.endpoints()
    trials = sweep.trials()
    done = finished_trials(loc, sweep.name)
    units = sweep.study_trials()
    units_done = finished_studies(loc, units)
    return Plan(
        endpoints=endpoints,
        train=[ep for ep in endpoints if not ckpts.has(ep.key())],
        trials=trials,
        pending=[t for t in trials if t.key() not in done],
        units=units,
        units_pending=[u for u in units if u.key() not in units_done],
    )


def _ray_up(address: str | None) -> None:
    from ..distributed import ensure_ray, init_local_ray

    if address:
        from ..distributed import connect

        connect(address)
    elif os.environ.get("RAY_ADDRESS"):
        ensure_ray()
    else:
        init_local_ray()


def _trial_resources(sweep: Sweep) -> Any:
    """One worker: the trial itself computes. N workers: a placement group, driver + N."""
    from .tune_setup import tune

    cpus, gpus, n = sweep.cpus_per_worker, sweep.gpus_per_worker, sweep.workers_per_trial
    if n <= 1 and not sweep.amp:  # amp needs a pass worker, even a single one
        return {"cpu": cpus, "gpu": gpus}
    worker = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    return tune.PlacementGroupFactory([{"CPU": 0.25}] + [worker] * n)


def _fit(
    trainable: Any,
    name: str,
    item: str,
    specs: dict[str, Any],
    resources: Any,
    *,
    root: Location,
    callbacks: Sequence[Any],
    concurrency: int | None,
    verbose: int,
    max_failures: int,
    **params: Any,
) -> list[BaseException]:
    """Run one Tune trial per key of ``specs``; returns the errors of trials that failed for
    good. The configs hold only the keys (``config[item]``): ``specs``, ``root`` and ``params``
    reach the trainable once through ``with_parameters``, since Tune copies and serialises every
    trial's config many times. ``with_parameters`` puts them in Ray's object store at once, so
    ``specs`` is emptied then: the driver keeps no copy of its own for the fit (about 1.3 KB
    per merge trial; the caller's reference lives as long as the call, so the dict is
    cleared, not merely dropped here)."""
    import ray

    from .tune_setup import tune

    keys = list(specs)
    fn = tune.with_parameters(trainable, specs=specs, root=root, **params)
    if ray.is_initialized():  # then with_parameters has put ``specs`` in the object store
        specs.clear()
    tuner = tune.Tuner(
        tune.with_resources(fn, resources),
        param_space={item: tune.grid_search(keys)},
        tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=concurrency),
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
    # One phase, the only validation: the sweep, its GPUs/CPUs, the root, the store and
    # MLflow; one message. A local Ray started later gets the resources checked here.
    checked = preflight(
        sweep,
        root,
        store,
        tracking_uri,
        cluster_resources=_resources_before_ray(joining, sweep),
        build_models=False,  # built below, only if anything is left to compute
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


def _resources_before_ray(joining: bool, sweep: Sweep) -> dict[str, Any]:
    ray = sys.modules.get("ray")  # not imported yet: not initialised either (and stays so)
    if joining or (ray is not None and ray.is_initialized()):
        import ray

        return dict(ray.cluster_resources())
    # GPUs matter only to a sweep that asks for some (counting them imports torch).
    return local_resources(count_gpus=sweep.gpus_per_worker != 0)


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
    plan = plan_sweep(sweep, loc, ckpts)
    tracker = Tracker(tracking_uri, sweep.name, exclusive=True) if tracking_uri else None
    problems: list[str] = []  # MLflow failures (Parquet is complete regardless)
    failed: list[BaseException] = []  # errors of trials that never succeeded
    if plan.needs_ray:  # Ray, Tune and torch are imported only when something will run
        import ray

        from ..distributed import release_cached_pools

        # The architectures are built (meta device) while Ray starts: both take seconds, one
        # of waiting on Ray's processes, one of importing torch's compiler stack. A bad one
        # still stops the sweep before any compute, with one message. With every endpoint
        # stored, each combination has been built, trained and evaluated on this dataset
        # already (a stored checkpoint proves more than a meta forward): nothing to build.
        with ThreadPoolExecutor(1, thread_name_prefix="validate") as background:
            checked = background.submit(validate_models, sweep) if plan.train else None
            if not ray.is_initialized():
                _ray_up(address)
            if checked is not None:
                checked.result()
        # Pools this process cached for earlier sharded passes (a notebook's workers=N) are
        # idle now; left alive they hold the CPUs/GPUs the sweep's trials wait for, forever.
        release_cached_pools()
        failed += _train_endpoints(sweep, plan, loc, ckpts, verbose, max_failures)
    _record_endpoints(sweep, plan, loc, ckpts)
    if plan.pending or plan.units_pending:
        failed += _run_units(sweep, plan, loc, ckpts, tracker, problems, verbose, max_failures)

    done = finished_trials(loc, sweep.name)
    unfinished = [t for t in plan.trials if t.key() not in done]
    units_done = finished_studies(loc, plan.units)
    units_unfinished = [u for u in plan.units if u.key() not in units_done]
    ran = bool(plan.train or plan.pending or plan.units_pending)
    # The sweep's figures are drawn while its tables are compacted (readers see every row
    # exactly once at any point of a compaction, see .compaction).
    with ThreadPoolExecutor(1, thread_name_prefix="figures") as background:
        drawn = None
        if ran and loc.local:
            drawn = background.submit(_draw_sweep_figures, loc, sweep.name, tracker, problems)
        if ran or _has_unit_files(loc, sweep.name):
            compact_sweep(loc, sweep.name)  # a few files per table instead of one per trial
        if drawn is not None:
            drawn.result()
    release_freed_memory()  # what the compaction and the figures freed (see ..allocator)
    if tracker is not None:
        finished = {t.key() for t in plan.trials if t.key() in done}
        finished |= {u.key() for u in plan.units if u.key() in units_done}
        status = "FAILED" if unfinished or units_unfinished else "FINISHED"
        _catch_up_mlflow(loc, tracker, sweep.name, finished, status, problems, ran)
    if unfinished or units_unfinished:
        _raise_if_corrupt(ckpts, [ep for t in unfinished for ep in (t.a, t.b)])
        _raise_if_corrupt(ckpts, [ep for u in units_unfinished for ep in u.endpoints])
        _raise_if_storage(failed)
        everything = [*plan.trials, *plan.units]
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
        endpoints_trained=len(plan.train),
        endpoints_reused=len(plan.endpoints) - len(plan.train),
        trials_run=len(plan.pending),
        trials_reused=len(plan.trials) - len(plan.pending),
        seconds=time.monotonic() - started,
        studies_run=len(plan.units_pending),
        studies_reused=len(plan.units) - len(plan.units_pending),
        summary=results.summarize(table) if not table.empty else table,
        mlflow_problems=problems,
    )


def _run_units(
    sweep: Sweep,
    plan: Plan,
    loc: Location,
    ckpts: CheckpointStore,
    tracker: Tracker | None,
    problems: list[str],
    verbose: int,
    max_failures: int,
) -> list[BaseException]:
    """Stage 2: the pending merge trials, then the pending study units, one Tune trial each;
    each finished one is logged to MLflow by the publisher's thread meanwhile."""
    from .publish import Progress, TrialPublisher
    from .trainables import merge_trainable, study_trainable, trial_to_dict

    publisher = TrialPublisher(tracker, loc)
    failed: list[BaseException] = []
    common = dict(
        root=loc,
        concurrency=sweep.max_concurrent_trials,
        verbose=verbose,
        max_failures=max_failures,
        store=ckpts,
        data_root=sweep.data_root,
        workers=sweep.workers_per_trial,
        cpus=sweep.cpus_per_worker,
    )
    if plan.pending:
        _say(
            f"[{sweep.name}] stage 2: {len(plan.pending)} of {len(plan.trials)} merge trials to run"
        )
        batches = trial_batches(plan.pending, batch_size(sweep, len(plan.pending)))
        publisher.expect(plan.pending)
        failed += _fit(
            merge_trainable,
            f"{sweep.name}-trials",
            "trial",
            {name: [trial_to_dict(t) for t in batch] for name, batch in batches.items()},
            _trial_resources(sweep),
            callbacks=[Progress("trials", len(plan.pending)), publisher],
            **common,
        )
    if plan.units_pending:
        _say(f"[{sweep.name}] studies: {len(plan.units_pending)} of {len(plan.units)} units to run")
        publisher.expect(plan.units_pending)
        failed += _fit(
            study_trainable,
            f"{sweep.name}-studies",
            "study",
            {u.key(): u.to_dict() for u in plan.units_pending},
            _trial_resources(sweep),
            callbacks=[Progress("studies", len(plan.units_pending)), publisher],
            amp=sweep.amp,
            worker_cpus=sweep.cpus_per_worker,
            worker_gpus=sweep.gpus_per_worker,
            **common,
        )
    publisher.drain()
    problems += publisher.problems
    return failed


#: Automatic batches: at least this many per concurrent trial slot (the cores stay busy to
#: the end of the stage) ...
MIN_BATCHES_PER_SLOT = 8
#: ... of at most this many merge trials, until the batches per slot reach
#: :data:`MAX_BATCHES_PER_SLOT`.
PREFERRED_BATCH = 16
#: Beyond that, batches grow instead of multiplying: Tune keeps every trial of a fit (its
#: state and per-metric statistics, about 14 KB each) until the fit ends, so the number of
#: Tune trials, and with it the driver's memory, stays bounded by the cluster's slots and
#: not by the number of merge trials. The last batches of a slot leave it idle for at most
#: one batch, a 64th of its share of the stage.
MAX_BATCHES_PER_SLOT = 64


def batch_size(sweep: Sweep, pending: int, slots: int | None = None) -> int:
    """Merge trials per Tune trial: ``sweep.trial_batch``, or automatic: between
    :data:`MIN_BATCHES_PER_SLOT` and :data:`MAX_BATCHES_PER_SLOT` batches per concurrent
    trial slot (``slots``, default :func:`trial_slots`), of up to :data:`PREFERRED_BATCH`
    trials while that keeps them within."""
    if sweep.trial_batch is not None:
        return int(sweep.trial_batch)
    slots = trial_slots(sweep) if slots is None else slots
    preferred = min(PREFERRED_BATCH, pending // (MIN_BATCHES_PER_SLOT * slots))
    bounded = -(-pending // (MAX_BATCHES_PER_SLOT * slots))  # ceil: at most MAX per slot
    return max(1, preferred, bounded)


def trial_slots(sweep: Sweep) -> int:
    """How many Tune trials of ``sweep`` the cluster runs at once (its CPUs; the cap)."""
    import ray

    per_trial = float(sweep.cpus_per_worker)
    if sweep.workers_per_trial > 1 or sweep.amp:
        per_trial = 0.25 + sweep.workers_per_trial * float(sweep.cpus_per_worker)
    slots = max(1, int(float(ray.cluster_resources().get("CPU", 1)) // max(per_trial, 1e-9)))
    if sweep.max_concurrent_trials:
        slots = min(slots, int(sweep.max_concurrent_trials))
    return slots


def trial_batches(trials: Sequence[TrialSpec], size: int) -> dict[str, list[TrialSpec]]:
    """Consecutive batches of ``size`` trials, named after their first trial's key."""
    out: dict[str, list[TrialSpec]] = {}
    for i in range(0, len(trials), size):
        batch = list(trials[i : i + size])
        out[f"{batch[0].key()}+{len(batch) - 1}"] = batch
    return out


def _train_endpoints(
    sweep: Sweep,
    plan: Plan,
    loc: Location,
    ckpts: CheckpointStore,
    verbose: int,
    max_failures: int,
) -> list[BaseException]:
    """Stage 1: train the endpoints the store lacks, one Tune trial each."""
    if not plan.train:
        return []
    from .publish import Progress
    from .trainables import endpoint_trainable

    train_cpus = max(1.0, sweep.cpus_per_worker)
    _say(f"[{sweep.name}] stage 1: training {len(plan.train)} of {len(plan.endpoints)} endpoints")
    # Data-parallel recipes: the trial only coordinates; Ray Train asks for the workers.
    if sweep.train_workers > 1:
        stage1 = {"cpu": 0.5, "gpu": 0}
    else:
        stage1 = {"cpu": train_cpus, "gpu": 1 if sweep.gpus_per_worker else 0}
    failed = _fit(
        endpoint_trainable,
        f"{sweep.name}-endpoints",
        "endpoint",
        {ep.key(): asdict(ep) for ep in plan.train},
        stage1,
        root=loc,
        callbacks=[Progress("endpoints", len(plan.train))],
        concurrency=sweep.max_concurrent_trials,
        verbose=verbose,
        max_failures=max_failures,
        sweep=sweep.name,
        store=ckpts,
        data_root=sweep.data_root,
        cpus=train_cpus,
        worker_cpus=sweep.cpus_per_worker,
        worker_gpus=sweep.gpus_per_worker,
    )
    missing = [ep.key() for ep in plan.endpoints if not ckpts.has(ep.key())]
    if missing:
        _raise_if_corrupt(ckpts, plan.endpoints)  # the cause, as the last line, not "rerun"
        _raise_if_storage(failed)
        raise SweepIncomplete(
            f"sweep {sweep.name!r}: {len(missing)} of {len(plan.endpoints)} endpoints did not "
            f"train (interrupted or failed; see {loc.tune}). Rerun the same command to resume."
        )
    return failed


def _record_endpoints(sweep: Sweep, plan: Plan, loc: Location, ckpts: CheckpointStore) -> None:
    """Endpoint rows this sweep lacks: endpoints trained by another sweep still get this
    sweep's ``endpoints`` row, and ones recorded before the ``filters`` table its rows."""
    written = results.unit_keys(loc, "endpoints", sweep.name)
    with_filters = results.unit_keys(loc, "filters", sweep.name)
    if written.issuperset(ep.key() for ep in plan.endpoints) and with_filters.issuperset(
        ep.key() for ep in plan.endpoints
    ):
        return
    from .trainables import endpoint_filters, train_endpoint, write_endpoint_rows

    for ep in plan.endpoints:
        if ep.key() not in written:
            row = train_endpoint(ep, ckpts, sweep.data_root)
            write_endpoint_rows(loc, sweep.name, ep, row, ckpts, sweep.data_root)
        elif ep.key() not in with_filters:
            filters = endpoint_filters(ep, ckpts, sweep.data_root)
            results.write_rows(loc, "filters", sweep.name, ep.key(), filters)


def _has_unit_files(loc: Location, sweep: str) -> bool:
    """True if any table of ``sweep`` still has one-unit files (an interrupted run's)."""
    return any(p.units for t in results.TABLES for p in results.partitions(loc, t, sweep))


def _draw_sweep_figures(
    loc: Location, sweep: str, tracker: Tracker | None, problems: list[str]
) -> None:
    """The sweep-level barrier figures, once per run that computed something; attached to
    the sweep's parent MLflow run. A figure never fails a sweep."""
    from .figures import sweep_figures

    try:
        paths = sweep_figures(loc, sweep)
    except Exception as err:  # a figure must never fail a sweep
        log.warning("sweep figures of %s failed: %s", sweep, err)
        return
    if tracker is None or not paths:
        return
    try:
        tracker.log_parent_artifacts(paths, "figures")
    except TrackingUnavailable as err:
        problems.append(str(err))


def _catch_up_mlflow(
    loc: Location,
    tracker: Tracker,
    sweep: str,
    finished: set[str],
    status: str,
    problems: list[str],
    ran: bool,
) -> None:
    """Finished trials and units without an MLflow run (an earlier interrupted run, MLflow
    down) get one now, and the parent run its status. A finished sweep whose runs were all
    logged by an earlier run (a marker in the results root says so) opens no MLflow at all."""
    if not ran and mlflow_synced(loc, sweep, tracker.tracking_uri, finished):
        return
    try:
        if not finished <= tracker.logged_keys("trial_key"):
            sync_from_parquet(loc, tracker.tracking_uri, sweep, lock=False, close_parent=False)
        tracker.finish(status)
    except TrackingUnavailable as err:
        problems.append(str(err))
        return
    if status == "FINISHED":
        mark_mlflow_synced(loc, sweep, tracker.tracking_uri, finished)


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
