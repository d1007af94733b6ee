"""The ``PYTHONPATH`` a child process needs to import this ``repair_dist``.

Ray workers (through the raylet's environment) and the sweep's compaction child start new
interpreters; when the package is used from a checkout rather than installed, they only find
it if the directory holding it is on their path.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Directory that holds the ``repair_dist`` package.
PACKAGE_PARENT = str(Path(__file__).resolve().parents[1])


def pythonpath_with_package(current: str | None) -> str:
    """``current`` (a ``PYTHONPATH`` value, maybe unset) with :data:`PACKAGE_PARENT` first."""
    parts = [p for p in (current or "").split(os.pathsep) if p]
    if PACKAGE_PARENT in parts:
        return os.pathsep.join(parts)
    return os.pathsep.join([PACKAGE_PARENT, *parts])


__all__ = ["PACKAGE_PARENT", "pythonpath_with_package"]
