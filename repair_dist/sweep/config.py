"""The sweep description: typed, frozen dataclasses, validated before anything is scheduled.

A :class:`Sweep` is a grid (architectures x widths x depths x norms x seed pairs x methods);
it expands into deduplicated stage-1 :class:`EndpointConfig` (one per trained net) and stage-2
:class:`TrialSpec` (one per pair and method). Both carry content keys: equal configs give equal
keys, so a rerun or a resumed sweep finds its checkpoints and results instead of redoing them.

:func:`validate_sweep` collects *every* problem of a sweep into one :class:`SweepConfigError`,
one line per problem naming the field, because a sweep that fails after an hour on its tenth
trial (a width the model refuses, data missing on this machine, a GPU the cluster does not
have: Ray would wait forever) costs far more than reading a list of mistakes up front.
Validation is cheap: argument checks, file-existence checks and one forward pass per
architecture on PyTorch's ``meta`` device (shapes only, no memory, no data).
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import itertools
import math
import numbers
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from .. import store as _store
from ..data import DATASETS, check_dataset, dataset_info
from ..models import MODEL_NAMES, NORMS, build_model
from ..models.vgg import VGG_CONFIGS
from ..pipeline import METHODS
from ..repair import VARIANTS
from ..store import CheckpointStore, canonical_json

#: Reported for every trial without being asked for (DESIGN.md §5).
ALWAYS_REPORTED: tuple[str, ...] = ("naive", "aligned")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ALPHA_DECIMALS = 6


class SweepConfigError(ValueError):
    """A sweep that cannot run; ``problems`` holds one line per problem, each naming its field."""

    def __init__(self, problems: Sequence[str], name: str | None = None) -> None:
        self.problems = list(problems)
        what = f"sweep {name!r}" if isinstance(name, str) and name else "sweep"
        count = f"{len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}"
        super().__init__(f"invalid {what} ({count}):\n" + "\n".join(f"  - {p}" for p in problems))


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def _is_int(x: object) -> bool:
    """An integer, or a float holding one (YAML and JSON readers give 128.0 for 128 at times)."""
    if isinstance(x, bool):
        return False
    if isinstance(x, numbers.Integral):
        return True
    return isinstance(x, float) and x.is_integer()


def _is_number(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(float(x))


def _tuple(x: Any) -> Any:
    """Lists (from YAML/JSON) become tuples, so configs hash and compare."""
    if isinstance(x, list):
        return tuple(_tuple(v) for v in x)
    if isinstance(x, tuple):
        return tuple(_tuple(v) for v in x)
    return x


def _fmt(x: object) -> str:
    """A width like 2.0 reads as 2 in messages and run names."""
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return repr(x) if isinstance(x, str) else str(x)


def _model_parameters(model: str) -> Mapping[str, inspect.Parameter]:
    """The constructor arguments of a registered model (what ``build_model`` binds)."""
    from ..models import _signature  # the registry's own view of each constructor

    return _signature(model).parameters


def _takes_depth(model: str) -> bool:
    return model in MODEL_NAMES and "depth" in _model_parameters(model)


def _default_depth(model: str) -> int | None:
    """The depth a model gets when a sweep says ``None`` (MLP 6, VGG 11, ResNet20 20)."""
    if not _takes_depth(model):
        return None
    default = _model_parameters(model)["depth"].default
    return default if _is_int(default) else None


def _integer_width(model: str) -> bool:
    """Whether the model's ``width`` is declared ``int`` (units or an integer multiplier)."""
    if model not in MODEL_NAMES:
        return False
    param = _model_parameters(model).get("width")
    return param is not None and param.annotation in ("int", int)


# --------------------------------------------------------------------------------------------
# per-model argument rules (what each constructor accepts, said before building anything)
# --------------------------------------------------------------------------------------------


