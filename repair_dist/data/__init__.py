"""Datasets by name (offline, deterministic) and the fixed batch plans every pass consumes.

Names are imported on first use (PEP 562): the catalog's (``DATASETS``, ``dataset_info``,
``check_dataset``) come from the torch-free :mod:`.catalog`, so planning and validating a sweep
never imports torch; the loaders and batch plans import it when first named.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_api

#: Public name -> (module, attribute).
_API: dict[str, tuple[str, str]] = {
    "DATASETS": (".catalog", "DATASETS"),
    "Batch": (".batches", "Batch"),
    "BatchPlan": (".batches", "BatchPlan"),
    "as_plan": (".batches", "as_plan"),
    "check_dataset": (".catalog", "check_dataset"),
    "dataset_info": (".catalog", "dataset_info"),
    "load_dataset": (".datasets", "load_dataset"),
    "read_idx": (".datasets", "read_idx"),
}

__getattr__, __dir__ = lazy_api(__name__, globals(), _API)

__all__ = [
    "DATASETS",
    "Batch",
    "BatchPlan",
    "as_plan",
    "check_dataset",
    "dataset_info",
    "load_dataset",
    "read_idx",
]

if TYPE_CHECKING:  # what the names are, for type checkers and IDEs
    from .batches import Batch, BatchPlan, as_plan
    from .catalog import DATASETS, check_dataset, dataset_info
    from .datasets import load_dataset, read_idx
