"""Every pass over data: where it runs, what it observes, and the statistics it returns.

* :mod:`.executor` - ``run_pass``: in process (``workers=1``) or sharded over a Ray pool.
* :mod:`.probes`, :mod:`.taps` - named observation points and the forward hooks that read them.
* :mod:`.stats` - streaming, mergeable statistics (shards add up to the whole).
* :mod:`.streaming` - the alignment pass's engine for those statistics (least work per batch).
* :mod:`.functions` - the pass functions: alignment statistics, channel statistics, evaluation.

Study-specific passes (REPAIR's recalibration) live with their study and use these pieces.
This package imports neither the permutation code nor Ray at import time, so every other
science module can import it at the top level.
"""

from .executor import Executor, LocalExecutor, Workers, resolve_executor, run_pass
from .functions import (
    ActiveUnits,
    EvalTotals,
    active_units_pass,
    alignment_stats_pass,
    channel_stats_pass,
    device_of,
    evaluation_pass,
)
from .probes import Probe
from .stats import Centred, CoMoments, CrossMoments, StatsDict, centre, flatten_channels
from .taps import centred, snapshot, tap, transform_outputs

__all__ = [
    "ActiveUnits",
    "Centred",
    "CoMoments",
    "CrossMoments",
    "EvalTotals",
    "Executor",
    "LocalExecutor",
    "Probe",
    "StatsDict",
    "Workers",
    "active_units_pass",
    "alignment_stats_pass",
    "centre",
    "centred",
    "channel_stats_pass",
    "device_of",
    "evaluation_pass",
    "flatten_channels",
    "resolve_executor",
    "run_pass",
    "snapshot",
    "tap",
    "transform_outputs",
]
