"""Start a local Ray bound to loopback, or join an existing cluster.

Local Ray binds to the machine's LAN address unless Ray's "local cluster" branch is forced off
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read by ``ray._private.ray_constants`` at import).
:func:`init_local_ray` sets the environment before Ray is imported *and* patches the constant for
the duration of ``ray.init`` (in case Ray was imported earlier), passes
``_node_ip_address="127.0.0.1"`` and ``address="local"`` (never silently joins another cluster
found through ``/tmp/ray/ray_current_cluster``), and keeps the dashboard off (or on 127.0.0.1).
With ray 2.60 this binds the GCS, raylet, object manager, workers and the runtime-env agent to
127.0.0.1 (checked with ``ss -ltnp``); usage statistics are never sent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

# Before Ray is imported anywhere through this package: no usage reporting, loopback branch.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import ray  # noqa: E402

from .._pythonpath import pythonpath_with_package  # noqa: E402

LOOPBACK = "127.0.0.1"
#: Seconds that joining a cluster waits for its address to accept a connection.
CONNECT_TIMEOUT_S = 10.0


@contextlib.contextmanager
def _loopback_branch() -> Iterator[None]:
    """Make Ray resolve this node's address to 127.0.0.1 while it starts."""
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def _export_package_path() -> None:
    """Workers inherit the environment of the local raylet: let them import ``repair_dist``."""
    os.environ["PYTHONPATH"] = pythonpath_with_package(os.environ.get("PYTHONPATH"))


def init_local_ray(num_cpus: int | None = None, **kw: Any) -> Any:
    """Start (or reuse) a local, loopback-only Ray instance; returns Ray's context.

    ``num_cpus`` defaults to ``os.cpu_count()``; ``kw`` go to ``ray.init`` (e.g. ``num_gpus``,
    ``object_store_memory``, ``include_dashboard=True`` - then served on 127.0.0.1 only).
    If Ray is already initialised in this process it is reused as it is.
    """
    if ray.is_initialized():
        return ray.get_runtime_context()
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    _export_package_path()
    options: dict[str, Any] = {
        "address": "local",
        "num_cpus": num_cpus if num_cpus is not None else (os.cpu_count() or 1),
        "include_dashboard": False,
        "dashboard_host": LOOPBACK,
        "_node_ip_address": LOOPBACK,
        "ignore_reinit_error": True,
        "logging_level": logging.WARNING,
        "log_to_driver": False,
        "configure_logging": True,
    }
    options.update(kw)
    if options.get("dashboard_host") not in (LOOPBACK, "localhost", "::1"):
        raise ValueError("init_local_ray never exposes the dashboard beyond loopback")
    with _loopback_branch(), _quiet_token_notice():
        return ray.init(**options)


class _DropTokenNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Token authentication is enabled" not in record.getMessage()


@contextlib.contextmanager
def _quiet_token_notice() -> Iterator[None]:
    """Ray 2.60 turns token authentication on for a new local cluster (we keep it on: it is a
    guard even on loopback) and warns that it did, in every sweep's output; the notice asks
    nothing of the user, so the local start drops that one line."""
    notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
    quiet = _DropTokenNotice()
    notice.addFilter(quiet)
    try:
        yield
    finally:
        notice.removeFilter(quiet)


class RayUnreachable(ConnectionError):
    """Nothing accepts connections at a Ray address (one line; Ray itself retries for minutes)."""


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``host:port`` or ``ray://host:port``; None for ``auto``/``local``."""
    rest = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise :class:`RayUnreachable` unless ``address`` accepts a TCP connection in ``timeout``.

    Why: ``ray.init(address=...)`` on an address where nothing listens does not fail; it
    retries with a repeating warning for minutes. A plain TCP connect answers in milliseconds
    (refused) or at most ``timeout`` seconds (a host that drops packets).
    """
    target = _host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as err:
        why = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise RayUnreachable(
            f"no Ray cluster at {address} ({why.lower()}, waited up to {timeout:g} s): "
            "start one with `ray start --head`, or fix --address / $RAY_ADDRESS"
        ) from err


def connect(address: str = "auto", **kw: Any) -> Any:
    """Join an existing cluster: ``"auto"`` (this node runs Ray), ``host:port`` or ``ray://``.

    Reuses the connection if Ray is already initialised. The cluster must have ``repair_dist``
    importable on its nodes (installed, or shipped with ``runtime_env={"py_modules": ...}``).
    """
    if ray.is_initialized():
        return ray.get_runtime_context()
    check_reachable(address)
    options: dict[str, Any] = {
        "address": address,
        "ignore_reinit_error": True,
        "logging_level": logging.WARNING,
        "log_to_driver": False,
    }
    options.update(kw)
    host = address.split("://")[-1].rsplit(":", 1)[0]
    if host in (LOOPBACK, "localhost"):
        _export_package_path()
        with _loopback_branch():
            return ray.init(**options)
    return ray.init(**options)


def ensure_ray() -> None:
    """Connect to ``$RAY_ADDRESS`` if set, else start a local loopback instance (idempotent)."""
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        connect(address)
    else:
        init_local_ray()
