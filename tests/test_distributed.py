"""Sharded passes on Ray actors give the in-process engine's answers, whatever the worker count."""

from __future__ import annotations

import dataclasses
import threading
import time

import helpers
import pytest
import ray
import torch
from helpers import assert_stats_equal

import repair_dist as rd
from repair_dist.data import BatchPlan
from repair_dist.distributed import ResourceError, ShardPool, WorkerResources
from repair_dist.passes import alignment_stats_pass
from repair_dist.perm import random_permutation
from repair_dist.perm.activation import alignment_probes
from repair_dist.pipeline import merge_trial

pytestmark = pytest.mark.timeout(240)


def _net(name: str, seed: int, **cfg) -> torch.nn.Module:
    torch.manual_seed(seed)
    return rd.build_model(name, in_shape=(1, 8, 8), **cfg).eval()


def _noisy_shuffled_copy(net: torch.nn.Module) -> torch.nn.Module:
    spec = rd.permutation_spec(net)
    copy = rd.apply_permutation(net, random_permutation(spec.group_sizes(net), seed=3), spec)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in copy.parameters():
            p.add_(0.01 * p.std().nan_to_num(0) * torch.randn(p.shape, generator=gen))
    return copy


NETS = {
    "mlp": dict(name="mlp", depth=4, width=32, norm="none"),
    "resnet20-bn": dict(name="resnet20", width=1, norm="bn"),
}


@pytest.fixture(scope="module")
def pools(ray_ready):
    # Small CPU slices so both pools (and the tests' own pools) fit on a 2-CPU machine.
    made = {n: ShardPool(n, resources=WorkerResources(0.25), task_timeout_s=120) for n in (2, 3)}
    made[1] = 1  # in-process engine
    yield made
    for pool in made.values():
        if isinstance(pool, ShardPool):
            pool.shutdown()


@pytest.fixture(scope="module", params=list(NETS))
def pair(request, gaussian_images):
    cfg = dict(NETS[request.param])
    name = cfg.pop("name")
    return _net(name, 0, **cfg), _net(name, 1, **cfg), BatchPlan(gaussian_images, 50)


@pytest.mark.parametrize("workers", [2, 3])
def test_sharded_statistics_equal_the_single_process_statistics(pools, pair, workers):
    net_a, net_b, plan = pair
    whole = rd.alignment_statistics(net_a, net_b, plan, workers=1)
    sharded = rd.alignment_statistics(net_a, net_b, plan, workers=pools[workers])
    assert_stats_equal(whole, sharded)


@pytest.mark.parametrize("workers", [2, 3])
def test_sharded_matching_repair_and_evaluation_equal_the_engine(pools, pair, workers):
    net_a, net_b, plan = pair
    pool = pools[workers]
    # Random nets have exact ties (units dead on this data): match against a noisy shuffled
    # copy of A instead, where the optimum is unique, and check both routes agree exactly.
    shuffled = _noisy_shuffled_copy(net_a)
    perm = rd.activation_matching(net_a, shuffled, plan)
    sharded = rd.activation_matching(net_a, shuffled, plan, workers=pool)
    assert all(torch.equal(perm[g], sharded[g]) for g in perm)
    perm = rd.activation_matching(net_a, net_b, plan)
    net_c = rd.apply_permutation(net_b, perm)
    mid = rd.interpolate([net_a, net_c], [0.5, 0.5])
    for variant in ("full", "reset") if "bn" in str(net_a) else ("full", "rescale"):
        one = rd.repair(mid, [net_a, net_c], [0.5, 0.5], plan, variant=variant)
        many = rd.repair(mid, [net_a, net_c], [0.5, 0.5], plan, variant=variant, workers=pool)
        for key, value in one.state_dict().items():
            torch.testing.assert_close(many.state_dict()[key], value, rtol=1e-6, atol=1e-7)
    assert rd.evaluate(mid, plan, workers=pool) == pytest.approx(rd.evaluate(mid, plan), rel=1e-12)


def test_a_whole_merge_trial_is_independent_of_the_worker_count(pools, gaussian_images):
    net_a, net_b = (
        _net("mlp", 0, **{"depth": 3, "width": 16}),
        _net("mlp", 1, **{"depth": 3, "width": 16}),
    )
    kw = dict(variants=["full", "closed_form"], alphas=[0.0, 0.5, 1.0], batch_size=64)
    one = merge_trial(net_a, net_b, gaussian_images, gaussian_images, **kw)
    three = merge_trial(net_a, net_b, gaussian_images, gaussian_images, workers=pools[3], **kw)
    assert all(torch.equal(one.perm[g], three.perm[g]) for g in one.perm)
    cols = ["loss", "acc"]
    torch.testing.assert_close(
        torch.tensor(three.curves[cols].to_numpy()),
        torch.tensor(one.curves[cols].to_numpy()),
        rtol=1e-6,
        atol=1e-9,
    )