def _width_problem(model: str, width: object) -> str | None:
    if not _is_number(width):
        return f"{width!r} is not a number"
    w = float(width)  # type: ignore[arg-type]
    if model == "mlp" and not (_is_int(w) and w >= 1):
        return (
            f"{_fmt(width)} is not allowed for mlp: width is the number of hidden units, "
            "a positive integer"
        )
    if model == "resnet20" and not (_is_int(w) and 1 <= w <= 16):
        return (
            f"{_fmt(width)} is not allowed for resnet20: width is an integer channel "
            "multiplier 1..16 (stage widths 16w, 32w, 64w)"
        )
    if not w > 0:
        return f"{_fmt(width)} is not allowed for {model}: width is a channel multiplier > 0"
    return None


def _depth_problem(model: str, depth: object) -> str | None:
    if depth is None:
        return None
    if not _takes_depth(model):
        return (
            f"{_fmt(depth)} is not allowed for {model}: its depth is fixed by the name; "
            "leave depths at [null]"
        )
    if not _is_int(depth):
        return f"{depth!r} is not an integer"
    d = int(depth)  # type: ignore[arg-type]
    if model == "vgg" and d not in VGG_CONFIGS:
        allowed = ", ".join(map(str, VGG_CONFIGS))
        return f"{d} is not allowed for vgg: choose one of {allowed}"
    if model == "resnet20" and (d < 8 or (d - 2) % 6):
        return f"{d} is not allowed for resnet20: depth is 6n+2 with n >= 1 (8, 14, 20, 32, ...)"
    if d < 1:
        return f"{d} is not allowed for {model}: depth is the number of hidden layers, >= 1"
    return None


#: Norms each model's constructor accepts (every model takes the whole factory today).
MODEL_NORMS: dict[str, tuple[str, ...]] = {name: NORMS for name in MODEL_NAMES}


def _build_kwargs(
    model: str, width: float, depth: int | None, norm: str, info: Mapping[str, Any]
) -> dict[str, Any]:
    """``build_model`` kwargs: int widths where the model declares ``width: int``."""
    kwargs: dict[str, Any] = {
        "width": int(width) if _integer_width(model) else float(width),
        "norm": norm,
    }
    if depth is not None:
        kwargs["depth"] = depth
    kwargs["in_shape"] = tuple(info["in_shape"])
    kwargs["num_classes"] = info["num_classes"]
    return kwargs


# --------------------------------------------------------------------------------------------
# the expanded units of work
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EndpointConfig:
    """One net to train (stage 1): everything that determines its weights, and nothing else.

    ``width`` is stored as a float (so 2 and 2.0 give one key); ``depth`` is the model's
    actual depth (a sweep's ``None`` is resolved to the model default by :meth:`Sweep.endpoints`)
    or ``None`` for models whose depth is in the name (torchvision ResNets).
    """

    model: str
    dataset: str
    width: float
    depth: int | None
    norm: str
    seed: int
    epochs: int
    batch_size: int = 64
    lr: float | None = None
    data_limit: int | None = None
    #: > 1: data-parallel training on that many Ray Train workers (TorchTrainer, DDP).
    train_workers: int = 1

    def __post_init__(self) -> None:
        if _is_number(self.width):
            object.__setattr__(self, "width", float(self.width))
        if _is_int(self.depth):
            object.__setattr__(self, "depth", int(self.depth))  # type: ignore[arg-type]

    def model_kwargs(self, data_root: str | None = None) -> dict[str, Any]:
        """Keyword arguments of ``repair_dist.build_model(self.model, **kwargs)``.

        Includes ``in_shape`` and ``num_classes`` of the dataset; ``data_root`` only matters
        for ImageNet (its class count is read from the folder).
        """
        info = dataset_info(self.dataset, data_root)
        return _build_kwargs(self.model, self.width, self.depth, self.norm, info)

    def key(self) -> str:
        """Content key of the trained net (includes the store's CODE_VERSION)."""
        return CheckpointStore.endpoint_key(asdict(self))

    def params(self) -> dict[str, Any]:
        """Flat description for MLflow params and the ``endpoints`` table."""
        return {"endpoint_key": self.key(), **asdict(self)}


