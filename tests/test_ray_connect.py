"""Joining a Ray cluster where nothing listens fails in seconds with one line (issue 14,
item 7); Ray itself retries with a repeating warning for minutes."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from repair_dist.distributed.ray_init import RayUnreachable, check_reachable


def _dead_port() -> int:
    with socket.socket() as s:  # bound, then closed: nothing listens there any more
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_an_address_where_nothing_listens_is_refused_at_once(scheme: str) -> None:
    address = f"{scheme}127.0.0.1:{_dead_port()}"
    started = time.monotonic()
    with pytest.raises(RayUnreachable, match=f"no Ray cluster at {address} \\(connection refused"):
        check_reachable(address, timeout=5)
    assert time.monotonic() - started < 5


def test_a_listening_address_passes_and_auto_is_left_to_ray() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_reachable(f"127.0.0.1:{server.getsockname()[1]}", timeout=5)
    check_reachable("auto")  # no host:port to probe: Ray resolves it


def test_the_cli_gives_one_line_and_exit_2_instead_of_hanging(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "repair_dist.cli",
            "quickstart",
            "--smoke",
            "--address",
            "127.0.0.1:1",
            "--root",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and "no Ray cluster at 127.0.0.1:1" in lines[0], proc.stderr[-3000:]
