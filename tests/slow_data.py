"""A dataset that takes a fixed time per item, so a test can act while a pass is running.

Tests register this module with ``ray.cloudpickle.register_pickle_by_value`` so that Ray
workers (which cannot import the tests folder) receive it by value.
"""

from __future__ import annotations

import time

import torch
from torch.utils.data import Dataset


class SlowDataset(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, seconds_per_item: float) -> None:
        self.x, self.y, self.seconds = x, y, seconds_per_item

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        time.sleep(self.seconds)
        return self.x[i], self.y[i]
