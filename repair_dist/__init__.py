"""repair-dist: permutation alignment, model merging and REPAIR, sharded with Ray.

The public API (DESIGN.md §3). Science functions take plain modules and datasets; every pass
over data accepts ``workers=N`` (N Ray actors) or an executor, default 1 (in process).
"""

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

# ``rd.prune`` is the function; the module is ``repair_dist.prune`` (import names from it).
from .prune import PRUNE_KINDS, measured_sparsity, prune, repair_pruned
from .repair import VARIANTS, endpoint_statistics, repair
from .train import train_model

__version__ = "0.1.0"

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
