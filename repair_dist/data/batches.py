"""A fixed, ordered list of batches over a dataset, split round-robin into shards.

Every pass over data (statistics, recalibration, evaluation) consumes a :class:`BatchPlan`
shard. Batch ``k`` always holds the same examples, and shard ``i`` of ``n`` holds batches
``i, i+n, i+2n, ...``; so N workers see exactly the batches one process would, and their
additive partial results sum to the single-process result.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class BatchPlan:
    dataset: Dataset
    batch_size: int = 256
    loader_workers: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {self.batch_size})")

    def __len__(self) -> int:
        return (len(self.dataset) + self.batch_size - 1) // self.batch_size  # type: ignore[arg-type]

    def shard(self, index: int = 0, count: int = 1) -> list[int]:
        """Batch ids of shard ``index`` of ``count`` (round-robin)."""
        if not 0 <= index < count:
            raise ValueError(f"shard index {index} out of range for {count} shards")
        return list(range(index, len(self), count))

    def batches(self, batch_ids: Iterable[int] | None = None) -> Iterator[Batch]:
        ids = list(range(len(self))) if batch_ids is None else list(batch_ids)
        n = len(self.dataset)  # type: ignore[arg-type]
        spans = [(k * self.batch_size, min(n, (k + 1) * self.batch_size)) for k in ids]
        if isinstance(self.dataset, TensorDataset):
            x, y = self.dataset.tensors[:2]
            for lo, hi in spans:
                yield x[lo:hi], y[lo:hi]
            return
        loader = DataLoader(
            self.dataset,
            batch_sampler=[list(range(lo, hi)) for lo, hi in spans],
            num_workers=self.loader_workers,
            persistent_workers=False,
        )
        for x, y in loader:
            yield x, y

    def __iter__(self) -> Iterator[Batch]:
        return self.batches()


def as_plan(data: Dataset | BatchPlan, batch_size: int = 256) -> BatchPlan:
    """Accept a Dataset or a ready plan."""
    if isinstance(data, BatchPlan):
        return data
    if isinstance(data, Dataset):
        return BatchPlan(data, batch_size)
    raise TypeError(f"expected a torch Dataset or BatchPlan, got {type(data).__name__}")