@dataclass(frozen=True)
class TrialSpec:
    """One stage-2 trial: align B to A with ``method``, measure every variant along alphas."""

    sweep: str
    a: EndpointConfig
    b: EndpointConfig
    method: str
    variants: tuple[str, ...]
    alphas: tuple[float, ...]
    residual: str = "output"
    batch_size: int = 500
    amp: bool = False  # bf16 forwards in the pass workers (statistics stay float64)

    def __post_init__(self) -> None:
        object.__setattr__(self, "variants", tuple(self.variants))
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))

    def key(self) -> str:
        """16 hex of sha256 over every field (endpoints included) and CODE_VERSION."""
        payload = canonical_json({"trial": asdict(self), "code_version": _store.CODE_VERSION})
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def params(self) -> dict[str, Any]:
        """Flat dict for MLflow params and Parquet columns (scalars only; lists comma-joined)."""
        a, b = self.a, self.b
        return {
            "sweep": self.sweep,
            "trial_key": self.key(),
            "model": a.model,
            "dataset": a.dataset,
            "width": a.width,
            "depth": a.depth,
            "norm": a.norm,
            "method": self.method,
            "seed_a": a.seed,
            "seed_b": b.seed,
            "endpoint_a": a.key(),
            "endpoint_b": b.key(),
            "epochs": a.epochs,
            "train_batch_size": a.batch_size,
            "lr": a.lr,
            "data_limit": a.data_limit,
            "variants": ",".join(self.variants),
            "alphas": ",".join(_fmt(x) for x in self.alphas),
            "n_alphas": len(self.alphas),
            "residual": self.residual,
            "batch_size": self.batch_size,
            "amp": self.amp,
        }

    def run_name(self) -> str:
        """Short readable name (for MLflow and logs), e.g. ``mlp-w128-d6-none-s0s1-weight``."""
        depth = f"-d{self.a.depth}" if self.a.depth is not None else ""
        return (
            f"{self.a.model}-w{_fmt(self.a.width)}{depth}-{self.a.norm}"
            f"-s{self.a.seed}s{self.b.seed}-{self.method}"
        )


# --------------------------------------------------------------------------------------------
# the sweep
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchGrid:
    """One model and the widths x depths x norms to sweep for it (``None`` depth: default)."""

    model: str
    widths: tuple[float, ...]
    depths: tuple[int | None, ...] = (None,)
    norms: tuple[str, ...] = ("none",)

    def __post_init__(self) -> None:
        for name in ("widths", "depths", "norms"):
            object.__setattr__(self, name, _as_tuple(getattr(self, name)))

    def combos(self) -> list[tuple[float, int | None, str]]:
        """(width, depth, norm) in grid order; ``None`` depths resolved to the model default."""
        default = _default_depth(self.model)
        out = []
        for w, d, n in itertools.product(self.widths, self.depths, self.norms):
            out.append((w, default if d is None else d, n))
        return list(dict.fromkeys(out))


def _as_tuple(x: Any) -> Any:
    """A scalar becomes a 1-tuple, a list a tuple (``widths: 128`` in YAML means ``[128]``)."""
    if isinstance(x, (list, tuple)):
        return _tuple(x)
    if x is None or isinstance(x, (str, numbers.Number)):
        return (x,)
    return x


