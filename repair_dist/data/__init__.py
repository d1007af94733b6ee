"""Datasets by name (offline, deterministic) and the fixed batch plans every pass consumes."""

from .batches import Batch, BatchPlan, as_plan
from .datasets import DATASETS, check_dataset, dataset_info, load_dataset, read_idx

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
