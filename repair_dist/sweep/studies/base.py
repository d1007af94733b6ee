"""What every non-merge study plugs into the sweep: one spec type and one small interface.

A merge trial (:class:`~repair_dist.sweep.config.TrialSpec`) is the sweep's contract path
(DESIGN.md §4/§5) and stays as it is. Every other study -- a curve between a pair, the pruning
of one endpoint, later merging many -- is a :class:`Study` in the registry of
:mod:`repair_dist.sweep.studies`. A study declares:

* ``field``: the :class:`~repair_dist.sweep.config.Sweep` field holding its config (``None``
  switches the study off);
* :meth:`Study.problems`: its config's problems, one line each, checked with the rest of the
  sweep before anything is scheduled;
* :meth:`Study.specs`: the stage-2 units it adds (a :class:`StudySpec` each: which endpoints,
  which settings; the key is a hash of both, so a rerun finds finished work);
* :meth:`Study.run`: the compute (a library call), returning its rows per results table;
* :meth:`Study.endpoints`: nets it reads beyond the sweep's pairs (merging N seeds), which
  stage 1 then trains like any endpoint;
* ``tables``: the tables it writes, in order; the last one's file marks a finished unit;
* :meth:`Study.plot` and :meth:`Study.mlflow`: its figure and its MLflow metrics, both drawn
  from the Parquet rows it wrote (plots read tables, never live objects).

The runner schedules every study's pending units in one Ray Tune run after the merge trials,
with the merge trials' resources, idempotence and MLflow logging (one child run per unit,
found again by its ``trial_key`` tag).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd

from ... import store as _store
from ...store import canonical_json

if TYPE_CHECKING:
    from ...data import BatchPlan
    from ...store import CheckpointStore
    from ..config import EndpointConfig, Sweep


def _plain(x: Any) -> Any:
    return [_plain(v) for v in x] if isinstance(x, (list, tuple)) else x


def _frozen(x: Any) -> Any:
    return tuple(_frozen(v) for v in x) if isinstance(x, (list, tuple)) else x


def check_choices(
    problems: list[str],
    field: str,
    values: object,
    choices: Sequence[str],
    *,
    allow_empty: bool = False,
) -> None:
    """One line per problem of a list of names: not a list, empty (unless allowed), an
    unknown name (with the choices), a name listed twice. The sweep's and studies' one rule."""
    if not isinstance(values, tuple) or (not values and not allow_empty):
        problems.append(f"{field}: must be a non-empty list (got {values!r})")
        return
    for v in values:
        if v not in choices:
            problems.append(f"{field}: unknown {v!r}; choose from {', '.join(choices)}")
    dupes = sorted({str(v) for v in values if values.count(v) > 1})
    if dupes:
        problems.append(f"{field}: listed twice: {', '.join(dupes)}")


def check_repair_variants(out: list[str], field: str, values: object, unit: str) -> None:
    """Problems of a list of REPAIR variants (may be empty): naive and aligned are reported for
    every ``unit`` anyway, so listing them is a mistake worth a line; then :func:`check_choices`."""
    from ...variants import ALWAYS_REPORTED, VARIANTS

    if isinstance(values, tuple):
        listed = [v for v in values if v in ALWAYS_REPORTED]
        if listed:
            out.append(
                f"{field}: {', '.join(map(repr, listed))} need not be listed: naive and aligned "
                f"are reported for every {unit}; list only REPAIR variants"
            )
        values = tuple(v for v in values if v not in ALWAYS_REPORTED)
    check_choices(out, field, values, VARIANTS, allow_empty=True)


class StudyConfig:
    """Mixin of a study's frozen config dataclass: built from a YAML/JSON mapping."""

    @classmethod
    def key_problems(cls, d: Mapping[str, Any], field: str) -> list[str]:
        """One line per unknown key of a mapping meant for this config."""
        import difflib

        known = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        out = []
        for k in d:
            if k not in known:
                close = difflib.get_close_matches(str(k), known, n=1)
                hint = (
                    f" (did you mean {close[0]!r}?)"
                    if close
                    else f"; valid keys: {', '.join(known)}"
                )
                out.append(f"{field}.{k}: unknown key{hint}")
        return out

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any]) -> Any:
        return cls(**{str(k): _frozen(v) for k, v in d.items()})


