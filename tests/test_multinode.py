"""A real multi-node Ray cluster on this machine: a worker node dies mid-pass, the pass survives."""

from __future__ import annotations

import threading

import helpers
import pytest
import ray
import torch
from helpers import assert_stats_equal, local_cluster

import repair_dist as rd
from repair_dist.data import BatchPlan
from repair_dist.distributed import ShardPool, WorkerResources
from repair_dist.passes import alignment_stats_pass
from repair_dist.perm.activation import alignment_probes

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def cluster():
    """Head (no CPUs: schedules nothing) + 2 one-CPU worker nodes, everything on 127.0.0.1."""
    with local_cluster(2, num_cpus=1) as made:
        yield made


def test_killing_a_worker_node_mid_pass_still_gives_the_whole_result(cluster, gaussian_images):
    c, nodes = cluster
    ray.cloudpickle.register_pickle_by_value(helpers)
    x, y = gaussian_images.tensors
    plan = BatchPlan(helpers.SlowDataset(x[:240], y[:240], 0.01), 20)  # 12 batches
    torch.manual_seed(0)
    net_a = rd.build_model("mlp", depth=3, width=16, norm="none", in_shape=(1, 8, 8))
    torch.manual_seed(1)
    net_b = rd.build_model("mlp", depth=3, width=16, norm="none", in_shape=(1, 8, 8))
    probes = alignment_probes(rd.permutation_spec(net_a))
    expected = alignment_stats_pass(net_a, net_b, batches=plan.batches(), probes=probes)

    # Half a CPU each: after one node dies, its worker's replacement fits on the other node.
    with ShardPool(2, resources=WorkerResources(cpus=0.5), task_timeout_s=90) as pool:
        placed = {w["node_id"] for w in pool.where()}
        pool.run(alignment_stats_pass, [net_a, net_b], plan, probes=probes)  # warm workers
        victim = next(n for n in nodes if n.node_id in placed)
        killer = threading.Timer(0.5, lambda: c.remove_node(victim, allow_graceful=False))
        killer.start()
        got = pool.run(alignment_stats_pass, [net_a, net_b], plan, probes=probes)
        killer.join()
        assert pool.replaced >= 1
        survivors = {w["node_id"] for w in pool.where()}
        assert victim.node_id not in survivors
    assert_stats_equal(expected, got)
