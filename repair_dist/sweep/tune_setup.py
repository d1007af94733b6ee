"""Ray Tune, imported with the settings this project relies on (one place, set before import).

* ``RAY_AIR_NEW_OUTPUT=0``: quiet Tune; the runner prints its own progress lines.
* ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1``: no per-trial CSV/JSON/TensorBoard files. Parquet
  is the record, and writing those files was a third of the driver's CPU time per trial.

Both are read when Tune is imported, so every module of this package that needs Tune imports
it from here. A user's own value of either variable wins (``setdefault``).
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")

from ray import tune  # noqa: E402


class _NoMissingMetricsWarning(logging.Filter):
    """Drops "Failed to fetch metrics for N trial(s)": without the auto loggers Tune's result
    grid has no metric files to read, and nothing here reads them (Parquet holds results)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Failed to fetch metrics" not in record.getMessage()


logging.getLogger("ray.tune.analysis.experiment_analysis").addFilter(_NoMissingMetricsWarning())

__all__ = ["tune"]
