"""What the driver does with each finished trial: a progress line and one MLflow child run,
off the critical path.

A driver-side background thread logs each finished trial (or study unit) from its Parquet
rows while Tune goes on scheduling, so worker nodes need no route to MLflow and a slow or
unreachable server never slows a trial. Per unit it costs three MLflow calls (create the run,
one ``log_batch`` of params and metrics, close the run): the sweep's run map is built once
(:class:`~repair_dist.sweep.tracking.Tracker` with ``exclusive=True``), no figure is drawn
(figures are drawn on demand or once per sweep: :mod:`repair_dist.sweep.figures`) and no file
is copied: the run's tags say where its rows live (``results.root``, ``results.tables``).
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from ..location import Location
from . import results
from .config import TrialSpec
from .studies import StudySpec, study
from .tracking import Tracker, TrackingUnavailable, results_tags, trial_metrics
from .tune_setup import tune

log = logging.getLogger(__name__)

RootLike = str | os.PathLike | Location


def log_trial_to_mlflow(tracker: Tracker, root: RootLike, spec: TrialSpec) -> str:
    """The merge trial's child run, from its rows (wherever they are: own file or part)."""
    from .tracking import curve_metrics

    loc = Location.of(root)
    key = spec.key()
    rows = results.unit_rows(loc, "trials", spec.sweep, key)
    curves = results.unit_rows(loc, "curves", spec.sweep, key)
    run_id, _ = tracker._log_child(
        "trial_key",
        key,
        spec.params(),
        trial_metrics(rows),
        curve_metrics(curves),
        (),
        spec.run_name(),
        results_tags(loc, results.TRIAL_TABLES),
    )
    return run_id


def log_study_to_mlflow(tracker: Tracker, root: RootLike, spec: StudySpec) -> str:
    """The study unit's child run (tag ``trial_key``, like a merge trial's; tag ``study``)."""
    loc = Location.of(root)
    st = study(spec.study)
    frames = {t: results.unit_rows(loc, t, spec.sweep, spec.key()) for t in st.tables}
    metrics, steps = st.mlflow(frames)
    run_id, _ = tracker._log_child(
        "trial_key",
        spec.key(),
        spec.params(),
        metrics,
        steps,
        (),
        spec.run_name(),
        {"study": spec.study, **results_tags(loc, st.tables)},
    )
    return run_id


class _NoTuneRestoreHint(logging.Filter):
    """Drops Tune's "Resume experiment with: Tuner.restore(...)": resuming a sweep means
    rerunning the same command (resume is by content), which our own message says."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore(" not in record.getMessage()


#: Tune logs its hint through the logger of ``ray.tune.tune``.
TUNE_LOGGER = "ray.tune.tune"
logging.getLogger(TUNE_LOGGER).addFilter(_NoTuneRestoreHint())


class Progress(tune.Callback):
    """Quiet progress lines: done/running/failed of total, with an ETA.

    A line per finished unit, at most one every ``every`` seconds (a sweep of a thousand
    tiny trials should not print a thousand lines), and always for a failure and for the
    last unit. A Tune trial that runs a batch of units reports them as they finish (``"units"``
    in its results) and counts once per unit; any other trial counts once when it completes.
    Counted per id, not per event: Tune starts a retried trial again after
    ``on_trial_recover`` (and may report a trial twice), so event counts drifted
    ("10/12 done, 4 running" at the end of a sweep with retries). A running trial's units are
    kept by key (a retry reports them again); an ended trial's only as a count, so the
    callback's memory follows the Tune trials, not the merge trials.
    """

    def __init__(self, stage: str, total: int, every: float = 2.0) -> None:
        self.stage, self.total, self.every = stage, total, every
        self._running: set[str] = set()
        self._failed: set[str] = set()
        #: Units reported by each batch trial not ended yet (a retry reports them again) ...
        self._units: dict[str, set[str]] = {}
        #: ... folded into a count when the trial ends (1 for a plain trial that completed):
        #: the driver keeps a number per Tune trial, not a key per unit.
        self._ended: dict[str, int] = {}
        self.started = time.monotonic()
        self._last_line = -float("inf")

    @property
    def done(self) -> int:
        return sum(self._ended.values()) + sum(len(units) for units in self._units.values())

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def failed(self) -> int:
        return len(self._failed)

    def _end(self, trial_id: str, finished: int) -> None:
        """Fold an ended trial's units into the count (once per trial)."""
        self._ended[trial_id] = max(self._ended.get(trial_id, 0), finished)

    def _line(self, force: bool = False) -> None:
        now = time.monotonic()
        if (
            not force
            and self.done + self.failed < self.total
            and now - self._last_line < self.every
        ):
            return
        self._last_line = now
        elapsed = now - self.started
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

    def on_trial_result(self, iteration, trials, trial, result, **info):  # noqa: ANN001
        units = result.get("units")
        if units and trial.trial_id not in self._ended:
            reported = self._units.setdefault(trial.trial_id, set())
            before = len(reported)
            reported.update(units)
            if len(reported) > before:
                self._line()

    def on_trial_complete(self, iteration, trials, trial, **info):  # noqa: ANN001
        self._running.discard(trial.trial_id)
        self._failed.discard(trial.trial_id)
        units = self._units.pop(trial.trial_id, None)
        self._end(trial.trial_id, 1 if units is None else len(units))  # a plain trial: 1
        self._line()

    def on_trial_error(self, iteration, trials, trial, **info):  # noqa: ANN001
        self._running.discard(trial.trial_id)
        units = self._units.pop(trial.trial_id, set())
        if trial.trial_id not in self._ended:  # not a trial that completed before
            self._failed.add(trial.trial_id)
        self._end(trial.trial_id, len(units))  # the units it finished before failing
        self._line(force=True)