@dataclass(frozen=True)
class StudySpec:
    """One stage-2 unit of a study: the endpoints it reads and the settings it runs with.

    ``settings`` are (name, value) pairs (hashable, JSON-able): everything besides the
    endpoints that determines the unit's rows. ``batch_size`` is the evaluation batch.
    """

    sweep: str
    study: str
    endpoints: tuple[EndpointConfig, ...]
    settings: tuple[tuple[str, Any], ...]
    batch_size: int = 500

    def __post_init__(self) -> None:
        object.__setattr__(self, "endpoints", tuple(self.endpoints))
        items = self.settings.items() if isinstance(self.settings, Mapping) else self.settings
        object.__setattr__(self, "settings", tuple((str(k), _frozen(v)) for k, v in items))

    def setting(self, name: str) -> Any:
        return dict(self.settings)[name]

    def key(self) -> str:
        """16 hex of sha256 over the study, its endpoints (full configs), settings, CODE_VERSION."""
        return _store.cached_key(self, self._key)

    def _key(self) -> str:
        payload = canonical_json(
            {
                "study": self.study,
                "endpoints": [e.key_fields() for e in self.endpoints],
                "settings": {k: _plain(v) for k, v in self.settings},
                "batch_size": self.batch_size,
                "code_version": _store.CODE_VERSION,
            }
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def params(self) -> dict[str, Any]:
        """Flat dict for MLflow params: the net, its seeds and endpoint keys, the settings."""
        from ..results import TRIAL_ID_COLUMNS

        first = self.endpoints[0]
        out: dict[str, Any] = {
            "sweep": self.sweep,
            "trial_key": self.key(),
            "study": self.study,
            **{c: getattr(first, c) for c in TRIAL_ID_COLUMNS},
            "epochs": first.epochs,
            "lr": first.lr,
            "data_limit": first.data_limit,
            "batch_size": self.batch_size,
        }
        names = "ab" if len(self.endpoints) == 2 else [str(i) for i in range(len(self.endpoints))]
        for name, ep in zip(names, self.endpoints, strict=True):
            out[f"seed_{name}"] = ep.seed
            out[f"endpoint_{name}"] = ep.key()
        for k, v in self.settings:
            out[f"{self.study}.{k}"] = ",".join(map(str, v)) if isinstance(v, tuple) else v
        return out

    def run_name(self) -> str:
        """e.g. ``mlp-w16-d3-none-s0s1-curve`` (seeds of every endpoint, then the study)."""
        from .. import config

        first = self.endpoints[0]
        depth = f"-d{first.depth}" if first.depth is not None else ""
        seeds = "".join(f"s{e.seed}" for e in self.endpoints)
        return (
            f"{first.model}-w{config.fmt_value(first.width)}{depth}-{first.norm}-{seeds}-"
            f"{self.study}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "sweep": self.sweep,
            "study": self.study,
            "endpoints": [asdict(e) for e in self.endpoints],
            "settings": [[k, _plain(v)] for k, v in self.settings],
            "batch_size": self.batch_size,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StudySpec:
        from ..config import EndpointConfig

        return cls(
            sweep=d["sweep"],
            study=d["study"],
            endpoints=tuple(EndpointConfig(**e) for e in d["endpoints"]),
            settings=tuple((k, v) for k, v in d["settings"]),
            batch_size=d["batch_size"],
        )

    def id_columns(self) -> dict[str, Any]:
        """The net's columns copied into every row (model, width, depth, norm, dataset)."""
        from ..results import TRIAL_ID_COLUMNS

        return {c: getattr(self.endpoints[0], c) for c in TRIAL_ID_COLUMNS}


def _fit_curve_in_process(*args: Any, **kwargs: Any) -> Any:
    """:func:`repair_dist.fit_curve`, imported on first use (a registry import stays light)."""
    from ...curves import fit_curve

    return fit_curve(*args, **kwargs)


@dataclass
class StudyInputs:
    """What a unit computes from: the checkpoint store, the datasets and the pass workers.

    ``train``/``test`` are the datasets (training a curve needs shuffled batches of the
    dataset); ``train_plan``/``test_plan`` the fixed batch plans every sharded pass reads.
    ``fit_curve`` fits a curve with :func:`repair_dist.fit_curve`'s signature: in process, or
    data-parallel on Ray Train when the endpoints' recipe asks for ``train_workers > 1``.
    """

    store: CheckpointStore
    train: Any
    test: Any
    train_plan: BatchPlan
    test_plan: BatchPlan
    workers: Any = 1
    fit_curve: Callable[..., Any] = _fit_curve_in_process


class Study(ABC):
    """A study that the sweep runs beside its merge trials (see the module doc)."""

    #: Registry name, the ``study`` of its specs.
    name: ClassVar[str]
    #: The Sweep field holding this study's config (None: the study is off).
    field: ClassVar[str]
    #: Results tables written, in order; the last one's file marks a finished unit.
    tables: ClassVar[tuple[str, ...]]
    #: The config dataclass of :attr:`field` (a :class:`StudyConfig`).
    config_type: ClassVar[type]

    @abstractmethod
    def problems(self, config: Any, sweep: Sweep) -> list[str]:
        """One line per problem of ``config`` (each naming its field); [] when it can run."""

    @abstractmethod
    def specs(self, config: Any, sweep: Sweep) -> list[StudySpec]:
        """The units this study adds to ``sweep``, deduplicated, in grid order."""

    @abstractmethod
    def run(self, spec: StudySpec, inputs: StudyInputs) -> dict[str, pd.DataFrame]:
        """Compute one unit; its rows per table of :attr:`tables`."""

    @abstractmethod
    def plot(self, frames: Mapping[str, pd.DataFrame], path: str, title: str) -> str:
        """Draw the unit's figure from its rows; returns the PNG path."""

    def endpoints(self, config: Any, sweep: Sweep) -> list[EndpointConfig]:
        """Endpoints this study needs beyond the sweep's pairs (stage 1 trains them too);
        [] for studies that read only the pairs' nets."""
        del config, sweep
        return []

    @abstractmethod
    def mlflow(
        self, frames: Mapping[str, pd.DataFrame]
    ) -> tuple[dict[str, float], list[tuple[str, float, int]]]:
        """(metrics, step metrics ``(name, value, step)``) of one unit, from its rows."""


__all__ = [
    "Study",
    "StudyConfig",
    "StudyInputs",
    "StudySpec",
    "check_choices",
    "check_repair_variants",
]
