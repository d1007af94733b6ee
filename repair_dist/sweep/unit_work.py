"""The compute behind the Tune trainables: train an endpoint, run a merge trial or a study unit.

Why a module of its own: :mod:`.trainables` holds the Tune entry points, which the sweep's
driver imports (Tune pickles them by reference to their module) and which read a stored
endpoint from its meta alone. Everything here needs torch and the science modules, so it is
imported only where a unit is computed: in Tune's worker processes, or in the driver when an
endpoint has to be trained or measured. A driver whose endpoints are all stored never pays
torch's import (seconds of CPU and hundreds of MB per sweep).
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
import time
from typing import Any

import pandas as pd
import torch
from torch.utils.data import TensorDataset

from ..collapse import filter_collapse
from ..curves import fit_curve
from ..data import BatchPlan, load_dataset
from ..location import Location
from ..metrics import evaluate
from ..models import build_model
from ..pipeline import merge_trial
from ..store import CheckpointStore, canonical_json
from ..train import train_model
from . import results
from .config import EndpointConfig, TrialSpec
from .ddp import fit_curve_data_parallel, train_data_parallel
from .studies import StudyInputs, StudySpec, study


def set_threads(cpus: float) -> None:
    """torch's intra-op threads: the CPUs the trial was given (at least one)."""
    torch.set_num_threads(max(1, int(cpus)))


def train_and_store(
    ep: EndpointConfig,
    store: CheckpointStore,
    data_root: str | None = None,
    *,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    storage: Location | None = None,
) -> None:
    """Train ``ep``, measure it, and save it with its metrics under ``ep.key()``.

    ``ep.train_workers > 1`` trains data-parallel on Ray Train workers of the given size.
    """
    key = ep.key()
    train, test = load_dataset(ep.dataset, data_root, limit=ep.data_limit)
    started = time.perf_counter()
    if ep.train_workers > 1:
        net = train_data_parallel(
            ep,
            data_root=data_root,
            cpus_per_worker=cpus_per_worker,
            gpus_per_worker=gpus_per_worker,
            storage=storage or Location.of(os.path.join(tempfile.gettempdir(), "repair-dist")),
        )
    else:
        torch.manual_seed(ep.seed)  # the architecture's init is part of the seed's identity
        net = build_model(ep.model, **ep.model_kwargs(data_root))
        net = train_model(
            net,
            train,
            epochs=ep.epochs,
            seed=ep.seed,
            batch_size=ep.batch_size,
            lr=ep.lr,
            optimizer=ep.optimizer,
        )
    seconds = time.perf_counter() - started
    tr, te = evaluate(net, train), evaluate(net, test)
    if not (math.isfinite(tr["loss"]) and math.isfinite(te["loss"])):
        raise FloatingPointError(
            f"endpoint {ep.model} w{ep.width:g} norm={ep.norm} seed={ep.seed} diverged "
            f"(train loss {tr['loss']}, test loss {te['loss']}); set a lower lr in the sweep"
        )
    filters = filter_collapse(net, train, endpoint_key=key)
    meta = {
        **ep.params(),
        "train_loss": tr["loss"],
        "train_acc": tr["acc"],
        "test_loss": te["loss"],
        "test_acc": te["acc"],
        "collapsed_filters": collapsed_total(filters),
        "filters": filters.to_dict("records"),
        "train_seconds": seconds,
    }
    store.save(key, net.cpu(), meta)


def collapsed_total(filters: pd.DataFrame) -> int:
    """The ``endpoints`` table's ``collapsed_filters``: collapsed plus dead channels summed
    over the endpoint's ``filters`` rows (one number per net, kept for summaries)."""
    return int(filters["collapsed"].sum() + filters["dead"].sum())


