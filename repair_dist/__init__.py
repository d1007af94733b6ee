"""repair-dist: permutation alignment, model merging and REPAIR, sharded with Ray.

The public API (DESIGN.md §3). Science functions take plain modules and datasets; every pass
over data accepts ``workers=N`` (N Ray actors) or an executor, default 1 (in process).

Names are imported on first use (PEP 562): ``import repair_dist`` itself loads no torch, so
the command line's result queries (``repair-dist results``) start in a fraction of a second,
while ``rd.repair``, ``from repair_dist import merge_trial`` and the like work as usual.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from ._lazy import lazy_api

__version__ = "0.1.0"

#: Public name -> (module, attribute).
_API: dict[str, tuple[str, str]] = {
    "filter_collapse": (".collapse", "filter_collapse"),
    "CURVE_KINDS": (".curves", "KINDS"),
    "Curve": (".curves", "Curve"),
    "curve_barriers": (".curves", "curve_barriers"),
    "curve_profile": (".curves", "curve_profile"),
    "fit_curve": (".curves", "fit_curve"),
    "BatchPlan": (".data", "BatchPlan"),
    "load_dataset": (".data", "load_dataset"),
    "ensemble": (".many", "ensemble"),
    "merge_many": (".many", "merge_many"),
    "interpolate": (".merge", "interpolate"),
    "barriers": (".metrics", "barriers"),
    "collapsed_filters": (".metrics", "collapsed_filters"),
    "evaluate": (".metrics", "evaluate"),
    "MODEL_NAMES": (".models", "MODEL_NAMES"),
    "build_model": (".models", "build_model"),
    "activation_matching": (".perm", "activation_matching"),
    "alignment_statistics": (".perm", "alignment_statistics"),
    "apply_permutation": (".perm", "apply_permutation"),
    "permutation_from_stats": (".perm", "permutation_from_stats"),
    "permutation_spec": (".perm", "permutation_spec"),
    "weight_matching": (".perm", "weight_matching"),
    "align_many": (".perm.many", "align_many"),
    "ste_matching": (".perm.ste", "ste_matching"),
    "alpha_grid": (".pipeline", "alpha_grid"),
    "interpolation_curve": (".pipeline", "interpolation_curve"),
    "merge_trial": (".pipeline", "merge_trial"),
    # ``rd.prune`` is the function; the module is ``repair_dist.prune`` (import names from it).
    "PRUNE_KINDS": (".prune", "PRUNE_KINDS"),
    "measured_sparsity": (".prune", "measured_sparsity"),
    "prune": (".prune", "prune"),
    "repair_pruned": (".prune", "repair_pruned"),
    "VARIANTS": (".variants", "VARIANTS"),
    "endpoint_statistics": (".repair", "endpoint_statistics"),
    "repair": (".repair", "repair"),
    "train_model": (".train", "train_model"),
}

__all__ = [
    "CURVE_KINDS",
    "MODEL_NAMES",
    "PRUNE_KINDS",
    "VARIANTS",
    "BatchPlan",
    "Curve",
    "activation_matching",
    "align_many",
    "alignment_statistics",
    "alpha_grid",
    "apply_permutation",
    "barriers",
    "build_model",
    "collapsed_filters",
    "curve_barriers",
    "curve_profile",
    "endpoint_statistics",
    "ensemble",
    "evaluate",
    "filter_collapse",
    "fit_curve",
    "interpolate",
    "interpolation_curve",
    "load_dataset",
    "measured_sparsity",
    "merge_many",
    "merge_trial",
    "permutation_from_stats",
    "permutation_spec",
    "prune",
    "repair",
    "repair_pruned",
    "ste_matching",
    "train_model",
    "weight_matching",
]


__getattr__, __dir__ = lazy_api(__name__, globals(), _API)


class _Package(types.ModuleType):
    """Keeps ``rd.prune`` and ``rd.repair`` the functions of the API.

    Importing the submodule ``repair_dist.prune`` binds the *module* as the package's
    attribute ``prune``; eagerly imported names used to overwrite that binding, lazily loaded
    ones must refuse it (the module stays importable by its dotted name).
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _API.get(name, ("", ""))[0] == f".{name}":
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:  # what the names are, for type checkers and IDEs
    from .collapse import filter_collapse
    from .curves import KINDS as CURVE_KINDS
    from .curves import Curve, curve_barriers, curve_profile, fit_curve
    from .data import BatchPlan, load_dataset
    from .many import ensemble, merge_many
    from .merge import interpolate
    from .metrics import barriers, collapsed_filters, evaluate
    from .models import MODEL_NAMES, build_model
    from .perm import (
        activation_matching,
        alignment_statistics,
        apply_permutation,
        permutation_from_stats,
        permutation_spec,
        weight_matching,
    )
    from .perm.many import align_many
    from .perm.ste import ste_matching
    from .pipeline import alpha_grid, interpolation_curve, merge_trial
    from .prune import PRUNE_KINDS, measured_sparsity, prune, repair_pruned
    from .repair import endpoint_statistics, repair
    from .train import train_model
    from .variants import VARIANTS