@dataclass(frozen=True)
class Sweep:
    """A whole study. ``seeds`` pair up consecutively ((0, 1), (2, 3), ...) unless ``pairs``
    lists the pairs explicitly; ``alphas`` is a count (evenly spaced in [0, 1]) or the values.
    Resources are per trial: ``workers_per_trial`` actors of ``cpus_per_worker`` CPUs and
    ``gpus_per_worker`` GPUs each shard every data pass of the trial.
    """

    name: str
    dataset: str
    archs: tuple[ArchGrid, ...]
    seeds: tuple[int, ...] = (0, 1)
    pairs: tuple[tuple[int, int], ...] | None = None
    epochs: int = 30
    batch_size: int = 64
    lr: float | None = None
    methods: tuple[str, ...] = METHODS
    variants: tuple[str, ...] = VARIANTS
    alphas: int | tuple[float, ...] = 11
    workers_per_trial: int = 1
    cpus_per_worker: float = 1
    gpus_per_worker: float = 0
    data_limit: int | None = None
    #: Stage 1: train each endpoint data-parallel on this many Ray Train workers (DDP), each
    #: with cpus_per_worker CPUs and gpus_per_worker GPUs.
    train_workers: int = 1
    data_root: str | None = None
    max_concurrent_trials: int | None = None
    #: bf16 autocast (channels-last on GPU) in the trials' pass workers; float64 statistics.
    amp: bool = False

    def __post_init__(self) -> None:
        archs = self.archs
        if isinstance(archs, ArchGrid):
            archs = (archs,)
        elif isinstance(archs, list):
            archs = tuple(archs)
        object.__setattr__(self, "archs", archs)
        for name in ("seeds", "pairs", "methods", "variants", "alphas"):
            object.__setattr__(self, name, _tuple(getattr(self, name)))

    # -- expansion -------------------------------------------------------------------------

    def seed_pairs(self) -> list[tuple[int, int]]:
        """The (seed_a, seed_b) pairs to merge: ``pairs``, or consecutive pairs of ``seeds``."""
        if self.pairs is not None:
            return [(int(a), int(b)) for a, b in self.pairs]
        s = [int(x) for x in self.seeds]
        return [(s[i], s[i + 1]) for i in range(0, len(s) - 1, 2)]

    def alpha_grid(self) -> tuple[float, ...]:
        """Sorted interpolation weights, rounded; always holding 0, 0.5 and 1.

        0 and 1 are the endpoints every barrier is measured against and 0.5 is the midpoint
        barrier, so they are added when a list (or an even count) leaves them out.
        """
        if _is_int(self.alphas):
            n = int(self.alphas)  # type: ignore[arg-type]
            values: Iterable[float] = (i / (n - 1) for i in range(n)) if n > 1 else ()
        else:
            values = (float(a) for a in self.alphas)  # type: ignore[union-attr]
        grid = {round(v, _ALPHA_DECIMALS) for v in values} | {0.0, 0.5, 1.0}
        return tuple(sorted(grid))

    def _endpoint(
        self, model: str, width: float, depth: int | None, norm: str, seed: int
    ) -> EndpointConfig:
        return EndpointConfig(
            model=model,
            dataset=self.dataset,
            width=width,
            depth=depth,
            norm=norm,
            seed=seed,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            data_limit=self.data_limit,
            train_workers=self.train_workers,
        )

    def endpoints(self) -> list[EndpointConfig]:
        """Every net to train, deduplicated, in grid order (arch, width, depth, norm, seed)."""
        seeds = list(dict.fromkeys(s for pair in self.seed_pairs() for s in pair))
        out: dict[EndpointConfig, None] = {}
        for arch in self.archs:
            for width, depth, norm in arch.combos():
                for seed in seeds:
                    out[self._endpoint(arch.model, width, depth, norm, seed)] = None
        return list(out)

    def trials(self) -> list[TrialSpec]:
        """Every stage-2 trial, deduplicated, in grid order (arch combo, pair, method)."""
        alphas = self.alpha_grid()
        out: dict[TrialSpec, None] = {}
        for arch in self.archs:
            for width, depth, norm in arch.combos():
                for seed_a, seed_b in self.seed_pairs():
                    a = self._endpoint(arch.model, width, depth, norm, seed_a)
                    b = self._endpoint(arch.model, width, depth, norm, seed_b)
                    for method in self.methods:
                        spec = TrialSpec(
                            self.name, a, b, method, self.variants, alphas, amp=self.amp
                        )
                        out[spec] = None
        return list(out)

    # -- (de)serialisation -----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-ready dict; ``Sweep.from_dict(s.to_dict()) == s``."""

        def plain(x: Any) -> Any:
            if isinstance(x, (list, tuple)):
                return [plain(v) for v in x]
            if isinstance(x, dict):
                return {k: plain(v) for k, v in x.items()}
            return x

        return plain(asdict(self))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Sweep:
        """Build a Sweep from a YAML/JSON mapping; structural problems (unknown or missing
        keys, an ``archs`` entry that is not a mapping) raise one SweepConfigError.

        Values are checked by :func:`validate_sweep`, which also needs to know the cluster.
        """
        if not isinstance(d, Mapping):
            got = type(d).__name__
            raise SweepConfigError([f"sweep: expected a mapping of settings, got {got}"])
        problems: list[str] = []
        known = [f.name for f in fields(cls)]
        problems += [_unknown_key(str(k), known) for k in d if k not in known]
        for key in ("name", "dataset", "archs"):
            if key not in d:
                problems.append(f"{key}: missing (required)")
        if "seeds" in d and d.get("pairs") is not None:
            problems.append("seeds, pairs: give seeds (paired consecutively) or pairs, not both")
        archs: list[ArchGrid] = []
        raw_archs = d.get("archs", [])
        if isinstance(raw_archs, Mapping):
            raw_archs = [raw_archs]
        if not isinstance(raw_archs, (list, tuple)):
            problems.append(f"archs: expected a list of mappings, got {type(raw_archs).__name__}")
            raw_archs = []
        arch_keys = [f.name for f in fields(ArchGrid)]
        for i, entry in enumerate(raw_archs):
            if not isinstance(entry, Mapping):
                problems.append(f"archs[{i}]: expected a mapping, got {entry!r}")
                continue
            bad = [
                _unknown_key(str(k), arch_keys, f"archs[{i}].") for k in entry if k not in arch_keys
            ]
            problems += bad
            missing = [k for k in ("model", "widths") if k not in entry]
            if missing:
                problems.append(f"archs[{i}]: missing {', '.join(missing)} (required)")
            if bad or missing:
                continue
            archs.append(ArchGrid(**{k: _tuple(v) for k, v in entry.items()}))
        if problems:
            raise SweepConfigError(problems, d.get("name"))
        kwargs = {k: _tuple(v) for k, v in d.items() if k != "archs"}
        return cls(archs=tuple(archs), **kwargs)


