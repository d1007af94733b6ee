"""Ray Tune, imported with the settings this project relies on (one place, set before import).

* ``RAY_AIR_NEW_OUTPUT=0``: quiet Tune; the runner prints its own progress lines.
* ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1``: no per-trial CSV/JSON/TensorBoard files. Parquet
  is the record, and writing those files was a third of the driver's CPU time per trial.
* ``TUNE_GLOBAL_CHECKPOINT_S``: Tune's experiment state is saved when a fit ends (and on
  Ctrl+C), not every 10 s while it runs. A sweep resumes by content (the checkpoint store and
  the Parquet tables), never from Tune's state, so the periodic saves bought nothing; each one
  serialised every trial of the fit into one string longer than the last, and those ever
  larger buffers fragmented the driver's heap: on a 2,520-trial sweep without MLflow the
  driver grew by 4.3 KB per merge trial with them and 0.8 KB without, and its CPU fell from
  22.3 to 17.9 s (README, "Driver memory").

They are read when Tune is imported or a fit starts, so every module of this package that
needs Tune imports it from here. A user's own value of each variable wins (``setdefault``).
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
#: Seconds between Tune's saves of its experiment state while a fit runs: a day, so in
#: practice only the save at the end of the fit (see the module docstring).
EXPERIMENT_STATE_PERIOD_S = 24 * 3600
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", str(EXPERIMENT_STATE_PERIOD_S))

from ray import tune  # noqa: E402


class _NoMissingMetricsWarning(logging.Filter):
    """Drops "Failed to fetch metrics for N trial(s)": without the auto loggers Tune's result
    grid has no metric files to read, and nothing here reads them (Parquet holds results)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Failed to fetch metrics" not in record.getMessage()


logging.getLogger("ray.tune.analysis.experiment_analysis").addFilter(_NoMissingMetricsWarning())

__all__ = ["tune"]
