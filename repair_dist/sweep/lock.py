"""One run per (results root, sweep): a lock that a killed run cannot leave behind for good.

Why a lock and not "make two runs safe": two drivers on one sweep would each schedule every
unfinished trial (resume is by content, read once before each stage), so both train and merge
everything, and their MLflow logging races (check-then-create of child runs, de-duplication
from a stale snapshot). Work done twice is never useful, so the second run is refused with one
line naming the holder instead.

The lock lives at ``<root>/locks/<sweep>.lock`` and holds the holder's host, pid and start time
(JSON), which is what the refusal names. How a dead holder is recognised depends on where the
root is:

* **Local roots** (any path the kernel can lock, NFS included): ``fcntl.flock`` on the lock
  file. The kernel drops the lock when the holding process ends, however it ends (SIGKILL,
  OOM, power loss of a client), so a stale lock cannot exist and no pid (which can be reused)
  is ever trusted. The file itself is never deleted: deleting a lock file lets a third process
  lock a new inode while a second still holds the old one.
* **Object stores** (``s3://``, ``gs://``, any non-local pyarrow filesystem) have no locks and
  no atomic create-if-absent in pyarrow, so the lock is a *lease*: the holder rewrites the file
  with a fresh ``heartbeat`` time every ``lease_s / 4`` seconds from a daemon thread; a lease
  whose heartbeat is older than ``lease_s`` belongs to a dead run and is taken over. Two runs
  starting together both write their token, wait ``settle_s`` and read it back: the store keeps
  the last write (read-after-write is strong on S3 and GCS), so exactly one sees its own token
  and the other is refused. This assumes the hosts' clocks agree to well within ``lease_s``
  (NTP) and that no run stalls between its check and its write for longer than ``settle_s``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from ..location import Location, check_name

log = logging.getLogger(__name__)

#: Where locks live below a results root.
LOCK_DIR = "locks"
#: Errors of ``flock`` on filesystems that cannot lock (then the lease is used).
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS}


class SweepLocked(RuntimeError):
    """Another live run holds the (root, sweep) lock; the message names it."""


@dataclass
class Holder:
    """Who holds a lock: written into the lock file, read back for the refusal."""

    host: str
    pid: int
    started: str  # ISO 8601, UTC
    token: str
    heartbeat: float  # time.time() of the last renewal (leases only)

    @classmethod
    def me(cls) -> Holder:
        now = time.time()
        started = dt.datetime.fromtimestamp(now, dt.timezone.utc).isoformat(timespec="seconds")
        return cls(socket.gethostname(), os.getpid(), started, uuid.uuid4().hex, now)

    @classmethod
    def parse(cls, raw: bytes) -> Holder | None:
        try:
            d = json.loads(raw.decode("utf-8"))
            return cls(
                str(d["host"]),
                int(d["pid"]),
                str(d["started"]),
                str(d["token"]),
                float(d["heartbeat"]),
            )
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return None  # empty (being written) or not ours

    def dump(self) -> bytes:
        return (json.dumps(asdict(self), sort_keys=True) + "\n").encode()

    def describe(self) -> str:
        return f"host {self.host}, pid {self.pid}, started {self.started}"


class SweepLock:
    """The lock of one sweep on one results root; use as a context manager.

    ``acquire`` raises :class:`SweepLocked` (one line naming the holder) when a live run holds
    it. ``lease_s`` and ``settle_s`` matter only for non-local roots (see the module docstring).
    """

    def __init__(
        self,
        root: str | os.PathLike | Location,
        sweep: str,
        *,
        lease_s: float = 120.0,
        settle_s: float = 2.0,
    ) -> None:
        self.root = Location.of(root)
        self.sweep = check_name("sweep", sweep)
        self.lease_s, self.settle_s = float(lease_s), float(settle_s)
        self.location = self.root.child(LOCK_DIR)
        self.path = self.location.join(f"{self.sweep}.lock")
        self.uri = f"{self.location.uri}/{self.sweep}.lock"
        self.holder = Holder.me()
        self.lost = False  # a lease taken over while we still ran (a stall longer than lease_s)
        self._fd: int | None = None
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"SweepLock({self.uri!r})"

    def __enter__(self) -> SweepLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def _refuse(self, other: Holder | None, extra: str) -> SweepLocked:
        who = other.describe() if other is not None else "a process that is just starting"
        return SweepLocked(
            f"sweep {self.sweep!r} is already running on {self.root.uri} ({who}); "
            f"wait for it to finish or stop it, then rerun ({extra}; lock {self.uri})"
        )

    # -- acquire / release -----------------------------------------------------------------

    def acquire(self) -> SweepLock:
        """Take the lock or raise :class:`SweepLocked`; returns self."""
        self.location.makedirs()
        if self.root.local and self._flock():
            return self
        self._take_lease()
        return self

    def release(self) -> None:
        """Give the lock up (no error when not held)."""
        if self._fd is not None:
            import fcntl

            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)  # no stale holder text for the next reader
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._stop is not None and self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._stop = self._thread = None
            current = self._read()
            if current is not None and current.token == self.holder.token:
                with contextlib.suppress(OSError):
                    self.root.fs.delete_file(self.path)

    # -- local: flock ----------------------------------------------------------------------

    def _flock(self) -> bool:
        """True when locked; False when this filesystem cannot flock (use a lease)."""
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._refuse(
                self._read_held(), "the lock frees itself when that run ends"
            ) from None
        except OSError as e:
            os.close(fd)
            if e.errno in _NO_FLOCK:
                return False
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, self.holder.dump(), 0)
        os.fsync(fd)
        self._fd = fd
        return True

    def _read_held(self) -> Holder | None:
        # The holder writes its name right after locking; give it a moment to land.
        for _ in range(20):
            if (holder := self._read()) is not None:
                return holder
            time.sleep(0.05)
        return None

    # -- object stores: lease with heartbeat -------------------------------------------------

    def _read(self) -> Holder | None:
        try:
            with self.root.fs.open_input_stream(self.path) as f:
                return Holder.parse(f.read())
        except (FileNotFoundError, OSError):
            return None

    def _write(self) -> None:
        self.holder.heartbeat = time.time()
        with self.root.fs.open_output_stream(self.path) as out:
            out.write(self.holder.dump())

    def _live(self, other: Holder | None) -> bool:
        return (
            other is not None
            and other.token != self.holder.token
            and time.time() - other.heartbeat < self.lease_s
        )

    def _take_lease(self) -> None:
        other = self._read()
        if self._live(other):
            raise self._refuse(other, self._lease_note(other))
        if other is not None and other.token != self.holder.token:
            log.warning(
                "taking over the lock of sweep %r from a dead run (%s; no heartbeat for %.0f s)",
                self.sweep,
                other.describe(),
                time.time() - other.heartbeat,
            )
        self._write()
        time.sleep(self.settle_s)  # a run starting together with us writes within this time
        winner = self._read()
        if winner is None or winner.token != self.holder.token:
            raise self._refuse(winner, self._lease_note(winner))
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, args=(self._stop,), name=f"lock-{self.sweep}", daemon=True
        )
        self._thread.start()

    def _lease_note(self, other: Holder | None) -> str:
        age = f"last heartbeat {time.time() - other.heartbeat:.0f} s ago; " if other else ""
        return f"{age}a lease without heartbeat for {self.lease_s:.0f} s is taken over"

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(self.lease_s / 4):
            current = self._read()
            if current is not None and current.token != self.holder.token:
                self.lost = True
                log.warning(
                    "lock of sweep %r was taken over by %s (this run stalled for more than %.0f s)",
                    self.sweep,
                    current.describe(),
                    self.lease_s,
                )
                return
            try:
                self._write()
            except OSError as e:  # a blip of the store: the next beat tries again
                log.warning("could not renew the lock %s: %s", self.uri, e)


__all__ = ["LOCK_DIR", "Holder", "SweepLock", "SweepLocked"]
