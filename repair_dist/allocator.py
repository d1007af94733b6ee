"""The sweep driver's native memory: flat in the number of trials.

The driver reads Parquet on a background thread (each finished trial's rows, for its MLflow
run) while Tune's controller and MLflow's SQL writer allocate on others, and it compacts and
summarises the tables once when the sweep ends. Which allocator pyarrow uses for those buffers
decides whether the driver's resident memory stays flat. Measured on a 2,520-trial sweep (the
driver's RSS at each of the publisher's compactions, from the 512th to the 2,304th trial; in-run
compactions in a child process, see :mod:`repair_dist.sweep.compaction`):

* mimalloc, the Linux wheels' default: +86 KB per trial. It keeps freed pages in the heap of
  the thread that used them.
* the system allocator (glibc): +4.2 KB per trial. Arrow's aligned buffers interleave with the
  other threads' small allocations; glibc's free bytes grew from 8 to 20 MB while its live bytes
  stayed at 80 MB (fragmentation; ``malloc_trim`` cannot return partly used pages).
* jemalloc: +1.0 and +1.2 KB per trial (two runs). Arrow's buffers live in their own arenas.

So on Linux, whose pyarrow wheels are built with jemalloc, the command line asks for jemalloc;
elsewhere for the system allocator (macOS and Windows wheels have no jemalloc, and an unknown
name only makes Arrow warn and fall back). pyarrow fixes its allocator when it is imported
(``ARROW_DEFAULT_MEMORY_POOL``; ``pyarrow.set_memory_pool`` only changes the pool of pyarrow's
Python functions, not the one its scanners and Parquet readers use), so the command line, which
every sweep script goes through, calls :func:`prefer_arrow_allocator` before anything imports
pyarrow. The driver moves kilobytes of rows, so the allocator's speed does not matter there; a
user's own choice of the variable wins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

#: pyarrow's own switch, read once when pyarrow is imported.
POOL_VARIABLE = "ARROW_DEFAULT_MEMORY_POOL"
#: The allocator the command line asks pyarrow for (see the module docstring).
ARROW_POOL = "jemalloc" if sys.platform.startswith("linux") else "system"


def prefer_arrow_allocator() -> None:
    """Ask for :data:`ARROW_POOL` unless the user chose an allocator. Takes effect only if
    pyarrow is not imported yet in this process (and in the processes it starts)."""
    os.environ.setdefault(POOL_VARIABLE, ARROW_POOL)


@functools.cache
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """glibc's ``malloc_trim``, or None (another C library: nothing to hand back)."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def release_freed_memory() -> None:
    """Hand the pages a burst of work freed back to the system: pyarrow's pool (jemalloc
    purges its arenas) and the C heap (glibc ``malloc_trim``).

    Called after each compaction and when a sweep's tables have been compacted and
    summarised: freed pages are reused, but stay counted in the driver's resident memory
    until released. Costs about a millisecond; pyarrow is left alone if nothing imported it.
    """
    arrow = sys.modules.get("pyarrow")
    if arrow is not None:
        arrow.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


__all__ = ["ARROW_POOL", "POOL_VARIABLE", "prefer_arrow_allocator", "release_freed_memory"]
