"""PEP 562 lazy attributes for a package's public API (no torch, scipy or Ray at import time).

Why: ``import repair_dist`` (or any submodule, which imports its packages first) used to pull
in torch, scipy and the whole library; a results query or a finished sweep's rerun paid
seconds for names it never touched.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_api(
    package: str, namespace: dict[str, Any], api: Mapping[str, tuple[str, str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` serving ``api`` (name -> (module, attr))."""

    def __getattr__(name: str) -> Any:
        try:
            module, attr = api[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(module, package), attr)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *api})

    return __getattr__, __dir__


__all__ = ["lazy_api"]
