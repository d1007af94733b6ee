"""Temporary directories that killed writers leave in a checkpoint store are cleaned on open,
never those of a live writer or a fresh one."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from repair_dist.store import QUARANTINE, STALE_TEMP_SECONDS, CheckpointStore

REPO = Path(__file__).resolve().parents[1]

WRITER = textwrap.dedent(
    """
    import signal
    import repair_dist as rd
    from repair_dist.store import CheckpointStore
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it: die as if killed
    net = rd.build_model("mlp", in_shape=(1, 8, 8), num_classes=10, width=512, depth=3)
    CheckpointStore({store!r}).save("k0", net, {{}})
    """
)


def _killed_mid_write(store: Path) -> Path:
    """A real writer killed while writing its weights (SIGXFSZ past a file size limit)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    proc = subprocess.run(
        [sys.executable, "-c", WRITER.format(store=str(store))],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        preexec_fn=limit,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGXFSZ, proc.stderr[-2000:]
    (left,) = [p for p in store.iterdir() if p.name.startswith(".k0.tmp-")]
    return left


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    for p in [path, *path.rglob("*")]:
        os.utime(p, (then, then))


def test_stale_temporaries_of_dead_writers_are_removed_when_the_store_opens(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    dead = _killed_mid_write(store)
    assert any(dead.iterdir())  # a half-written weights file
    fresh = store / f".k1.tmp-{os.getpid() + 10**6}-{'a' * 12}"  # dead pid, just written
    live = store / f".k2.old-{os.getpid()}-{'b' * 8}"  # this process is its live writer
    other = store / ".not-ours"
    for d in (fresh, live, other, store / QUARANTINE / "k3-20260101T000000Z"):
        d.mkdir(parents=True)
        (d / "weights.safetensors").write_bytes(b"x")
    for d in (dead, live, other):
        _age(d, 2 * STALE_TEMP_SECONDS)

    CheckpointStore(store)  # opening the store cleans
    assert not dead.exists()
    assert fresh.exists() and live.exists() and other.exists() and (store / QUARANTINE).exists()
    assert CheckpointStore(store).clean_stale_temporaries() == []  # nothing left to clean

    _age(fresh, 2 * STALE_TEMP_SECONDS)
    assert CheckpointStore(store).clean_stale_temporaries() == []  # opening cleaned it already
    assert not fresh.exists() and live.exists()