def measure_filters(
    ep: EndpointConfig, store: CheckpointStore, data_root: str | None = None
) -> pd.DataFrame:
    """The ``filters`` rows of a stored endpoint whose meta has none, measured on the train
    split through the pass executor."""
    key = ep.key()
    net, _ = store.load(key)
    train, _ = load_dataset(ep.dataset, data_root, limit=ep.data_limit)
    return filter_collapse(net, train, endpoint_key=key)


def register_endpoint(
    ep: EndpointConfig,
    source: str | os.PathLike,
    store: CheckpointStore,
    data_root: str | None = None,
) -> dict[str, Any]:
    """Adopt existing weights (e.g. a torchvision ResNet50 ``.pth``) as endpoint ``ep``.

    Stored under ``ep.key()``, so stage 1 of any sweep holding ``ep`` finds it and trains
    nothing. The weights are checked against the architecture before anything is written;
    test metrics are measured now (train metrics stay empty: a full pass over e.g. ImageNet's
    train split is not worth it at registration).
    """
    config = {"name": ep.model, **ep.model_kwargs(data_root)}
    written = store.register(ep.key(), source, config, ep.params())
    net, _ = store.load(ep.key())
    _, test = load_dataset(ep.dataset, data_root, limit=ep.data_limit)
    te = evaluate(net, test)
    metrics = {
        "test_loss": te["loss"],
        "test_acc": te["acc"],
        "train_loss": float("nan"),
        "train_acc": float("nan"),
        # Dead units are measured on the test split here (a train pass over, e.g., ImageNet
        # is not worth it at registration); the filters rows say which split in the meta.
        "collapsed_filters": collapsed_total(
            filters := filter_collapse(net, test, endpoint_key=ep.key())
        ),
        "filters": filters.to_dict("records"),
        "filters_split": "test",
        "train_seconds": 0.0,
        "registered_from": str(source),
    }
    store.save(ep.key(), net, {**written, **ep.params(), **metrics})
    return metrics


def trial_tables(spec: TrialSpec, outcome: Any) -> dict[str, pd.DataFrame]:
    """The Parquet rows of one finished merge trial (DESIGN.md §5)."""
    params = spec.params()
    ids = {c: params[c] for c in results.TRIAL_ID_COLUMNS}
    key = spec.key()
    trials = outcome.barriers.assign(
        trial_key=key,
        endpoint_a=params["endpoint_a"],
        endpoint_b=params["endpoint_b"],
        method=spec.method,
        seed_a=spec.a.seed,
        seed_b=spec.b.seed,
        residual=spec.residual,
        seconds=outcome.seconds,
        **ids,
    )
    curves = outcome.curves.assign(trial_key=key, method=spec.method, **ids)
    layers = outcome.layers.assign(trial_key=key, method=spec.method, **ids)
    return {"curves": curves, "layers": layers, "trials": trials}


def merge_for_spec(
    spec: TrialSpec, net_a: Any, net_b: Any, train: Any, test: Any, *, workers: Any = 1
) -> Any:
    """:func:`~repair_dist.pipeline.merge_trial` with every setting taken from ``spec``."""
    return merge_trial(
        net_a,
        net_b,
        train,
        test,
        method=spec.method,
        variants=spec.variants,
        alphas=list(spec.alphas),
        residual=spec.residual,
        batch_size=spec.batch_size,
        seed=spec.a.seed,
        workers=workers,
    )


def _meta(spec: TrialSpec, table: str) -> dict[str, str] | None:
    """What MLflow needs beyond the columns, in the ``trials`` file (for ``sync-mlflow``)."""
    if table != "trials":
        return None
    return {
        results.TRIAL_PARAMS_KEY: canonical_json(spec.params()),
        results.TRIAL_RUN_NAME_KEY: spec.run_name(),
    }