def _unknown_key(key: str, known: Sequence[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f"; valid keys: {', '.join(known)}"
    return f"{prefix}{key}: unknown key{hint}"


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def _check_positive_int(
    problems: list[str], field: str, value: object, *, optional: bool = False
) -> None:
    if optional and value is None:
        return
    if not (_is_int(value) and int(value) >= 1):  # type: ignore[call-overload]
        problems.append(f"{field}: must be an integer >= 1 (got {value!r})")


def _check_choices(
    problems: list[str],
    field: str,
    values: object,
    choices: Sequence[str],
    *,
    allow_empty: bool = False,
) -> None:
    if not isinstance(values, tuple) or (not values and not allow_empty):
        problems.append(f"{field}: must be a non-empty list (got {values!r})")
        return
    for v in values:
        if v not in choices:
            problems.append(f"{field}: unknown {v!r}; choose from {', '.join(choices)}")
    dupes = sorted({str(v) for v in values if values.count(v) > 1})
    if dupes:
        problems.append(f"{field}: listed twice: {', '.join(dupes)}")


def _check_name(problems: list[str], name: object) -> None:
    if not isinstance(name, str) or not name:
        problems.append(
            "name: must be a non-empty string (it names the MLflow experiment and the "
            "results partition)"
        )
    elif not _NAME.match(name):
        bad = sorted({c for c in name if not (c.isascii() and (c.isalnum() or c in "_.-"))})
        what = f"characters {''.join(bad)!r}" if bad else "a leading '.', '_' or '-'"
        problems.append(
            f"name: {name!r} has {what}; use letters, digits and _ . - "
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


def _check_arch(problems: list[str], i: int, arch: object, info: dict | None) -> None:
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
    for field, values, check in (
        ("widths", arch.widths, _width_problem),
        ("depths", arch.depths, _depth_problem),
    ):
        if not isinstance(values, tuple) or not values:
            problems.append(f"{where}.{field}: must be a non-empty list (got {values!r})")
            continue
        for v in values:
            problem = check(arch.model, v)
            if problem:
                problems.append(f"{where}.{field}: {problem}")
    allowed = MODEL_NORMS[arch.model]
    if not isinstance(arch.norms, tuple) or not arch.norms:
        problems.append(f"{where}.norms: must be a non-empty list (got {arch.norms!r})")
    else:
        for n in arch.norms:
            if n not in allowed:
                problems.append(
                    f"{where}.norms: {n!r} is not supported by {arch.model}; "
                    f"choose from {', '.join(allowed)}"
                )
    if len(problems) == before and info is not None:
        _check_builds(problems, where, arch, info)


def _check_builds(problems: list[str], where: str, arch: ArchGrid, info: dict) -> None:
    """Build each combination on the meta device and run a forward pass (shapes only).

    Catches what argument rules cannot see, such as an input too small for the net's
    down-sampling, in milliseconds and without allocating a single weight.
    """
    import torch

    for width, depth, norm in arch.combos():
        kwargs = _build_kwargs(arch.model, width, depth, norm, info)
        try:
            with torch.device("meta"):
                net = build_model(arch.model, **kwargs)
                net.eval()(torch.empty(2, *kwargs["in_shape"]))
        except Exception as e:  # any constructor or shape error, reported per combination
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            problems.append(
                f"{where}: {arch.model}(width={_fmt(width)}, depth={depth}, norm={norm}) does "
                f"not run on inputs of shape {tuple(info['in_shape'])}: {first}"
            )


def _check_seeds(problems: list[str], sweep: Sweep) -> None:
    if sweep.pairs is not None:
        if not isinstance(sweep.pairs, tuple) or not sweep.pairs:
            problems.append(
                f"pairs: must be a non-empty list of [seed_a, seed_b] (got {sweep.pairs!r})"
            )
            return
        for j, pair in enumerate(sweep.pairs):
            if not (isinstance(pair, tuple) and len(pair) == 2 and all(_is_int(s) for s in pair)):
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
    if not isinstance(seeds, tuple) or not all(_is_int(s) and s >= 0 for s in seeds):
        problems.append(f"seeds: must be a list of integers >= 0 (got {seeds!r})")
        return
    if len(set(seeds)) < 2:
        problems.append(
            f"seeds: need at least 2 different seeds to form a pair (got {list(seeds)})"
        )
        return
    if len(set(seeds)) != len(seeds):
        problems.append(f"seeds: listed twice: {sorted({s for s in seeds if seeds.count(s) > 1})}")
    if len(seeds) % 2:
        problems.append(
            f"seeds: an odd count ({len(seeds)}) leaves seed {seeds[-1]} unpaired (seeds pair "
            "up consecutively); add a seed, drop one, or list pairs explicitly"
        )


def _check_alphas(problems: list[str], alphas: object) -> None:
    if _is_int(alphas):
        if int(alphas) < 3:  # type: ignore[call-overload]
            problems.append(f"alphas: need at least 3 points (0, 0.5, 1), got {alphas}")
        return
    if not isinstance(alphas, tuple) or not all(_is_number(a) for a in alphas):
        problems.append(f"alphas: must be a count or a list of numbers (got {alphas!r})")
        return
    outside = [a for a in alphas if not 0.0 <= float(a) <= 1.0]
    if outside:
        problems.append(f"alphas: {', '.join(map(_fmt, outside))} outside [0, 1]")
    if len(set(alphas)) < 3:
        problems.append(f"alphas: need at least 3 distinct values, got {list(alphas)}")


def _check_resources(problems: list[str], sweep: Sweep, cluster: Mapping[str, Any] | None) -> None:
    _check_positive_int(problems, "workers_per_trial", sweep.workers_per_trial)
    ok = _is_int(sweep.workers_per_trial) and sweep.workers_per_trial >= 1
    if not (_is_number(sweep.cpus_per_worker) and sweep.cpus_per_worker > 0):
        problems.append(f"cpus_per_worker: must be a number > 0 (got {sweep.cpus_per_worker!r})")
        ok = False
    if not (_is_number(sweep.gpus_per_worker) and sweep.gpus_per_worker >= 0):
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
            f"gpus_per_worker: {_fmt(sweep.gpus_per_worker)} GPU per worker requested but the "
            "cluster has no GPU (the trial would wait forever); set gpus_per_worker: 0"
        )
    elif workers * sweep.gpus_per_worker > gpus:
        problems.append(
            f"gpus_per_worker: workers_per_trial x gpus_per_worker = "
            f"{_fmt(workers * sweep.gpus_per_worker)} GPUs per trial, but the cluster has "
            f"{_fmt(gpus)} (the trial would wait forever)"
        )
    trainers = int(sweep.train_workers) if _is_int(sweep.train_workers) else 1
    if trainers > 1 and 0.5 + trainers * sweep.cpus_per_worker > cpus:
        problems.append(
            f"train_workers: 0.5 CPU (the trial) + train_workers x cpus_per_worker = "
            f"{_fmt(0.5 + trainers * float(sweep.cpus_per_worker))} CPUs, but the cluster has "
            f"{_fmt(cpus)} (training would never start)"
        )
    if trainers > 1 and sweep.gpus_per_worker > 0 and trainers * sweep.gpus_per_worker > gpus:
        problems.append(
            f"train_workers: {trainers} x {_fmt(sweep.gpus_per_worker)} GPUs for training, "
            f"but the cluster has {_fmt(gpus)}"
        )
    if workers * sweep.cpus_per_worker > cpus:
        problems.append(
            f"workers_per_trial: workers_per_trial x cpus_per_worker = "
            f"{_fmt(workers * float(sweep.cpus_per_worker))} CPUs per trial, but the cluster "
            f"has {_fmt(cpus)} (its actors would never all start)"
        )


def validate_sweep(
    sweep: Sweep,
    *,
    cluster_resources: Mapping[str, Any] | None = None,
    check_data: bool = True,
) -> None:
    """Raise one :class:`SweepConfigError` listing every problem of ``sweep``; else return.

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
            _check_arch(problems, i, arch, info)
    _check_seeds(problems, sweep)
    _check_positive_int(problems, "epochs", sweep.epochs)
    _check_positive_int(problems, "batch_size", sweep.batch_size)
    _check_positive_int(problems, "data_limit", sweep.data_limit, optional=True)
    if sweep.lr is not None and not (_is_number(sweep.lr) and sweep.lr > 0):
        problems.append(f"lr: must be a number > 0 or null for the default (got {sweep.lr!r})")
    if sweep.data_root is not None and not isinstance(sweep.data_root, str):
        problems.append(f"data_root: must be a path string (got {sweep.data_root!r})")
    _check_choices(problems, "methods", sweep.methods, METHODS)
    variants = sweep.variants
    always = [v for v in variants if v in ALWAYS_REPORTED] if isinstance(variants, tuple) else []
    if always:
        problems.append(
            f"variants: {', '.join(map(repr, always))} need not be listed: naive and aligned "
            "are reported for every trial; list only REPAIR variants"
        )
        variants = tuple(v for v in variants if v not in ALWAYS_REPORTED)
    _check_choices(problems, "variants", variants, VARIANTS, allow_empty=True)
    _check_alphas(problems, sweep.alphas)
    _check_resources(problems, sweep, cluster_resources)
    if problems:
        raise SweepConfigError(problems, sweep.name)


__all__ = [
    "ALWAYS_REPORTED",
    "METHODS",
    "MODEL_NORMS",
    "ArchGrid",
    "EndpointConfig",
    "Sweep",
    "SweepConfigError",
    "TrialSpec",
    "validate_sweep",
]
