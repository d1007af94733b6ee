"""The sweep driver's native memory: flat in the number of trials.

The driver reads and writes Parquet from several threads: the publisher compacts the running
sweep's tables every few hundred units, and the end of the sweep compacts again while the
figures read the tables. pyarrow's default allocator in the Linux wheels is mimalloc, which
keeps freed pages in the heap of the thread that used them; every compaction's scanner threads
left 15-30 MB behind, so the driver grew by about 50 KB per trial. With the system allocator
those pages are reused (see the README's sweep-driver table).

pyarrow fixes its allocator when it is imported (``ARROW_DEFAULT_MEMORY_POOL``;
``pyarrow.set_memory_pool`` only changes the pool of pyarrow's Python functions, not the one
its scanners and Parquet readers use). So the command line, which every sweep script goes
through, calls :func:`prefer_system_allocator` before anything imports pyarrow. The driver
moves kilobytes of rows, so the allocator's speed does not matter there; a user's own choice
of the variable wins.
"""

from __future__ import annotations

import os
import sys

#: pyarrow's own switch, read once when pyarrow is imported.
POOL_VARIABLE = "ARROW_DEFAULT_MEMORY_POOL"


def prefer_system_allocator() -> bool:
    """Ask for pyarrow's system allocator unless the user chose one. Returns whether it will
    take effect in this process (False once pyarrow is imported: call this first)."""
    os.environ.setdefault(POOL_VARIABLE, "system")
    return "pyarrow" not in sys.modules


__all__ = ["POOL_VARIABLE", "prefer_system_allocator"]
