"""Everything a sweep needs, checked in one phase before Ray starts: one message lists it all.

Why one phase: a sweep that fails on its first problem makes the user fix and rerun once per
problem, and a problem found by the trials (an unwritable ``--store``) costs every endpoint its
Tune retries and hundreds of lines of tracebacks, followed by the wrong advice to rerun. Here
the sweep's fields (:func:`~repair_dist.sweep.validation.validate_sweep`), its resources (GPUs
and CPUs of the cluster, or of this machine when the sweep starts its own local Ray), the
results root, the checkpoint store and the MLflow store are checked together and every problem
becomes one line of a single :class:`~repair_dist.sweep.config.SweepConfigError`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..location import Location
from ..storage import check_writable, location_problem
from ..store import CheckpointStore
from .config import Sweep, SweepConfigError
from .validation import validate_sweep


@dataclass(frozen=True)
class Checked:
    """Where a checked sweep writes (what :func:`preflight` resolved)."""

    root: Location
    store: CheckpointStore


def local_resources(*, count_gpus: bool = True) -> dict[str, float]:
    """What a local Ray started by this process will have: this machine's CPUs and GPUs.

    ``count_gpus=False`` leaves ``GPU`` out, for a sweep that asks for none (no check reads
    the count then): counting them imports torch, over a second a finished sweep's rerun
    would pay for nothing.
    """
    out = {"CPU": float(os.cpu_count() or 1)}
    if count_gpus:
        import torch

        out["GPU"] = float(torch.cuda.device_count() if torch.cuda.is_available() else 0)
    return out


def _tracking_problem(uri: str) -> str | None:
    """A sqlite store needs a writable directory; servers are not required to be up (an
    unreachable MLflow loses nothing: Parquet is the record, ``sync-mlflow`` backfills)."""
    if not uri.startswith("sqlite:///"):
        return None
    directory = Path(uri[len("sqlite:///") :]).parent
    return check_writable("MLflow store directory of --tracking-uri", Location.of(directory))


#: Tune's experiment-state period; :mod:`.tune_setup` sets its default (not imported here:
#: checking a sweep imports no Tune).
TUNE_STATE_PERIOD_VARIABLE = "TUNE_GLOBAL_CHECKPOINT_S"


def _tune_environment_problem() -> str | None:
    """A value of :data:`TUNE_STATE_PERIOD_VARIABLE` Tune would fail on after Ray started."""
    value = os.environ.get(TUNE_STATE_PERIOD_VARIABLE)
    if value is None or value == "auto":
        return None
    try:
        if float(value) >= 0:
            return None
    except ValueError:
        pass
    return (
        f"environment {TUNE_STATE_PERIOD_VARIABLE}={value!r}: Tune reads seconds >= 0 or "
        "'auto'; unset it to let repair-dist's default save Tune's state when a fit starts "
        "and ends"
    )


def preflight(
    sweep: Sweep,
    root: Any,
    store: Any,
    tracking_uri: str | None,
    *,
    cluster_resources: Mapping[str, Any] | None,
    build_models: bool = True,
) -> Checked:
    """Check the sweep, its resources and every place it writes; SweepConfigError lists all.

    ``build_models``: see :func:`~repair_dist.sweep.validation.validate_sweep`.

    Nothing is left behind but the (empty) directories a sweep would create anyway.
    """
    problems: list[str] = []
    try:
        validate_sweep(sweep, cluster_resources=cluster_resources, build_models=build_models)
    except SweepConfigError as err:
        problems.extend(err.problems)
    loc, problem = location_problem("results root (--root)", root)
    if loc is not None:
        problem = check_writable("results root (--root)", loc)
    problems += [problem] if problem else []
    store_loc, problem = (None, None)
    if store is not None:
        store_loc, problem = location_problem("checkpoint store (--store)", store)
    elif loc is not None:
        store_loc = loc.checkpoints
    if store_loc is not None:
        problem = check_writable("checkpoint store (--store)", store_loc)
    problems += [problem] if problem else []
    if tracking_uri is not None and (problem := _tracking_problem(tracking_uri)):
        problems.append(problem)
    if problem := _tune_environment_problem():
        problems.append(problem)
    if problems:
        raise SweepConfigError(problems, sweep.name if isinstance(sweep.name, str) else None)
    assert loc is not None and store_loc is not None
    return Checked(loc, CheckpointStore(store_loc))


__all__ = ["Checked", "local_resources", "preflight"]
