"""The Ray Tune function trainables: train one endpoint (stage 1), run merge trials and study
units (stage 2).

Both stages are idempotent, because Tune may run a trial twice (a retry after a node died, or
``Tuner.restore`` after a driver crash): stage 1 skips training when the checkpoint store
already holds an intact checkpoint under the endpoint's key; stage 2 writes its Parquet files
under its trial key (a rerun replaces them) with the ``trials`` file last, so its presence
marks a finished trial. Trials never talk to MLflow: the driver logs from the Parquet files,
so worker nodes need no access to the tracking server.

This module is the driver's side and imports no torch: Tune pickles the entry points by
reference, so the driver imports their module, and it writes a stored endpoint's rows from the
store's meta alone. The compute (training, merging, studies, measuring filters) lives in
:mod:`.unit_work`, imported where a unit is computed. Its public names are served from here
too (PEP 562), so ``from repair_dist.sweep.trainables import run_merge_trial`` still works.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import pandas as pd
from pyarrow.fs import FileType

from .._lazy import lazy_api
from ..location import Location
from ..store import CheckpointStore
from . import results
from .config import EndpointConfig, TrialSpec
from .studies import StudySpec
from .tune_setup import tune

#: Names of :mod:`.unit_work` importable from here (they import torch when first named).
_WORK = f"{__package__}.unit_work"
_API: dict[str, tuple[str, str]] = {
    name: (_WORK, name)
    for name in (
        "collapsed_total",
        "merge_for_spec",
        "register_endpoint",
        "run_merge_trial",
        "run_study_trial",
        "study_inputs",
        "trial_tables",
    )
}

__getattr__, __dir__ = lazy_api(__name__, globals(), _API)

if TYPE_CHECKING:  # what the names are, for type checkers and IDEs
    from .unit_work import (
        collapsed_total,
        merge_for_spec,
        register_endpoint,
        run_merge_trial,
        run_study_trial,
        study_inputs,
        trial_tables,
    )


def endpoint_from_dict(d: dict[str, Any]) -> EndpointConfig:
    return EndpointConfig(**d)


def trial_from_dict(d: dict[str, Any]) -> TrialSpec:
    return TrialSpec(**{**d, "a": EndpointConfig(**d["a"]), "b": EndpointConfig(**d["b"])})


def trial_to_dict(spec: TrialSpec) -> dict[str, Any]:
    return asdict(spec)


def train_endpoint(
    ep: EndpointConfig,
    store: CheckpointStore,
    data_root: str | None = None,
    *,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    storage: Location | None = None,
) -> dict[str, Any]:
    """Train ``ep`` unless the store already holds it; returns its ``endpoints`` table row.

    ``ep.train_workers > 1`` trains data-parallel on Ray Train workers of the given size. A
    stored endpoint's row comes from its meta (no torch).
    """
    key = ep.key()
    if not store.check(key):  # damage raises CorruptCheckpoint: never retrained silently
        from .unit_work import train_and_store

        train_and_store(
            ep,
            store,
            data_root,
            cpus_per_worker=cpus_per_worker,
            gpus_per_worker=gpus_per_worker,
            storage=storage,
        )
    meta = {**store.meta(key), **ep.params()}  # the store's "model" is the build config
    row = {col: meta.get(col) for col in results.REQUIRED["endpoints"]}
    row["uri"] = store.path(key)
    return row


def endpoint_filters(
    ep: EndpointConfig, store: CheckpointStore, data_root: str | None = None
) -> pd.DataFrame:
    """The ``filters`` rows of a stored endpoint: from its meta, else measured now.

    Endpoints trained before the ``filters`` table existed (or registered ones) have no rows
    in their meta; they are measured on the train split through the pass executor.
    """
    key = ep.key()
    meta = store.meta(key)
    if meta.get("filters"):
        rows = pd.DataFrame(meta["filters"])
    else:
        from .unit_work import measure_filters

        rows = measure_filters(ep, store, data_root)
    ids = {c: getattr(ep, c) for c in results.TRIAL_ID_COLUMNS}
    return rows.assign(endpoint_key=key, seed=ep.seed, **ids)


def endpoint_trainable(
    config: dict[str, Any],
    *,
    specs: Mapping[str, dict[str, Any]],
    sweep: str,
    store: CheckpointStore,
    root: Location,
    data_root: str | None,
    cpus: float,
    worker_cpus: float = 1.0,
    worker_gpus: float = 0.0,
) -> None:
    """Stage 1 (Tune): train one endpoint into the store; one ``endpoints`` row per sweep.

    ``config`` holds only the endpoint's key; ``specs`` (key -> config dict, shipped once per
    stage through the object store) the rest. Tune deep-copies and serialises every trial's
    config many times; with whole specs in it that was half of the driver's CPU per trial.
    The same holds for :func:`merge_trainable` and :func:`study_trainable`.
    """
    from .unit_work import set_threads

    set_threads(cpus)
    ep = endpoint_from_dict(specs[config["endpoint"]])
    row = train_endpoint(
        ep,
        store,
        data_root,
        cpus_per_worker=worker_cpus,
        gpus_per_worker=worker_gpus,
        storage=root.tune,
    )
    write_endpoint_rows(root, sweep, ep, row, store, data_root)
    tune.report({"test_acc": float(row["test_acc"]), "done": 1})


def write_endpoint_rows(
    root: Location,
    sweep: str,
    ep: EndpointConfig,
    row: dict[str, Any],
    store: CheckpointStore,
    data_root: str | None = None,
) -> None:
    """The endpoint's ``filters`` rows, then its ``endpoints`` row (which marks it recorded)."""
    filters = endpoint_filters(ep, store, data_root)
    results.write_rows(root, "filters", sweep, ep.key(), filters)
    results.write_rows(root, "endpoints", sweep, ep.key(), pd.DataFrame([row]))