#: Units the publisher logs between two compactions of the running sweep's tables.
COMPACT_EVERY = 256


class TrialPublisher(tune.Callback):
    """Logs each finished trial to MLflow from a driver-side background thread.

    An unreachable MLflow is recorded in ``problems`` (once per failure, logged once);
    Parquet stays the record and the end of the sweep (or ``sync-mlflow``) backfills.
    """

    def __init__(self, tracker: Tracker | None, root: Location) -> None:
        self.tracker, self.root = tracker, root
        self.problems: list[str] = []
        self._specs: dict[str, TrialSpec | StudySpec] = {}
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks
        return {**self.__dict__, "_queue": None, "_thread": None, "_specs": {}}

    def expect(self, specs: Sequence[TrialSpec | StudySpec]) -> None:
        """The specs of the trials about to run: a Tune trial's config holds only the key."""
        self._specs.update((spec.key(), spec) for spec in specs)

    def publish(self, spec: TrialSpec | StudySpec) -> None:
        if self.tracker is None:
            return
        try:
            if isinstance(spec, StudySpec):
                log_study_to_mlflow(self.tracker, self.root, spec)
            else:
                log_trial_to_mlflow(self.tracker, self.root, spec)
        except TrackingUnavailable as err:
            if not self.problems:  # once: the sweep's summary repeats it with the count
                log.warning("MLflow unavailable, Parquet kept (sync later): %s", err)
            self.problems.append(str(err))

    def _work(self) -> None:
        assert self._queue is not None
        since = 0
        while (spec := self._queue.get()) is not None:
            self.publish(spec)
            since += 1
            if since >= COMPACT_EVERY:  # off the critical path: the trials are still running
                since = 0
                self._compact(spec.sweep)

    def _compact(self, sweep: str) -> None:
        """Fold the unit files written so far into parts, so the end of the sweep has only
        the last few hundred left to compact (2.5 s of a 630-trial sweep's 43 s otherwise).
        Safe while trials write: files listed after the scan are left alone, and readers see
        every row once at any point (see :mod:`.compaction`). In a child process, so that
        its buffers do not fragment the driver's heap. A failure only leaves the files for
        the final compaction."""
        from ..allocator import release_freed_memory
        from .compaction import compact_sweep_apart

        try:
            compact_sweep_apart(self.root, sweep)  # in a child: the driver's heap stays flat
        except OSError as err:
            log.warning("compacting the results of sweep %r during the run failed: %s", sweep, err)
        release_freed_memory()

    def on_trial_result(self, iteration, trials, trial, result, **info):  # noqa: ANN001
        """Each unit is published as soon as its trial reports it (``"units"``: the keys a
        report carries), so a Tune trial running a batch of merge trials still logs them one
        by one as they finish."""
        if self.tracker is None or not result.get("units"):
            return
        if self._thread is None:
            self._queue = queue.Queue()
            self._thread = threading.Thread(target=self._work, name="publish", daemon=True)
            self._thread.start()
        for unit in result["units"]:
            spec = self._specs.pop(unit, None)  # dropped once queued
            if spec is not None:  # None: reported again by a retried trial (already queued)
                self._queue.put(spec)

    def drain(self) -> None:
        """Wait until every queued trial is logged."""
        if self._thread is not None and self._queue is not None:
            self._queue.put(None)
            self._thread.join()
        self._thread = self._queue = None


__all__ = [
    "TUNE_LOGGER",
    "Progress",
    "TrialPublisher",
    "log_study_to_mlflow",
    "log_trial_to_mlflow",
]
