"""The sweep driver's native memory: flat in the number of trials.

The driver reads and writes Parquet from several threads: the publisher compacts the running
sweep's tables every few hundred units, and the end of the sweep compacts again while the
figures read the tables. pyarrow's default allocator in the Linux wheels is mimalloc, which
keeps freed pages in the heap of the thread that used them; every compaction's scanner threads
left 15-30 MB behind, so the driver grew by about 50 KB per trial. With the system allocator
those pages are reused, and :func:`release_freed_memory` hands them back to the system after
each compaction (see the README's sweep-driver table).

pyarrow fixes its allocator when it is imported (``ARROW_DEFAULT_MEMORY_POOL``;
``pyarrow.set_memory_pool`` only changes the pool of pyarrow's Python functions, not the one
its scanners and Parquet readers use). So the command line, which every sweep script goes
through, calls :func:`prefer_system_allocator` before anything imports pyarrow. The driver
moves kilobytes of rows, so the allocator's speed does not matter there; a user's own choice
of the variable wins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

#: pyarrow's own switch, read once when pyarrow is imported.
POOL_VARIABLE = "ARROW_DEFAULT_MEMORY_POOL"


def prefer_system_allocator() -> None:
    """Ask for pyarrow's system allocator unless the user chose one. Takes effect only if
    pyarrow is not imported yet in this process (and in the processes it starts)."""
    os.environ.setdefault(POOL_VARIABLE, "system")


@functools.cache
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """glibc's ``malloc_trim``, or None (another C library: nothing to hand back)."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def release_freed_memory() -> None:
    """Hand the heap pages a burst of work freed back to the system (glibc ``malloc_trim``).

    Called after each compaction: with the system allocator the freed pages are reused, but
    stay counted in the driver's resident memory until trimmed, and a compaction frees about
    20 MB at once. Costs about a millisecond; a no-op where the C library has no such call.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


__all__ = ["POOL_VARIABLE", "prefer_system_allocator", "release_freed_memory"]
