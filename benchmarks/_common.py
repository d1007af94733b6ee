"""Helpers shared by the benchmarks: machine description, timing, tables and JSON output.

Benchmarks report RATIOS of timings taken in the same run (never absolute-time assertions):
on a shared machine absolute times drift between runs, ratios measured side by side much less.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any


def cpu_model() -> str:
    """``platform.processor()`` is often empty on Linux; fall back to /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def machine_info() -> dict[str, Any]:
    import ray
    import torch

    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    return {
        "cpu_count": os.cpu_count(),
        "processor": platform.processor(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "torch_threads": torch.get_num_threads(),
        "loadavg_1m_at_start": round(load, 2),
    }


def print_machine(info: dict[str, Any]) -> None:
    print(
        f"machine: cpu_count={info['cpu_count']} "
        f"platform.processor()={info['processor']!r} cpu_model={info['cpu_model']!r}\n"
        f"         python {info['python']}, torch {info['torch']}, ray {info['ray']}, "
        f"torch threads {info['torch_threads']}, load avg (1 min) at start "
        f"{info['loadavg_1m_at_start']}"
    )


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def interleaved_medians(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, calls interleaved (a, b, c, a, b, c, ...).

    Interleaving spreads the load other processes put on a shared machine evenly over the
    functions compared, so their ratio is steadier than timing each in a block.
    """
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn)[0])
    return {k: statistics.median(v) for k, v in times.items()}


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    return statistics.median(timed(fn)[0] for _ in range(repeats))


def fmt(x: float, digits: int = 3) -> str:
    if x != x:  # nan
        return "n/a"
    if x == 0 or 1e-3 <= abs(x) < 1e5:
        return f"{x:.{digits}g}" if abs(x) < 1 else f"{x:,.{max(digits - 1, 1)}f}"
    return f"{x:.{digits}g}"


def print_table(title: str, rows: Sequence[Sequence[Any]], header: Sequence[str]) -> None:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    line = "  ".join("-" * w for w in widths)
    print(line)
    for j, r in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if j == 0:
            print(line)
    print(line)
    sys.stdout.flush()


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=False, default=_jsonable)
    print(f"\nwrote {path}")


def _jsonable(x: Any) -> Any:
    try:
        return float(x)
    except (TypeError, ValueError):
        return str(x)
