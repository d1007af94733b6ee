"""Ray layer: loopback-safe Ray start-up and the actor pool that shards passes over data.

Only this package (and ``repair_dist.sweep``) imports Ray; the science modules reach it through
:func:`repair_dist.passes.resolve_executor` (``workers=N``).

Names are imported on first use (PEP 562): the pool imports torch (its workers run passes), and
a sweep driver whose endpoints are all stored starts Ray without ever needing it.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from .._lazy import lazy_api

#: Public name -> (module, attribute).
_API: dict[str, tuple[str, str]] = {
    "LOOPBACK": (".ray_init", "LOOPBACK"),
    "RayUnreachable": (".ray_init", "RayUnreachable"),
    "ResourceError": (".pool", "ResourceError"),
    "ShardFailedError": (".pool", "ShardFailedError"),
    "ShardPool": (".pool", "ShardPool"),
    "WorkerResources": (".pool", "WorkerResources"),
    "connect": (".ray_init", "connect"),
    "ensure_ray": (".ray_init", "ensure_ray"),
    "init_local_ray": (".ray_init", "init_local_ray"),
    "pool_of_size": (".pool", "pool_of_size"),
    "shutdown_pools": (".pool", "shutdown_pools"),
}

__getattr__, __dir__ = lazy_api(__name__, globals(), _API)


def release_cached_pools() -> None:
    """Shut down the pools this process cached (:func:`.pool.release_cached_pools`).

    Why here: a process that never imported the pool module has cached no pool, so there is
    nothing to release and no reason to import it (and torch with it).
    """
    pool = sys.modules.get(f"{__name__}.pool")
    if pool is not None:
        pool.release_cached_pools()


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

if TYPE_CHECKING:  # what the names are, for type checkers and IDEs
    from .pool import (
        ResourceError,
        ShardFailedError,
        ShardPool,
        WorkerResources,
        pool_of_size,
        shutdown_pools,
    )
    from .ray_init import LOOPBACK, RayUnreachable, connect, ensure_ray, init_local_ray