#: Seconds between two reports of a batch's finished units (and at its end). A report is a
#: round trip between the trial and Tune's controller on the driver; one per unit cost the
#: driver more CPU than several units' worth of grouped reports.
REPORT_EVERY = 0.5


class UnitReports:
    """The finished units of a batch, reported to Tune together (``"units"``: their keys) at
    most every :data:`REPORT_EVERY` seconds and at the end, so the publisher still logs each
    unit to MLflow about as soon as its rows are written."""

    def __init__(self, every: float = REPORT_EVERY) -> None:
        self.every = every
        self._keys: list[str] = []
        self._last = time.monotonic()

    def add(self, key: str) -> None:
        self._keys.append(key)
        if time.monotonic() - self._last >= self.every:
            self.flush()

    def flush(self) -> None:
        if self._keys:
            tune.report({"units": self._keys})  # no "done": Tune would stop the batch
            self._keys = []
        self._last = time.monotonic()


def merge_trainable(
    config: dict[str, Any],
    *,
    specs: Mapping[str, list[dict[str, Any]]],
    store: CheckpointStore,
    root: Location,
    data_root: str | None,
    workers: int,
    cpus: float,
) -> None:
    """Stage 2 (Tune): a batch of (pair, method) trials, one after another; each shards its
    passes over the trial's workers and is reported as soon as its rows are written.

    ``config["trial"]`` names the batch in ``specs``. A unit whose ``trials`` file exists was
    finished by an earlier attempt of this batch (Tune retries a failed trial whole) and is
    reported without being computed again. Why batches: Tune's own bookkeeping per trial
    (placement group, actor reuse, state) cost the driver more than a tiny merge trial.
    """
    from .unit_work import run_merge_trial, set_threads

    set_threads(cpus)
    batch = [trial_from_dict(d) for d in specs[config["trial"]]]
    executor: Any = 1
    if workers > 1 or any(spec.amp for spec in batch):
        from ..distributed import pool_of_size

        # Lives in this trial's placement group (one bundle per worker, see the runner).
        executor = pool_of_size(workers, amp=any(spec.amp for spec in batch))
    loc = Location.of(root)
    failed: list[BaseException] = []
    reports = UnitReports()
    for spec in batch:
        key = spec.key()
        if loc.fs.get_file_info(loc.table_file("trials", spec.sweep, key)).type == FileType.File:
            reports.add(key)
            continue
        try:
            run_merge_trial(
                spec,
                store,
                loc,
                data_root=data_root,
                workers=executor,
                loader_workers=max(0, int(cpus) - 1),  # one core computes, the rest decode
            )
        except Exception as err:  # the batch's other trials still run; Tune retries the rest
            failed.append(err)
            continue
        reports.add(key)
    reports.flush()
    if failed:  # the first cause, as a single trial's failure would be
        raise failed[0]


def study_trainable(
    config: dict[str, Any],
    *,
    specs: Mapping[str, dict[str, Any]],
    store: CheckpointStore,
    root: Location,
    data_root: str | None,
    workers: int,
    cpus: float,
    amp: bool = False,
    worker_cpus: float = 1.0,
    worker_gpus: float = 0.0,
) -> None:
    """Stage 2 (Tune) for a study unit: like a merge trial, shards its passes over workers;
    ``worker_cpus``/``worker_gpus`` size the Ray Train workers of data-parallel curves."""
    from .unit_work import run_study_trial, set_threads

    set_threads(cpus)
    spec = StudySpec.from_dict(specs[config["study"]])
    executor: Any = 1
    if workers > 1 or amp:
        from ..distributed import pool_of_size

        executor = pool_of_size(workers, amp=amp)
    run_study_trial(
        spec,
        store,
        root,
        data_root=data_root,
        workers=executor,
        loader_workers=max(0, int(cpus) - 1),
        cpus_per_worker=worker_cpus,
        gpus_per_worker=worker_gpus,
    )
    tune.report({"units": [spec.key()], "done": 1})


__all__ = [
    "REPORT_EVERY",
    "UnitReports",
    "collapsed_total",
    "endpoint_filters",
    "endpoint_from_dict",
    "endpoint_trainable",
    "merge_for_spec",
    "merge_trainable",
    "register_endpoint",
    "run_merge_trial",
    "run_study_trial",
    "study_inputs",
    "study_trainable",
    "train_endpoint",
    "trial_from_dict",
    "trial_tables",
    "trial_to_dict",
    "write_endpoint_rows",
]
