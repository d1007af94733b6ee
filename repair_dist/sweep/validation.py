"""Validation of a :class:`~repair_dist.sweep.config.Sweep`: every problem, one line each.

:func:`validate_sweep` collects *every* problem of a sweep into one :class:`SweepConfigError`,
one line per problem naming the field, because a sweep that fails after an hour on its tenth
trial (a width the model refuses, data missing on this machine, a GPU the cluster does not
have: Ray would wait forever) costs far more than reading a list of mistakes up front.
Validation is cheap: argument checks, file-existence checks and one forward pass per
architecture on PyTorch's ``meta`` device (shapes only, no memory, no data). Only that forward
pass needs torch: every other check reads torch-free catalogs (:mod:`repair_dist.variants`,
:mod:`repair_dist.models.catalog`, :mod:`repair_dist.data.catalog`), so validating a finished
sweep's rerun with ``build_models=False`` never imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..data.catalog import DATASETS, check_dataset, dataset_info
from ..location import SAFE_NAME, SAFE_PUNCTUATION
from ..models.catalog import MODEL_NAMES
from ..variants import METHODS, OPTIMIZERS, RESIDUAL_MODES
from .config import (
    ArchGrid,
    Sweep,
    SweepConfigError,
    build_kwargs,
    fmt_value,
    integer_width,
    is_int,
    is_number,
    takes_depth,
)
from .studies import STUDIES
from .studies.base import check_choices, check_repair_variants

# --------------------------------------------------------------------------------------------
# model arguments: asked of the model's own constructor, never re-implemented here
# --------------------------------------------------------------------------------------------


def _constructor_problem(model: str, **kwargs: Any) -> str | None:
    """The first line of what ``build_model(model, **kwargs)`` raises, or None.

    Built on PyTorch's ``meta`` device: no weight is allocated, so a ResNet50 x4 costs the
    same milliseconds as an MLP. The constructor is the one authority on its arguments, so
    the sweep accepts exactly what the model accepts.
    """
    import torch

    from ..models import build_model

    try:
        with torch.device("meta"):
            build_model(model, **kwargs)
    except Exception as e:  # any constructor error, reported as its first line
        text = str(e).strip()
        return text.splitlines()[0] if text else type(e).__name__
    return None


def _width_arg(model: str, width: object) -> tuple[str | None, Any]:
    """(problem, constructor argument) of one width: type checks only, no build."""
    if not is_number(width):
        return f"{width!r} is not a number", None
    if integer_width(model):  # the constructor declares ``width: int``
        if not is_int(width):
            return f"{fmt_value(width)} is not supported by {model}: its width is an integer", None
        return None, int(width)  # type: ignore[call-overload]
    return None, float(width)  # type: ignore[arg-type]


def _depth_arg(model: str, depth: object) -> tuple[str | None, Any]:
    if depth is None:  # the model's default depth
        return None, None
    if not takes_depth(model):
        return (
            f"{fmt_value(depth)} is not allowed for {model}: its depth is fixed by the name; "
            "leave depths at [null]"
        ), None
    if not is_int(depth):
        return f"{depth!r} is not an integer", None
    return None, int(depth)  # type: ignore[call-overload]


def _norm_arg(model: str, norm: object) -> tuple[str | None, Any]:
    if not isinstance(norm, str):
        return f"{norm!r} is not a norm name", None
    return None, norm


#: (ArchGrid field, constructor argument, type check) of each swept model argument.
_ARGS = (
    ("widths", "width", _width_arg),
    ("depths", "depth", _depth_arg),
    ("norms", "norm", _norm_arg),
)


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def _check_positive_int(
    problems: list[str], field: str, value: object, *, optional: bool = False
) -> None:
    if optional and value is None:
        return
    if not (is_int(value) and int(value) >= 1):  # type: ignore[call-overload]
        problems.append(f"{field}: must be an integer >= 1 (got {value!r})")


def _check_name(problems: list[str], name: object) -> None:
    if not isinstance(name, str) or not name:
        problems.append(
            "name: must be a non-empty string (it names the MLflow experiment and the "
            "results partition)"
        )
    elif not SAFE_NAME.match(name):
        ok = SAFE_PUNCTUATION
        bad = sorted({c for c in name if not (c.isascii() and (c.isalnum() or c in ok))})
        what = f"characters {''.join(bad)!r}" if bad else "a leading punctuation mark"
        problems.append(
            f"name: {name!r} has {what}; use letters, digits and {' '.join(ok)} "
            "(starting with a letter or digit): it becomes a directory name"
        )


def _check_dataset(problems: list[str], sweep: Sweep, check_data: bool) -> dict | None:
    if not isinstance(sweep.dataset, str):
        problems.append(f"dataset: must be a string (got {sweep.dataset!r})")
        return None
    try:
        info = dataset_info(sweep.dataset, sweep.data_root)
    except ValueError:
        problems.append(
            f"dataset: unknown dataset {sweep.dataset!r}; choose one of {', '.join(DATASETS)}"
        )
        return None
    if check_data:
        try:
            check_dataset(sweep.dataset, sweep.data_root)
        except FileNotFoundError as e:
            problems.append(f"dataset: {sweep.dataset!r} is not on this machine: {e}")
    return info


def _check_arch(
    problems: list[str], i: int, arch: object, info: dict | None, build: bool = True
) -> None:
    where = f"archs[{i}]"
    if not isinstance(arch, ArchGrid):
        problems.append(f"{where}: expected an ArchGrid, got {arch!r}")
        return
    if arch.model not in MODEL_NAMES:
        problems.append(
            f"{where}.model: unknown model {arch.model!r}; choose one of {', '.join(MODEL_NAMES)}"
        )
        return
    before = len(problems)
    asks: list[tuple[str, str, object, Any]] = []
    for field, kwarg, parse in _ARGS:
        values = getattr(arch, field)
        if not isinstance(values, tuple) or not values:
            problems.append(f"{where}.{field}: must be a non-empty list (got {values!r})")
            continue
        for v in values:
            problem, arg = parse(arch.model, v)
            if problem:
                problems.append(f"{where}.{field}: {problem}")
            elif arg is not None:
                asks.append((field, kwarg, v, arg))
    if len(problems) > before or not build:
        return
    failures = None if info is None else _build_failures(where, arch, info)
    if failures == []:  # every combination builds and runs: nothing to attribute
        return
    # Something fails (or the dataset is unknown): ask the constructor about each value alone,
    # the others at their defaults, so each bad value is one line on its own field.
    for field, kwarg, shown, arg in asks:
        problem = _constructor_problem(arch.model, **{kwarg: arg})
        if problem:
            problems.append(
                f"{where}.{field}: {fmt_value(shown)} is not supported by {arch.model}: {problem}"
            )
    if len(problems) == before and failures:
        problems.extend(failures)


def _build_failures(where: str, arch: ArchGrid, info: dict) -> list[str]:
    """Build each combination on the meta device and run a forward pass (shapes only).

    Catches what argument rules cannot see, such as an input too small for the net's
    down-sampling, in milliseconds and without allocating a single weight.
    """
    import torch

    from ..models import build_model

    problems: list[str] = []
    for width, depth, norm in arch.combos():
        kwargs = build_kwargs(arch.model, width, depth, norm, info)
        try:
            with torch.device("meta"):
                net = build_model(arch.model, **kwargs)
                net.eval()(torch.empty(2, *kwargs["in_shape"]))
        except Exception as e:  # any constructor or shape error, reported per combination
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            problems.append(
                f"{where}: {arch.model}(width={fmt_value(width)}, depth={depth}, norm={norm}) does "
                f"not run on inputs of shape {tuple(info['in_shape'])}: {first}"
            )
    return problems


def _check_seeds(problems: list[str], sweep: Sweep) -> None:
    if sweep.pairs is not None:
        if not isinstance(sweep.pairs, tuple) or not sweep.pairs:
            problems.append(
                f"pairs: must be a non-empty list of [seed_a, seed_b] (got {sweep.pairs!r})"
            )
            return
        for j, pair in enumerate(sweep.pairs):
            if not (isinstance(pair, tuple) and len(pair) == 2 and all(is_int(s) for s in pair)):
                problems.append(f"pairs[{j}]: must be two integer seeds (got {pair!r})")
            elif int(pair[0]) == int(pair[1]):
                problems.append(
                    f"pairs[{j}]: seeds are equal ({pair[0]}, {pair[1]}): a net merged with "
                    "itself has no barrier to measure"
                )
            elif min(pair) < 0:
                problems.append(f"pairs[{j}]: seeds must be >= 0 (got {pair!r})")
        ok = [p for p in sweep.pairs if isinstance(p, tuple) and len(p) == 2]
        dupes = sorted({p for p in ok if ok.count(p) > 1})
        if dupes:
            problems.append(f"pairs: listed twice: {', '.join(map(str, dupes))}")
        return
    seeds = sweep.seeds
    if not isinstance(seeds, tuple) or not all(is_int(s) and s >= 0 for s in seeds):
        problems.append(f"seeds: must be a list of integers >= 0 (got {seeds!r})")
        return
    if len(set(seeds)) < 2:
        problems.append(
            f"seeds: need at least 2 different seeds to form a pair (got {list(seeds)})"
        )
        return
    if len(set(seeds)) != len(seeds):
        problems.append(f"seeds: listed twice: {sorted({s for s in seeds if seeds.count(s) > 1})}")
    if len(seeds) % 2 and not _used_by_studies(sweep, seeds[-1]):
        problems.append(
            f"seeds: an odd count ({len(seeds)}) leaves seed {seeds[-1]} unpaired (seeds pair "
            "up consecutively); add a seed, drop one, or list pairs explicitly"
        )


def _used_by_studies(sweep: Sweep, seed: object) -> bool:
    """Whether a study reads the net of ``seed`` beyond the pairs (a merge-many N-tuple)."""
    for st in STUDIES.values():
        config = getattr(sweep, st.field, None)
        if config is not None and any(ep.seed == seed for ep in st.endpoints(config, sweep)):
            return True
    return False


def _check_alphas(problems: list[str], alphas: object) -> None:
    if is_int(alphas):
        if int(alphas) < 3:  # type: ignore[call-overload]
            problems.append(f"alphas: need at least 3 points (0, 0.5, 1), got {alphas}")
        return
    if not isinstance(alphas, tuple) or not all(is_number(a) for a in alphas):
        problems.append(f"alphas: must be a count or a list of numbers (got {alphas!r})")
        return
    outside = [a for a in alphas if not 0.0 <= float(a) <= 1.0]
    if outside:
        problems.append(f"alphas: {', '.join(map(fmt_value, outside))} outside [0, 1]")
    if len(set(alphas)) < 3:
        problems.append(f"alphas: need at least 3 distinct values, got {list(alphas)}")


def _check_resources(problems: list[str], sweep: Sweep, cluster: Mapping[str, Any] | None) -> None:
    _check_positive_int(problems, "workers_per_trial", sweep.workers_per_trial)
    ok = is_int(sweep.workers_per_trial) and sweep.workers_per_trial >= 1
    if not (is_number(sweep.cpus_per_worker) and sweep.cpus_per_worker > 0):
        problems.append(f"cpus_per_worker: must be a number > 0 (got {sweep.cpus_per_worker!r})")
        ok = False
    if not (is_number(sweep.gpus_per_worker) and sweep.gpus_per_worker >= 0):
        problems.append(f"gpus_per_worker: must be a number >= 0 (got {sweep.gpus_per_worker!r})")
        ok = False
    _check_positive_int(
        problems, "max_concurrent_trials", sweep.max_concurrent_trials, optional=True
    )
    _check_positive_int(problems, "train_workers", sweep.train_workers)
    if not isinstance(sweep.amp, bool):
        problems.append(f"amp: must be true or false (got {sweep.amp!r})")
    if cluster is None or not ok:
        return
    workers = int(sweep.workers_per_trial)
    cpus, gpus = float(cluster.get("CPU", 0) or 0), float(cluster.get("GPU", 0) or 0)
    if sweep.gpus_per_worker > 0 and gpus <= 0:
        problems.append(
            f"gpus_per_worker: {fmt_value(sweep.gpus_per_worker)} GPU per worker requested but the "
            "cluster has no GPU (the trial would wait forever); set gpus_per_worker: 0"
        )
    elif workers * sweep.gpus_per_worker > gpus:
        problems.append(
            f"gpus_per_worker: workers_per_trial x gpus_per_worker = "
            f"{fmt_value(workers * sweep.gpus_per_worker)} GPUs per trial, but the cluster has "
            f"{fmt_value(gpus)} (the trial would wait forever)"
        )
    trainers = int(sweep.train_workers) if is_int(sweep.train_workers) else 1
    if trainers > 1 and 0.5 + trainers * sweep.cpus_per_worker > cpus:
        problems.append(
            f"train_workers: 0.5 CPU (the trial) + train_workers x cpus_per_worker = "
            f"{fmt_value(0.5 + trainers * float(sweep.cpus_per_worker))} CPUs, but the cluster has "
            f"{fmt_value(cpus)} (training would never start)"
        )
    if trainers > 1 and sweep.gpus_per_worker > 0 and trainers * sweep.gpus_per_worker > gpus:
        problems.append(
            f"train_workers: {trainers} x {fmt_value(sweep.gpus_per_worker)} GPUs for training, "
            f"but the cluster has {fmt_value(gpus)}"
        )
    if trainers > 1 and getattr(sweep, "curve", None) is not None:
        # A curve unit keeps its own resources (its passes) while Ray Train fits the curve.
        trial = float(sweep.cpus_per_worker) * workers + (0.25 if workers > 1 or sweep.amp else 0)
        need = trial + trainers * float(sweep.cpus_per_worker)
        if need > cpus:
            problems.append(
                f"curve: a curve unit holds {fmt_value(trial)} CPUs and fits on train_workers x "
                f"cpus_per_worker more, {fmt_value(need)} CPUs in all, but the cluster has "
                f"{fmt_value(cpus)} (the fit would never start)"
            )
    if workers * sweep.cpus_per_worker > cpus:
        problems.append(
            f"workers_per_trial: workers_per_trial x cpus_per_worker = "
            f"{fmt_value(workers * float(sweep.cpus_per_worker))} CPUs per trial, but the cluster "
            f"has {fmt_value(cpus)} (its actors would never all start)"
        )


def validate_sweep(
    sweep: Sweep,
    *,
    cluster_resources: Mapping[str, Any] | None = None,
    check_data: bool = True,
    build_models: bool = True,
) -> None:
    """Raise one :class:`SweepConfigError` listing every problem of ``sweep``; else return.

    ``build_models=False`` leaves out building every architecture and running it on the
    dataset's input shape (:func:`validate_models` does that): the runner builds only when
    something is left to compute, because the first forward on PyTorch's meta device imports
    ``torch._dynamo`` (over a second), which a finished sweep's rerun should not pay.

    ``cluster_resources`` (``ray.cluster_resources()``) enables the resource checks: GPUs
    asked of a cluster without any, or more CPUs per trial than the cluster has, would make
    Ray wait forever instead of failing. ``check_data=False`` skips the dataset-on-this-machine
    check (for a driver that does not hold the data its workers read).
    """
    problems: list[str] = []
    _check_name(problems, sweep.name)
    info = _check_dataset(problems, sweep, check_data)
    if not isinstance(sweep.archs, tuple) or not sweep.archs:
        problems.append(f"archs: must be a non-empty list of architectures (got {sweep.archs!r})")
    else:
        for i, arch in enumerate(sweep.archs):
            _check_arch(problems, i, arch, info, build=build_models)
    _check_seeds(problems, sweep)
    _check_positive_int(problems, "epochs", sweep.epochs)
    _check_positive_int(problems, "batch_size", sweep.batch_size)
    _check_positive_int(problems, "data_limit", sweep.data_limit, optional=True)
    _check_positive_int(problems, "trial_batch", sweep.trial_batch, optional=True)
    if sweep.lr is not None and not (is_number(sweep.lr) and sweep.lr > 0):
        problems.append(f"lr: must be a number > 0 or null for the default (got {sweep.lr!r})")
    if sweep.data_root is not None and not isinstance(sweep.data_root, str):
        problems.append(f"data_root: must be a path string (got {sweep.data_root!r})")
    studies = [st for st in STUDIES.values() if getattr(sweep, st.field, None) is not None]
    # A sweep that only runs studies (curves, pruning) may list no merge methods.
    check_choices(problems, "methods", sweep.methods, METHODS, allow_empty=bool(studies))
    if sweep.residual not in RESIDUAL_MODES:
        problems.append(
            f"residual: unknown {sweep.residual!r}; choose one of {', '.join(RESIDUAL_MODES)} "
            "(output: the stage output only, REPAIR's code; sum: every block output, Tatro et al.)"
        )
    if sweep.optimizer not in OPTIMIZERS:
        problems.append(
            f"optimizer: unknown {sweep.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"
        )
    for st in studies:
        problems += st.problems(getattr(sweep, st.field), sweep)
    check_repair_variants(problems, "variants", sweep.variants, "trial")
    _check_alphas(problems, sweep.alphas)
    _check_resources(problems, sweep, cluster_resources)
    if problems:
        raise SweepConfigError(problems, sweep.name)


def validate_models(sweep: Sweep) -> None:
    """The architecture checks :func:`validate_sweep` leaves out with ``build_models=False``:
    every combination built on the meta device and run on the dataset's input shape.
    One :class:`SweepConfigError` listing every problem; call after :func:`validate_sweep`."""
    problems: list[str] = []
    info = _check_dataset(problems, sweep, check_data=False)
    for i, arch in enumerate(sweep.archs):
        _check_arch(problems, i, arch, info)
    if problems:
        raise SweepConfigError(problems, sweep.name)


__all__ = ["SweepConfigError", "validate_models", "validate_sweep"]
