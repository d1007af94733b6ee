"""A pool of Ray actors that runs every pass over data as a sharded pass (DESIGN.md §1).

A pass is ``fn(*nets, batches=..., **kw) -> partial`` where partials have ``merge()``. The
pool splits the plan's batches round-robin into more shards than workers (``shards``, by
default 16 or 4 per worker if more) and keeps a queue: every worker gets one shard, and a
worker that returns one pulls the next, so a slow (or shared) worker holds up at most the one
shard it is on instead of 1/N of the pass. Each weight set goes to the object store once per
pass (one ``ray.put`` for all workers), and the driver reduces partials as they arrive
(``ray.wait``), merging them in shard order. The shard layout depends on the plan and the
shard count only, never on which worker ran what, so every pool with the same shard count
(by default: every pool of up to 4 workers) gives bit-identical results.

Workers keep what is expensive to move: a plan (its dataset) is sent to a worker once and
cached there by id; later passes over the same plan send only batch ids. Fault tolerance: a
shard's partial is stored under its shard id, so it is counted once; a worker that dies (or
whose node dies) is replaced and its shard goes back to the front of the queue (recomputed on
whichever worker is free next, possibly on another node), giving the same result.

Placement: inside a Ray Tune trial that asked for a placement group
(``tune.with_resources(..., PlacementGroupFactory([driver, worker, worker, ...]))``), worker
``i`` is pinned to bundle ``i + 1``, so a trial with 4 GPU bundles gets exactly 4 workers.
Outside Tune the pool checks ``ray.cluster_resources()`` and refuses at once (ResourceError)
what the cluster can never provide, instead of letting Ray queue actors forever.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import ray
import torch
from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    GetTimeoutError,
    NodeDiedError,
    OwnerDiedError,
    RayActorError,
    WorkerCrashedError,
)
from ray.util.placement_group import PlacementGroup, get_current_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from torch import nn

from ..data.batches import BatchPlan
from .ray_init import ensure_ray

log = logging.getLogger(__name__)

#: Errors that mean "this worker is gone": replace it and recompute its shard.
WORKER_LOST = (
    ActorDiedError,
    ActorUnavailableError,
    RayActorError,
    WorkerCrashedError,
    NodeDiedError,
    OwnerDiedError,
)
_PLAN_CACHE_SIZE = 8

#: Default shards per pass: enough that a slow worker of a small pool stalls little, and the
#: same for every pool of up to ``DEFAULT_SHARDS // 4`` workers (bit-identical results).
DEFAULT_SHARDS = 16


class ResourceError(RuntimeError):
    """The cluster cannot provide what a pool asks for (raised at once, never a hang)."""


class ShardFailedError(RuntimeError):
    """A shard kept failing after every retry (its workers were replaced each time)."""


@ray.remote(max_restarts=0, max_task_retries=0)
class ShardWorker:
    """One worker of a pool: holds cached plans, runs pass functions over its batch ids."""

    def __init__(self, threads: int, use_gpu: bool, amp: bool = False) -> None:
        torch.set_num_threads(max(1, threads))
        self._device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self._amp = amp
        self._plans: dict[int, BatchPlan] = {}
        self._nets: tuple[Any, list[nn.Module]] | None = None  # (ref, nets on this device)

    def where(self) -> dict[str, Any]:
        ctx = ray.get_runtime_context()
        return {"node_id": ctx.get_node_id(), "pid": os.getpid(), "device": str(self._device)}

    def has_plan(self, plan_id: int) -> bool:
        return plan_id in self._plans

    def add_plan(self, plan_id: int, plan: BatchPlan) -> None:
        if len(self._plans) >= _PLAN_CACHE_SIZE:
            self._plans.pop(next(iter(self._plans)))
        self._plans[plan_id] = plan

    def run(
        self,
        fn: Callable[..., Any],
        nets_box: list[Any],
        plan_id: int,
        batch_ids: list[int],
        kwargs: dict[str, Any],
    ) -> Any:
        """``nets_box``: [ref of the pass's weights], boxed so that Ray does not resolve it
        per task: a worker loads a pass's nets once, not once per shard it pulls."""
        plan = self._plans[plan_id]
        (ref,) = nets_box
        if self._nets is None or self._nets[0] != ref:
            self._nets = None  # let the previous pass's nets go before loading these
            self._nets = (ref, [net.to(self._device) for net in ray.get(ref)])
        nets = self._nets[1]
        if not self._amp:
            return fn(*nets, batches=plan.batches(batch_ids), **kwargs)
        # Mixed precision: bf16 forwards (channels-last convs on GPU); each batch's moments
        # are still float32 over batch-centred data, merged across batches in float64.
        if self._device.type == "cuda":
            nets = [net.to(memory_format=torch.channels_last) for net in nets]
        with torch.autocast(self._device.type, dtype=torch.bfloat16):
            return fn(*nets, batches=plan.batches(batch_ids), **kwargs)


@dataclass(frozen=True)
class WorkerResources:
    """What one worker asks Ray for."""

    cpus: float = 1.0
    gpus: float = 0.0

    def options(self) -> dict[str, Any]:
        return {"num_cpus": self.cpus, "num_gpus": self.gpus}


def _resource_shortfall(workers: int, res: WorkerResources, total: dict[str, float]) -> str:
    """A message naming what the cluster lacks for ``workers`` x ``res`` (empty: it fits)."""
    problems = []
    cpus, gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
    if res.gpus > 0 and gpus == 0:
        problems.append(
            f"{workers} workers ask for {res.gpus:g} GPU each, but the cluster has no GPUs "
            "(on a CPU-only machine use gpus_per_worker=0)"
        )
    elif workers * res.gpus > gpus + 1e-9:
        problems.append(f"{workers} workers x {res.gpus:g} GPU > {gpus:g} GPUs in the cluster")
    if workers * res.cpus > cpus + 1e-9:
        problems.append(f"{workers} workers x {res.cpus:g} CPU > {cpus:g} CPUs in the cluster")
    return "; ".join(problems)


class ShardPool:
    """N worker actors; an :class:`~repair_dist.passes.Executor` for sharded passes.

    ``amp=True`` runs the workers' forwards under bf16 autocast (and channels-last on GPU):
    about 2x the throughput on tensor-core GPUs, with statistics still summed in float64.
    Off by default, because bf16 activations change the statistics beyond float rounding
    (correlations move by ~1e-3); matching and REPAIR are robust to that, exact tests are not.
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        resources: WorkerResources | None = None,
        placement_group: PlacementGroup | None | str = "current",
        task_timeout_s: float | None = None,
        start_timeout_s: float | None = 120.0,
        max_retries: int = 3,
        amp: bool = False,
        shards: int | None = None,
    ) -> None:
        if shards is not None and (isinstance(shards, bool) or not isinstance(shards, int)):
            raise TypeError(f"shards must be an int (got {shards!r})")
        if shards is not None and shards < 1:
            raise ValueError(f"shards must be >= 1 (got {shards})")
        ensure_ray()
        # Cached pools of this process are idle now (one pass runs at a time); left alive,
        # their actors would hold the resources this pool waits for.
        release_cached_pools()
        pg = get_current_placement_group() if placement_group == "current" else placement_group
        self._pg: PlacementGroup | None = pg  # type: ignore[assignment]
        self.resources, workers = self._size(workers, resources)
        self.size = workers
        self.shards = shards or max(DEFAULT_SHARDS, 4 * workers)
        self.task_timeout_s = task_timeout_s
        self.max_retries = max_retries
        self.amp = amp
        self._job = ray.get_runtime_context().get_job_id()
        self._ids = itertools.count()
        self._actors = [self._spawn(i) for i in range(workers)]
        self._wait_started(start_timeout_s)
        self._plans: dict[int, tuple[BatchPlan, Any]] = {}  # id -> (plan kept alive, ref)
        self._has_plan: list[set[int]] = [set() for _ in range(workers)]
        self.replaced = 0

    # ----- sizing and placement ---------------------------------------------------------
    def _size(
        self, workers: int | None, resources: WorkerResources | None
    ) -> tuple[WorkerResources, int]:
        if self._pg is not None:
            bundles = self._pg.bundle_specs[1:]  # bundle 0 is the trial's own driver
            if not bundles:
                raise ResourceError(
                    "this trial's placement group has no worker bundles; request them with "
                    "PlacementGroupFactory([driver_bundle, worker_bundle, ...])"
                )
            if workers is not None and workers > len(bundles):
                raise ResourceError(
                    f"asked for {workers} workers but the trial's placement group has "
                    f"{len(bundles)} worker bundles"
                )
            n = workers or len(bundles)
            b = bundles[0]
            return WorkerResources(b.get("CPU", 0.0), b.get("GPU", 0.0)), n
        total = ray.cluster_resources()
        if resources is None:
            if total.get("GPU", 0) >= 1:
                n = workers or int(total["GPU"])
                resources = WorkerResources(cpus=1.0, gpus=1.0)
            else:
                n = workers or max(1, int(total.get("CPU", 1)))
                # Fractional CPUs: N workers share the free cores without queueing.
                free = ray.available_resources().get("CPU", 0.0)
                share = math.floor(100 * min(1.0, (free or total.get("CPU", 1.0)) / n)) / 100
                resources = WorkerResources(cpus=max(share, 0.01), gpus=0.0)
        else:
            n = workers or max(1, int(total.get("GPU" if resources.gpus else "CPU", 1)))
        if n < 1:
            raise ResourceError(f"a pool needs at least one worker (got {n})")
        shortfall = _resource_shortfall(n, resources, total)
        if shortfall:
            raise ResourceError(f"cannot start a pool of {n} workers: {shortfall}")
        return resources, n

    def _spawn(self, index: int) -> Any:
        opts: dict[str, Any] = dict(self.resources.options())
        if self._pg is not None:
            opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                self._pg, placement_group_bundle_index=index + 1
            )
        threads = max(1, math.floor(self.resources.cpus))
        return ShardWorker.options(**opts).remote(threads, self.resources.gpus > 0, self.amp)

    def _wait_started(self, timeout_s: float | None) -> None:
        """Fail with a message instead of queueing forever behind busy resources."""
        probes = [a.where.remote() for a in self._actors]
        ready, _ = ray.wait(probes, num_returns=len(probes), timeout=timeout_s)
        if len(ready) == len(probes):
            return
        free = ray.available_resources()
        self.shutdown()
        raise ResourceError(
            f"only {len(ready)} of {len(probes)} workers ({self.resources.cpus:g} CPU, "
            f"{self.resources.gpus:g} GPU each) started within {timeout_s:g} s; free now: "
            f"{free.get('CPU', 0):g} CPU, {free.get('GPU', 0):g} GPU. Other pools or trials "
            "hold the rest: shut them down, ask for fewer workers or smaller workers"
        )

    def _replace(self, index: int) -> None:
        with contextlib.suppress(Exception):
            ray.kill(self._actors[index], no_restart=True)
        self._actors[index] = self._spawn(index)
        self._has_plan[index] = set()
        self.replaced += 1

    # ----- the executor interface -------------------------------------------------------
    @property
    def alive(self) -> bool:
        """Whether this pool can still run passes (its Ray session is current, not shut down)."""
        return (
            bool(self._actors)
            and ray.is_initialized()
            and ray.get_runtime_context().get_job_id() == self._job
        )

    def where(self) -> list[dict[str, Any]]:
        """Node/pid/device of every worker (waits for them to start)."""
        return ray.get([a.where.remote() for a in self._actors], timeout=self.task_timeout_s)

    def _plan_ref(self, plan: BatchPlan) -> tuple[int, Any]:
        for pid, (kept, ref) in self._plans.items():
            if kept is plan:
                return pid, ref
        pid = next(self._ids)
        if len(self._plans) >= _PLAN_CACHE_SIZE:
            self._plans.pop(next(iter(self._plans)))
        self._plans[pid] = (plan, ray.put(plan))
        return pid, self._plans[pid][1]

    def _submit(
        self,
        index: int,
        fn: Callable,
        nets_ref: Any,
        plan: tuple[int, Any],
        batch_ids: list[int],
        kwargs: dict[str, Any],
    ) -> Any:
        actor = self._actors[index]
        pid, plan_ref = plan
        if pid not in self._has_plan[index]:
            actor.add_plan.remote(pid, plan_ref)  # actor tasks run in submission order
            self._has_plan[index].add(pid)
        return actor.run.remote(fn, [nets_ref], pid, batch_ids, kwargs)

    def run(
        self, fn: Callable[..., Any], nets: Sequence[nn.Module], data: BatchPlan, **kwargs: Any
    ) -> Any:
        """Run ``fn`` over every batch of ``data``, sharded; return the merged partial."""
        count = min(len(data), self.shards)
        if count == 0:
            return fn(*nets, batches=iter(()), **kwargs)
        shards = [data.shard(i, count) for i in range(count)]
        nets_ref = ray.put([_cpu_copy(n) for n in nets])  # one put per weight set, per pass
        plan = self._plan_ref(data)
        queue = deque(range(count))
        pending: dict[Any, tuple[int, int]] = {}  # ref -> (worker, shard)

        def feed(worker: int) -> None:
            if queue:
                shard = queue.popleft()
                ref = self._submit(worker, fn, nets_ref, plan, shards[shard], kwargs)
                pending[ref] = (worker, shard)

        for worker in range(self.size):
            feed(worker)
        attempts = [0] * count
        partials: dict[int, Any] = {}
        merged, next_shard = None, 0
        deadline = None if self.task_timeout_s is None else time.monotonic() + self.task_timeout_s
        while pending:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=timeout)
            if not ready:
                raise GetTimeoutError(
                    f"sharded pass {getattr(fn, '__name__', fn)} did not finish within "
                    f"{self.task_timeout_s:g} s ({len(pending) + len(queue)} of {count} "
                    "shards left)"
                )
            worker, shard = pending.pop(ready[0])
            try:
                part = ray.get(ready[0])
            except WORKER_LOST as err:
                attempts[shard] += 1
                if attempts[shard] > self.max_retries:
                    raise ShardFailedError(
                        f"shard {shard} failed {attempts[shard]} times; last error: {err}"
                    ) from err
                log.warning(
                    "worker %d lost (%s); shard %d goes back to the queue",
                    worker,
                    type(err).__name__,
                    shard,
                )
                self._replace(worker)
                queue.appendleft(shard)
                feed(worker)
                continue
            partials.setdefault(shard, part)  # keyed by shard: never counted twice
            feed(worker)  # this worker is free: it pulls the next shard
            while next_shard in partials:  # reduce in shard order as partials arrive
                part = partials.pop(next_shard)
                merged = part if merged is None else merged.merge(part)
                next_shard += 1
        return merged

    def shutdown(self) -> None:
        for actor in self._actors:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        self._actors = []

    def __enter__(self) -> ShardPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _cpu_copy(net: nn.Module) -> nn.Module:
    """The module as it should travel: on CPU (workers move it to their own device)."""
    if any(p.device.type != "cpu" for p in itertools.chain(net.parameters(), net.buffers())):
        import copy

        return copy.deepcopy(net).cpu()
    return net


_POOLS: dict[tuple[int, WorkerResources | None, str | None, bool], ShardPool] = {}


def pool_of_size(
    workers: int, resources: WorkerResources | None = None, *, amp: bool = False
) -> ShardPool:
    """A cached pool of ``workers`` actors (created on first use in this Ray session).

    Inside a Tune trial the pool is bound to the trial's placement group; cached per group.
    A process runs one pass at a time, so every other cached pool is idle: asking for a
    different pool releases them first, otherwise their actors would keep holding the CPUs
    (or GPUs) the new pool needs and it would wait for resources that never free up.
    """
    pg = get_current_placement_group()
    key = (workers, resources, None if pg is None else pg.id.hex(), amp)
    pool = _POOLS.get(key)
    if pool is None or not pool.alive:
        pool = ShardPool(workers, resources=resources, amp=amp)  # releases the idle cached ones
        _POOLS[key] = pool
    return pool


def release_cached_pools() -> None:
    """Shut down the cached pools: they are idle whenever this process starts a new pool."""
    while _POOLS:
        _, pool = _POOLS.popitem()
        if pool.alive:
            pool.shutdown()


def shutdown_pools() -> None:
    """Kill every cached pool's actors (e.g. before ``ray.shutdown()``)."""
    release_cached_pools()
