"""Shared fixtures: small real data and tiny nets; one session-wide local Ray (loopback)."""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import TensorDataset

# Ray and MLflow stay on this machine: loopback only, no usage reporting.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def gaussian_images() -> TensorDataset:
    """384 random 1x8x8 images with labels: enough samples that no unit is dead."""
    gen = torch.Generator().manual_seed(123)
    x = torch.randn(384, 1, 8, 8, generator=gen)
    y = torch.randint(0, 10, (384,), generator=gen)
    return TensorDataset(x, y)


@pytest.fixture(scope="session")
def ray_local():
    """One loopback-only local Ray for the whole session (2 CPUs, like CI).

    Multi-node tests shut it down to start their own ``Cluster``; this fixture then starts it
    again on next use, so test order never matters.
    """
    from repair_dist.distributed import init_local_ray

    init_local_ray(num_cpus=2, object_store_memory=200 * 1024**2)
    yield
    import ray

    from repair_dist.distributed import shutdown_pools

    shutdown_pools()
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_ready(ray_local):
    """Per module: make sure the session's local Ray is up (a multi-node test may have stopped it)."""
    import ray

    from repair_dist.distributed import init_local_ray

    if not ray.is_initialized():
        init_local_ray(num_cpus=2, object_store_memory=200 * 1024**2)
    return ray


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory):
    """An empty, fully migrated MLflow sqlite store, made once per session.

    Creating a store runs MLflow's migrations (seconds); tests copy this file instead.
    """
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_root(tmp_path, mlflow_template):
    """A fresh results root whose ``mlflow.db`` is a copy of the template store.

    ``repair_dist.sweep.tracking.default_tracking_uri(mlflow_root)`` is its tracking URI.
    """
    import shutil

    root = tmp_path / "results"
    root.mkdir()
    shutil.copyfile(mlflow_template, root / "mlflow.db")
    return root


@pytest.fixture(autouse=True, scope="module")
def _release_cached_pools():
    """A module's ``workers=N`` passes cache pools that hold CPUs; a later module that runs
    Ray Tune directly (not through ``run_sweep``, which releases them) would wait for them."""
    yield
    import sys

    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        from repair_dist.distributed import release_cached_pools

        release_cached_pools()
