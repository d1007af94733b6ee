"""One run per (root, sweep): two real runs at once, a killed holder, and object-store leases."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pyarrow import fs as pafs
from test_sweep_e2e import assert_each_trial_once, tiny_sweep

from repair_dist.location import Location
from repair_dist.sweep.lock import Holder, SweepLock, SweepLocked
from repair_dist.sweep.tracking import default_tracking_uri

pytestmark = pytest.mark.timeout(300)
REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}

SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from test_sweep_e2e import tiny_sweep

    def build_sweep(smoke=False):
        return tiny_sweep("twice", methods=("activation",))
    """
)


def test_two_runs_started_at_once_on_one_root_do_the_work_once(tmp_path):
    script = tmp_path / "twice.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent)))
    root = tmp_path / "results"
    cmd = [sys.executable, "-m", "repair_dist.cli", "sweep", str(script), "--root", str(root)]
    procs = [
        subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=280) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], (codes, [e[-2000:] for _, e in outs])
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    lines = outs[loser][1].strip().splitlines()
    assert len(lines) == 1, lines  # one line, before Ray started
    assert "is already running" in lines[0] and f"pid {procs[winner].pid}," in lines[0]
    assert str(root) in lines[0]
    sweep = tiny_sweep("twice", methods=("activation",))
    assert_each_trial_once(str(root), sweep, default_tracking_uri(root))  # MLflow too


HOLD = textwrap.dedent(
    """
    import sys, time
    from repair_dist.sweep.lock import SweepLock
    SweepLock({root!r}, "held").acquire()
    print("held", flush=True)
    time.sleep(300)
    """
)


def test_a_killed_holder_never_blocks_the_next_run(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD.format(root=str(tmp_path))],
        env=ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(SweepLocked, match=rf"pid {proc.pid}, started .*frees itself"):
            SweepLock(tmp_path, "held").acquire()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    with SweepLock(tmp_path, "held") as lock:  # the kernel dropped the dead run's lock
        assert Holder.parse((tmp_path / "locks" / "held.lock").read_bytes()) == lock.holder
    with SweepLock(tmp_path, "held"):  # and a released lock is free again
        pass
    with SweepLock(tmp_path, "held"), SweepLock(tmp_path, "other"):  # sweeps are independent
        pass


def _object_store(tmp_path: Path) -> Location:
    # Not a LocalFileSystem: the lock takes the object-store path (a lease), as on s3:// or gs://.
    (tmp_path / "bucket").mkdir()
    return Location.of(
        "repair", pafs.SubTreeFileSystem(str(tmp_path / "bucket"), pafs.LocalFileSystem())
    )


def test_object_store_leases_refuse_a_live_holder_and_take_over_a_dead_one(tmp_path):
    root = _object_store(tmp_path)
    lease = tmp_path / "bucket" / "repair" / "locks" / "s.lock"
    first = SweepLock(root, "s", lease_s=0.8, settle_s=0.05).acquire()
    try:
        assert Holder.parse(lease.read_bytes()).token == first.holder.token
        with pytest.raises(SweepLocked, match=r"already running .*last heartbeat \d+ s ago"):
            SweepLock(root, "s", lease_s=0.8, settle_s=0.05).acquire()
        beat = first.holder.heartbeat
        time.sleep(0.5)  # the holder renews its lease every lease_s / 4
        assert Holder.parse(lease.read_bytes()).heartbeat > beat
    finally:
        first.release()
    assert not lease.exists()

    dead = Holder("elsewhere", 4242, "2026-01-01T00:00:00+00:00", "dead", time.time() - 5)
    lease.write_bytes(dead.dump())  # a run killed 5 s ago, leases last 0.8 s
    with SweepLock(root, "s", lease_s=0.8, settle_s=0.05) as taker:
        assert Holder.parse(lease.read_bytes()).token == taker.holder.token


def test_two_object_store_runs_starting_together_get_one_winner(tmp_path):
    root = _object_store(tmp_path)
    a = SweepLock(root, "s", settle_s=0.3)
    b = SweepLock(root, "s", settle_s=0.3)
    import threading

    outcome: dict[str, object] = {}

    def take(name: str, lock: SweepLock) -> None:
        try:
            outcome[name] = lock.acquire()
        except SweepLocked as e:
            outcome[name] = e

    threads = [threading.Thread(target=take, args=x) for x in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [n for n, v in outcome.items() if isinstance(v, SweepLock)]
    try:
        assert len(won) == 1, outcome
    finally:
        a.release()
        b.release()
