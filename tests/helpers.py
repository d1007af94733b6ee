"""Test helpers: a slow dataset (act while a pass runs) and a float64 statistics comparison.

Tests register this module with ``ray.cloudpickle.register_pickle_by_value`` so that Ray
workers (which cannot import the tests folder) receive it by value.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
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


def _tensors_of(obj) -> list[torch.Tensor]:
    return [v for v in vars(obj).values() if isinstance(v, torch.Tensor)]


def assert_stats_equal(expected, actual, rtol: float = 1e-9) -> None:
    """Every float64 moment of every probe agrees to ``rtol`` (sharded vs whole)."""
    assert expected.keys() == actual.keys()
    for key in expected:
        e, a = expected[key], actual[key]
        assert e.n == a.n, key
        for te, ta in zip(_tensors_of(e), _tensors_of(a), strict=True):
            assert te.dtype == torch.float64
            torch.testing.assert_close(ta, te, rtol=rtol, atol=1e-12 * te.abs().max().item())


#: Fast failure detection: a dead node is noticed in about a second, not half a minute.
FAST_HEALTH_CHECKS = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 300,
    "health_check_failure_threshold": 3,
    "health_check_timeout_ms": 300,
}


@contextlib.contextmanager
def local_cluster(worker_nodes: int, **node_args):
    """A head (no CPUs: schedules nothing) + worker nodes on 127.0.0.1, connected; torn down.

    Stops the session's single-node Ray first (``ray_ready`` restarts it when needed).
    """
    import ray
    from ray.cluster_utils import Cluster

    from repair_dist.distributed import shutdown_pools

    shutdown_pools()
    ray.shutdown()
    head = {"num_cpus": 0, "node_ip_address": "127.0.0.1", "_system_config": FAST_HEALTH_CHECKS}
    c = Cluster(initialize_head=True, head_node_args=head)
    nodes = [c.add_node(node_ip_address="127.0.0.1", **node_args) for _ in range(worker_nodes)]
    c.wait_for_nodes()
    ray.init(address=c.address, logging_level="WARNING", log_to_driver=False)
    try:
        yield c, nodes
    finally:
        shutdown_pools()
        ray.shutdown()
        c.shutdown()


@dataclasses.dataclass
class WhoRan:
    """Mergeable record of which process ran which batches (first example of each)."""

    runs: list[tuple[int, int]]

    def merge(self, other: WhoRan) -> WhoRan:
        return WhoRan(self.runs + other.runs)


def who_ran(net, *, batches, slow_pid: int, seconds: float) -> WhoRan:
    """A pass that notes its process per batch; the process ``slow_pid`` is slow."""
    runs = []
    for x, _ in batches:
        if os.getpid() == slow_pid:
            time.sleep(seconds)
        runs.append((os.getpid(), int(x[0, 0])))
    return WhoRan(runs)
