"""Where a pass runs: in this process (``workers=1``) or sharded over a pool of Ray actors.

Science modules call :func:`run_pass` and never import Ray; ``workers`` may be an int (1 = in
process, N = a Ray actor pool of N workers) or an executor object with the same ``run`` method
(e.g. the pool of a Tune trial), so one code path serves notebooks, tests and clusters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from torch import nn

from ..data.batches import BatchPlan


@runtime_checkable
class Executor(Protocol):
    def run(
        self, fn: Callable[..., Any], nets: Sequence[nn.Module], data: BatchPlan, **kwargs: Any
    ) -> Any: ...


class LocalExecutor:
    """Runs a pass over every batch of the plan in this process."""

    def run(
        self, fn: Callable[..., Any], nets: Sequence[nn.Module], data: BatchPlan, **kwargs: Any
    ) -> Any:
        return fn(*nets, batches=data.batches(), **kwargs)


Workers = int | Executor


def resolve_executor(workers: Workers = 1) -> Executor:
    if isinstance(workers, Executor):
        return workers
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int or an executor (got {workers!r})")
    if workers == 1:
        return LocalExecutor()
    from ..distributed import pool_of_size  # only the distributed layer imports Ray

    return pool_of_size(workers)


def run_pass(
    fn: Callable[..., Any],
    nets: Sequence[nn.Module],
    data: BatchPlan,
    workers: Workers = 1,
    **kwargs: Any,
) -> Any:
    """Run ``fn(*nets, batches=..., **kwargs)`` over ``data`` and return the merged result."""
    return resolve_executor(workers).run(fn, nets, data, **kwargs)
