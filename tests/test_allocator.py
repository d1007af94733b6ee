"""The sweep driver's pyarrow allocator (see :mod:`repair_dist.allocator`).

pyarrow fixes its allocator on import, so this runs fresh interpreters: the command line (and
every sweep script, which imports it first) gets jemalloc on Linux (the system allocator
elsewhere), without a warning, and a user's own choice of ``ARROW_DEFAULT_MEMORY_POOL`` is kept.
"""

from __future__ import annotations

import os
import subprocess
import sys

from repair_dist.allocator import ARROW_POOL, POOL_VARIABLE

PROBE = "import repair_dist.cli, pyarrow; print(pyarrow.default_memory_pool().backend_name)"


def _backend(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != POOL_VARIABLE}
    if env_value is not None:
        env[POOL_VARIABLE] = env_value
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    assert "unsupported backend" not in out.stderr.lower(), out.stderr  # no fallback warning
    return out.stdout.strip()


def test_the_command_line_gives_pyarrow_its_allocator() -> None:
    assert _backend(None) == ARROW_POOL
    if sys.platform.startswith("linux"):  # the wheels are built with it; measured there
        assert ARROW_POOL == "jemalloc"


def test_a_users_choice_of_allocator_is_kept() -> None:
    assert _backend("mimalloc") == "mimalloc"  # the Linux wheels' own default


TRIM_PROBE = """
from repair_dist.allocator import release_freed_memory

def rss_mb():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024

blocks = [bytearray(60_000) for _ in range(2000)]  # 120 MB from malloc's heap (below mmap)
pin = bytearray(60_000)  # allocated above them: the heap cannot shrink from its top
del blocks
freed = rss_mb()
release_freed_memory()
print(freed, rss_mb())
"""


def test_freed_heap_pages_go_back_to_the_system() -> None:
    out = subprocess.run(
        [sys.executable, "-c", TRIM_PROBE], capture_output=True, text=True, check=True
    )
    freed, trimmed = map(float, out.stdout.split())
    assert freed - trimmed > 80, (freed, trimmed)  # 120 MB freed, still resident until trimmed