def test_a_worker_killed_mid_pass_is_replaced_and_the_result_is_unchanged(
    ray_ready, gaussian_images
):
    ray.cloudpickle.register_pickle_by_value(helpers)
    x, y = gaussian_images.tensors
    plan = BatchPlan(helpers.SlowDataset(x[:240], y[:240], 0.01), 20)  # 12 batches, ~2.4 s
    net_a, net_b = (
        _net("mlp", 0, depth=3, width=16, norm="none"),
        _net("mlp", 1, depth=3, width=16, norm="none"),
    )
    probes = alignment_probes(rd.permutation_spec(net_a))
    expected = alignment_stats_pass(net_a, net_b, batches=plan.batches(), probes=probes)
    with ShardPool(2, resources=WorkerResources(0.25), task_timeout_s=120) as pool:
        pool.where()  # workers started
        victim = pool._actors[1]
        killer = threading.Timer(0.8, lambda: ray.kill(victim, no_restart=True))
        killer.start()
        started = time.monotonic()
        got = pool.run(alignment_stats_pass, [net_a, net_b], plan, probes=probes)
        killer.join()
        assert pool.replaced == 1, "the killed worker should have been replaced exactly once"
        assert time.monotonic() - started > 0.8
    assert_stats_equal(expected, got)


def test_asking_for_more_than_the_cluster_has_fails_at_once(ray_ready):
    started = time.monotonic()
    with pytest.raises(ResourceError, match="no GPUs"):
        ShardPool(2, resources=WorkerResources(cpus=0.5, gpus=1))
    with pytest.raises(ResourceError, match=r"CPUs in the cluster"):
        ShardPool(8, resources=WorkerResources(cpus=1))
    with pytest.raises(ResourceError, match=r"0 of 2 workers .* started within"):
        ShardPool(2, resources=WorkerResources(cpus=1.0), start_timeout_s=1)  # others hold CPUs
    assert time.monotonic() - started < 5


def test_inside_a_placement_group_the_pool_takes_one_worker_per_bundle(ray_ready, gaussian_images):
    from ray.util.placement_group import placement_group, remove_placement_group

    pg = placement_group([{"CPU": 0.1}, {"CPU": 0.25}, {"CPU": 0.25}])
    ray.get(pg.ready(), timeout=60)
    try:
        with pytest.raises(ResourceError, match="2 worker bundles"):
            ShardPool(3, placement_group=pg)
        with ShardPool(placement_group=pg, task_timeout_s=120) as pool:
            assert pool.size == 2 and pool.resources == WorkerResources(0.25, 0.0)
            net = _net("mlp", 0, depth=2, width=8, norm="none")
            plan = BatchPlan(gaussian_images, 64)
            assert pool.run(rd.passes.evaluation_pass, [net], plan, points=[]).n == len(
                gaussian_images
            )
    finally:
        remove_placement_group(pg)


def test_local_ray_listens_on_loopback_only(ray_ready):
    assert {node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]} == {"127.0.0.1"}


def test_worker_results_are_plain_cpu_objects(pools, gaussian_images):
    net = _net("mlp", 0, depth=2, width=8, norm="none")
    totals = pools[2].run(
        rd.passes.evaluation_pass, [net], BatchPlan(gaussian_images, 100), points=[]
    )
    assert dataclasses.is_dataclass(totals) and totals.n == len(gaussian_images)


def test_mixed_precision_workers_keep_float64_statistics_and_the_same_matching(ray_ready, pair):
    net_a, _, plan = pair
    shuffled = _noisy_shuffled_copy(net_a)
    exact = rd.alignment_statistics(net_a, shuffled, plan)
    with ShardPool(2, resources=WorkerResources(0.25), amp=True, task_timeout_s=120) as pool:
        mixed = rd.alignment_statistics(net_a, shuffled, plan, workers=pool)
        perm = rd.activation_matching(net_a, shuffled, plan, workers=pool)
    assert all(
        torch.equal(perm[g], p) for g, p in rd.activation_matching(net_a, shuffled, plan).items()
    )
    worst = max((mixed[k].corr() - exact[k].corr()).abs().max().item() for k in exact)
    assert worst > 1e-6, "bf16 forwards should move correlations beyond float64 rounding"
    for key in exact:
        assert mixed[key].c_ab.dtype == torch.float64
        torch.testing.assert_close(mixed[key].corr(), exact[key].corr(), atol=0.05, rtol=0)