def run_merge_trial(
    spec: TrialSpec,
    store: CheckpointStore,
    root: str | os.PathLike | Location,
    *,
    data_root: str | None = None,
    workers: Any = 1,
    loader_workers: int = 0,
) -> dict[str, pd.DataFrame]:
    """Align, interpolate, renormalise, evaluate; write the trial's Parquet files.

    ``loader_workers``: DataLoader processes per pass worker for file-backed datasets (JPEG
    decoding of ImageNet is the bottleneck there); in-memory tensors need none.
    """
    net_a, _ = store.load(spec.a.key())
    net_b, _ = store.load(spec.b.key())
    train, test = load_dataset(spec.a.dataset, data_root, limit=spec.a.data_limit)
    if not isinstance(train, TensorDataset):
        train = BatchPlan(train, spec.batch_size, loader_workers=loader_workers)
        test = BatchPlan(test, spec.batch_size, loader_workers=loader_workers)
    outcome = merge_for_spec(spec, net_a, net_b, train, test, workers=workers)
    tables = trial_tables(spec, outcome)
    key, root = spec.key(), Location.of(root)
    for table in ("curves", "layers", "trials"):  # "trials" last: it marks the trial finished
        results.write_rows(
            root, table, spec.sweep, key, tables[table], extra="drop", metadata=_meta(spec, table)
        )
    return tables


def study_inputs(
    spec: StudySpec,
    store: CheckpointStore,
    data_root: str | None,
    workers: Any = 1,
    loader_workers: int = 0,
    *,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    storage: Location | None = None,
) -> StudyInputs:
    """The datasets, plans and pass workers of one unit; curves fit data-parallel on Ray Train
    workers of the given size when the endpoints' recipe asks for ``train_workers > 1``."""
    ep = spec.endpoints[0]
    train, test = load_dataset(ep.dataset, data_root, limit=ep.data_limit)
    loaders = 0 if isinstance(train, TensorDataset) else loader_workers  # tensors need none
    plans = [BatchPlan(d, spec.batch_size, loader_workers=loaders) for d in (train, test)]
    fit: Any = fit_curve
    if ep.train_workers > 1:
        fit = functools.partial(
            _fit_curve_on_ray_train,
            ep=ep,
            data_root=data_root,
            cpus_per_worker=cpus_per_worker,
            gpus_per_worker=gpus_per_worker,
            storage=storage or Location.of(os.path.join(tempfile.gettempdir(), "repair-dist")),
        )
    return StudyInputs(store, train, test, plans[0], plans[1], workers, fit)


def _fit_curve_on_ray_train(
    net_a: Any, net_b: Any, train: Any, *, ep: EndpointConfig, **kwargs: Any
) -> Any:
    """``fit_curve``'s signature over :func:`fit_curve_data_parallel` (``train`` is ``ep``'s
    training set, which every rank loads itself)."""
    del train
    return fit_curve_data_parallel(net_a, net_b, ep, **kwargs)


def run_study_trial(
    spec: StudySpec,
    store: CheckpointStore,
    root: str | os.PathLike | Location,
    *,
    data_root: str | None = None,
    workers: Any = 1,
    loader_workers: int = 0,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
) -> dict[str, pd.DataFrame]:
    """Compute one study unit and write its tables, in the study's order (the last marks it
    finished), each as ``<table>/sweep=<sweep>/<key>.parquet``: a rerun replaces, never adds."""
    kind = study(spec.study)
    root = Location.of(root)
    inputs = study_inputs(
        spec,
        store,
        data_root,
        workers,
        loader_workers,
        cpus_per_worker=cpus_per_worker,
        gpus_per_worker=gpus_per_worker,
        storage=root.tune,
    )
    tables = kind.run(spec, inputs)
    for table in kind.tables:
        # The last file marks the unit finished and carries its MLflow params (sync-mlflow).
        meta = None
        if table == kind.tables[-1]:
            meta = {
                results.TRIAL_PARAMS_KEY: canonical_json(spec.params()),
                results.TRIAL_RUN_NAME_KEY: spec.run_name(),
                results.STUDY_KEY: spec.study,
            }
        results.write_rows(
            root, table, spec.sweep, spec.key(), tables[table], extra="drop", metadata=meta
        )
    return tables
