"""Ray layer: loopback-safe Ray start-up and the actor pool that shards passes over data.

Only this package (and ``repair_dist.sweep``) imports Ray; the science modules reach it through
:func:`repair_dist.passes.resolve_executor` (``workers=N``).
"""

from .pool import (
    ResourceError,
    ShardFailedError,
    ShardPool,
    WorkerResources,
    pool_of_size,
    release_cached_pools,
    shutdown_pools,
)
from .ray_init import LOOPBACK, RayUnreachable, connect, ensure_ray, init_local_ray

__all__ = [
    "LOOPBACK",
    "RayUnreachable",
    "ResourceError",
    "ShardFailedError",
    "ShardPool",
    "WorkerResources",
    "connect",
    "ensure_ray",
    "init_local_ray",
    "pool_of_size",
    "release_cached_pools",
    "shutdown_pools",
]