def test_a_notebook_can_change_workers_freely(pools, gaussian_images):
    """A cached pool of one size must not block a pool of another size (issue 14, item 11).

    The module's pools hold 1.25 of 2 CPUs. A cached 2 x 0.25 pool leaves 0.25 free, so a
    3 x 0.25 pool only starts if the idle cached pool is released first.
    """
    from repair_dist.distributed import pool_of_size

    plan = BatchPlan(gaussian_images, 96)
    net_a, net_b = _net("mlp", 0, depth=2, width=8), _net("mlp", 1, depth=2, width=8)
    small = pool_of_size(2, WorkerResources(0.25))
    first = rd.activation_matching(net_a, net_b, plan, workers=small)
    start = time.monotonic()
    larger = ShardPool(3, resources=WorkerResources(0.25), start_timeout_s=30)
    try:
        second = rd.activation_matching(net_a, net_b, plan, workers=larger)
    finally:
        larger.shutdown()
    assert time.monotonic() - start < 30
    assert not small.alive
    assert all(torch.equal(first[g], second[g]) for g in first)


@pytest.fixture(scope="module")
def trained_with_dead_units():
    """Two deep narrow MLPs trained briefly on digits with a large step: some units die."""
    train, _ = rd.load_dataset("digits")
    nets = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = rd.build_model("mlp", depth=8, width=32, norm="none", in_shape=(1, 8, 8))
        nets.append(rd.train_model(net, train, epochs=4, seed=seed, lr=0.1, device="cpu"))
    return nets[0], nets[1], BatchPlan(train, 100)


def test_permutations_of_trained_nets_with_dead_units_do_not_depend_on_the_worker_count(
    pools, trained_with_dead_units
):
    net_a, net_b, plan = trained_with_dead_units
    for net in (net_a, net_b):  # the case this guards: trained nets with dead units
        dead = {k: v for k, v in rd.collapsed_filters(net, plan).items() if k.startswith("dead:")}
        assert sum(dead.values()) >= 8, dead
    perms, merged = {}, {}
    for workers in (1, 2, 3):
        perms[workers] = rd.activation_matching(net_a, net_b, plan, workers=pools[workers])
        net_c = rd.apply_permutation(net_b, perms[workers])
        merged[workers] = rd.interpolate([net_a, net_c], [0.5, 0.5]).state_dict()
    for workers in (2, 3):
        for g, p in perms[1].items():
            assert torch.equal(perms[workers][g], p), (workers, g)
        for k, v in merged[1].items():
            assert torch.equal(merged[workers][k], v), (workers, k)


def test_collapsed_filters_is_a_sharded_pass(pools, trained_with_dead_units):
    net, _, plan = trained_with_dead_units
    x = torch.cat([x for x, _ in plan.batches()])
    counts = rd.collapsed_filters(net, plan)
    with torch.no_grad():
        h = x.flatten(1)
        for i, block in enumerate(net.blocks):  # the MLP's matching probes: block outputs
            h = block(h)
            assert counts[f"dead:blocks.{i}.act"] == int((h <= 0).all(0).sum())
    for workers in (2, 3):
        assert rd.collapsed_filters(net, plan, workers=pools[workers]) == counts


def test_pools_of_any_size_give_bit_identical_statistics(pools, pair):
    """The shard layout depends on the plan only, and shards merge in shard order."""
    net_a, net_b, plan = pair
    two = rd.alignment_statistics(net_a, net_b, plan, workers=pools[2])
    three = rd.alignment_statistics(net_a, net_b, plan, workers=pools[3])
    for key, moments in two.items():
        for name, value in vars(moments).items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(getattr(three[key], name), value), (key, name)


def test_a_slow_worker_holds_up_only_the_shard_it_is_on(pools):
    """Shards are pulled from a queue: the fast worker runs most of them, every batch runs
    once, and the partials still merge in shard (batch) order."""
    ray.cloudpickle.register_pickle_by_value(helpers)
    pool = pools[2]
    data = torch.utils.data.TensorDataset(torch.arange(32.0)[:, None], torch.zeros(32))
    plan = BatchPlan(data, 2)  # 16 batches
    slow_pid = pool.where()[0]["pid"]
    got = pool.run(helpers.who_ran, [torch.nn.Identity()], plan, slow_pid=slow_pid, seconds=0.4)
    firsts = [first for _, first in got.runs]
    assert firsts == list(range(0, 32, 2))  # every batch once, merged in shard order
    slow = sum(pid == slow_pid for pid, _ in got.runs)
    assert slow <= 4, f"the slow worker ran {slow} of 16 shards"
