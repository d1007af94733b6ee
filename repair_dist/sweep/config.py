"""The sweep description: typed, frozen dataclasses, validated before anything is scheduled.

A :class:`Sweep` is a grid (architectures x widths x depths x norms x seed pairs x methods);
it expands into deduplicated stage-1 :class:`EndpointConfig` (one per trained net) and stage-2
:class:`TrialSpec` (one per pair and method). Both carry content keys: equal configs give equal
keys, so a rerun or a resumed sweep finds its checkpoints and results instead of redoing them.

This module is the model only; :mod:`repair_dist.sweep.validation` checks a sweep's values
(every problem at once, one line each) before anything is scheduled. Structural problems of a
YAML/JSON mapping (unknown or missing keys) are raised here, by :meth:`Sweep.from_dict`, as the
same :class:`SweepConfigError`.
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import itertools
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from .. import store as _store
from ..data.catalog import dataset_info
from ..models.catalog import MODEL_NAMES, model_parameters
from ..store import CheckpointStore, cached_key, canonical_json
from ..variants import ALWAYS_REPORTED, DEFAULT_METHODS, VARIANTS, alpha_grid
from .fields import suggest_unknown_fields
from .results import TRIAL_ID_COLUMNS
from .studies import STUDIES, CurveConfig, MergeManyConfig, PruningConfig, StudySpec


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


def is_int(x: object) -> bool:
    """An integer, or a float holding one (YAML and JSON readers give 128.0 for 128 at times)."""
    if isinstance(x, bool):
        return False
    if isinstance(x, numbers.Integral):
        return True
    return isinstance(x, float) and x.is_integer()


def is_number(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(float(x))


def _tuple(x: Any) -> Any:
    """Lists (from YAML/JSON) become tuples, so configs hash and compare."""
    if isinstance(x, list):
        return tuple(_tuple(v) for v in x)
    if isinstance(x, tuple):
        return tuple(_tuple(v) for v in x)
    return x


def fmt_value(x: object) -> str:
    """A width like 2.0 reads as 2 in messages and run names."""
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return repr(x) if isinstance(x, str) else str(x)


def _model_parameters(model: str) -> Mapping[str, inspect.Parameter]:
    """The constructor arguments of a registered model (what ``build_model`` binds), from the
    torch-free catalog (a test keeps it equal to the constructors' own signatures)."""
    return model_parameters(model)


def takes_depth(model: str) -> bool:
    return model in MODEL_NAMES and "depth" in _model_parameters(model)


def _default_depth(model: str) -> int | None:
    """The depth a model gets when a sweep says ``None`` (MLP 6, VGG 11, ResNet20 20)."""
    if not takes_depth(model):
        return None
    default = _model_parameters(model)["depth"].default
    return default if is_int(default) else None


def integer_width(model: str) -> bool:
    """Whether the model's ``width`` is declared ``int`` (units or an integer multiplier)."""
    if model not in MODEL_NAMES:
        return False
    param = _model_parameters(model).get("width")
    return param is not None and param.annotation in ("int", int)


def build_kwargs(
    model: str, width: float, depth: int | None, norm: str, info: Mapping[str, Any]
) -> dict[str, Any]:
    """``build_model`` kwargs: int widths where the model declares ``width: int``."""
    kwargs: dict[str, Any] = {
        "width": int(width) if integer_width(model) else float(width),
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


#: Endpoint fields added after keys were first issued, with the default that keeps them out
#: of the key (so every existing checkpoint, trial and result keeps its key).
_KEY_DEFAULTS: dict[str, Any] = {"optimizer": "sgd"}


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
    #: ``train_model``'s optimizer (``sgd`` | ``adam``). Left out of the key at its default,
    #: so endpoints keyed before the field existed keep their keys.
    optimizer: str = "sgd"

    def __post_init__(self) -> None:
        if is_number(self.width):
            object.__setattr__(self, "width", float(self.width))
        if is_int(self.depth):
            object.__setattr__(self, "depth", int(self.depth))  # type: ignore[arg-type]

    def model_kwargs(self, data_root: str | None = None) -> dict[str, Any]:
        """Keyword arguments of ``repair_dist.build_model(self.model, **kwargs)``.

        Includes ``in_shape`` and ``num_classes`` of the dataset; ``data_root`` only matters
        for ImageNet (its class count is read from the folder).
        """
        info = dataset_info(self.dataset, data_root)
        return build_kwargs(self.model, self.width, self.depth, self.norm, info)

    def key(self) -> str:
        """Content key of the trained net (includes the store's CODE_VERSION)."""
        return cached_key(self, lambda: CheckpointStore.endpoint_key(self.key_fields()))

    def key_fields(self) -> dict[str, Any]:
        """The fields that make the key: every field, less those still at a default that
        was added after keys were first issued (see :data:`_KEY_DEFAULTS`)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}  # scalars: no deep copy
        for name, default in _KEY_DEFAULTS.items():
            if d.get(name) == default:
                d.pop(name)
        return d

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
        return cached_key(self, self._key)

    def _key(self) -> str:
        # Shallow: the fields are scalars and tuples of them, but for the endpoints (replaced
        # by their key fields); asdict's deep copy was most of the time of keying a sweep.
        trial = {f.name: getattr(self, f.name) for f in fields(self)}
        trial.update(a=self.a.key_fields(), b=self.b.key_fields())
        payload = canonical_json({"trial": trial, "code_version": _store.CODE_VERSION})
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def params(self) -> dict[str, Any]:
        """Flat dict for MLflow params and Parquet columns (scalars only; lists comma-joined)."""
        a, b = self.a, self.b
        return {
            "sweep": self.sweep,
            "trial_key": self.key(),
            **{c: getattr(a, c) for c in TRIAL_ID_COLUMNS},
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
            "alphas": ",".join(fmt_value(x) for x in self.alphas),
            "n_alphas": len(self.alphas),
            "residual": self.residual,
            "batch_size": self.batch_size,
            "amp": self.amp,
        }

    def run_name(self) -> str:
        """Short readable name (for MLflow and logs), e.g. ``mlp-w128-d6-none-s0s1-weight``."""
        depth = f"-d{self.a.depth}" if self.a.depth is not None else ""
        return (
            f"{self.a.model}-w{fmt_value(self.a.width)}{depth}-{self.a.norm}"
            f"-s{self.a.seed}s{self.b.seed}-{self.method}"
        )


# --------------------------------------------------------------------------------------------
# the sweep
# --------------------------------------------------------------------------------------------


@suggest_unknown_fields
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


@suggest_unknown_fields
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
    methods: tuple[str, ...] = DEFAULT_METHODS
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
    #: Merge trials run one after another inside one Tune trial (each still reported, logged
    #: and resumed on its own); None: automatic, 1 for small sweeps and up to 16 for sweeps
    #: of hundreds of trials, where Tune's per-trial bookkeeping outweighs a tiny trial.
    trial_batch: int | None = None
    #: bf16 autocast (channels-last on GPU) in the trials' pass workers; float64 statistics.
    amp: bool = False
    #: Endpoint training optimizer (``sgd`` | ``adam``); ``lr`` None takes its default.
    optimizer: str = "sgd"
    #: Activation matching of residual streams: ``output`` (the stage output only, the REPAIR
    #: code's mode) or ``sum`` (correlations summed over every block output, Tatro et al.).
    #: Part of every trial's key and a column of the ``trials`` table.
    residual: str = "output"
    #: Mode-connectivity curves (issue 10): one curve trial per pair; None: off.
    curve: CurveConfig | None = None
    #: Pruning with post-pruning repair (issue 11): one pruning unit per endpoint; None: off.
    pruning: PruningConfig | None = None
    #: Merging N endpoints (issue 12): one unit per net and N-tuple of seeds; None: off.
    merge_many: MergeManyConfig | None = None

    def __post_init__(self) -> None:
        for study in STUDIES.values():  # a mapping (YAML, JSON, a dict) becomes the config
            value = getattr(self, study.field)
            if isinstance(value, Mapping):
                object.__setattr__(self, study.field, study.config_type.from_mapping(value))
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
        """The sweep's interpolation weights (:func:`repair_dist.variants.alpha_grid`)."""
        return alpha_grid(self.alphas)  # type: ignore[arg-type]

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
            optimizer=self.optimizer,
        )

    def endpoints(self) -> list[EndpointConfig]:
        """Every net to train, deduplicated, in grid order (arch, width, depth, norm, seed),
        then the nets a study reads beyond the pairs (the seeds of merge-many N-tuples)."""
        seeds = list(dict.fromkeys(s for pair in self.seed_pairs() for s in pair))
        out: dict[EndpointConfig, None] = {}
        for arch in self.archs:
            for width, depth, norm in arch.combos():
                for seed in seeds:
                    out[self._endpoint(arch.model, width, depth, norm, seed)] = None
        for study in STUDIES.values():
            config = getattr(self, study.field)
            if config is not None:
                out.update(dict.fromkeys(study.endpoints(config, self)))
        return list(out)

    def trials(self) -> list[TrialSpec]:
        """Every stage-2 trial, deduplicated, in grid order (arch combo, pair, method)."""
        alphas = self.alpha_grid()
        out: dict[TrialSpec, None] = {}
        shared: dict[tuple, EndpointConfig] = {}  # one object (and key hash) per endpoint

        def endpoint(*fields: Any) -> EndpointConfig:
            if fields not in shared:
                shared[fields] = self._endpoint(*fields)
            return shared[fields]

        for arch in self.archs:
            for width, depth, norm in arch.combos():
                for seed_a, seed_b in self.seed_pairs():
                    a = endpoint(arch.model, width, depth, norm, seed_a)
                    b = endpoint(arch.model, width, depth, norm, seed_b)
                    for method in self.methods:
                        spec = TrialSpec(
                            self.name,
                            a,
                            b,
                            method,
                            self.variants,
                            alphas,
                            residual=self.residual,
                            amp=self.amp,
                        )
                        out[spec] = None
        return list(out)

    def study_trials(self) -> list[StudySpec]:
        """Every stage-2 unit of the sweep's studies (curves, pruning, ...), in registry order."""
        out: list[StudySpec] = []
        for study in STUDIES.values():
            config = getattr(self, study.field)
            if config is not None:
                out += study.specs(config, self)
        return out

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
        studies = {s.field: s for s in STUDIES.values()}
        for field, study in studies.items():
            value = d.get(field)
            if value is not None and not isinstance(value, (Mapping, study.config_type)):
                got = type(value).__name__
                problems.append(f"{field}: expected a mapping of settings or null, got {got}")
            elif isinstance(value, Mapping):
                problems += study.config_type.key_problems(value, field)
        if problems:
            raise SweepConfigError(problems, d.get("name"))
        kwargs = {k: _tuple(v) for k, v in d.items() if k not in ("archs", *studies)}
        kwargs.update({k: d[k] for k in studies if k in d})
        return cls(archs=tuple(archs), **kwargs)


def _unknown_key(key: str, known: Sequence[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f"; valid keys: {', '.join(known)}"
    return f"{prefix}{key}: unknown key{hint}"


__all__ = [
    "ALWAYS_REPORTED",
    "ArchGrid",
    "CurveConfig",
    "MergeManyConfig",
    "PruningConfig",
    "StudySpec",
    "EndpointConfig",
    "Sweep",
    "SweepConfigError",
    "TrialSpec",
]
