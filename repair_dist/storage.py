"""Storage faults as one line naming the path: a full disk, a read-only or unwritable directory.

Why: a write that fails deep inside pyarrow, safetensors or a Ray worker surfaces as a
traceback (or, once a half-written file is read back, as ``EOFError: Ran out of input``), and
the user cannot tell which path to fix. :class:`StorageError` is still an ``OSError`` (callers
that catch those keep working) but its message is one line: what was written, where, why, and
what to do. :func:`check_writable` is the same check made up front, before a sweep starts.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Iterator

from .location import Location

#: errnos that mean "this storage cannot take the write", not a bug: fix the disk, then rerun.
STORAGE_ERRNOS = frozenset(
    {
        errno.ENOSPC,  # disk full
        errno.EDQUOT,  # quota exceeded
        errno.EFBIG,  # file too large (RLIMIT_FSIZE, filesystem limits)
        errno.EROFS,  # read-only filesystem
        errno.EACCES,  # permission denied
        errno.EPERM,
        errno.ENOTDIR,  # a path component is a file
        errno.EEXIST,  # a file where a directory must be
    }
)
#: Below this much free space a sweep is refused up front (a checkpoint, Tune's state and the
#: MLflow store need room; a sweep that dies on a full disk mid-way helps nobody).
MIN_FREE_BYTES = 64 * 1024**2


class StorageError(OSError):
    """A write failed because of the storage (full, read-only, not permitted); one line."""

    def __str__(self) -> str:  # the line itself, without OSError's "[Errno N]" prefix
        return str(self.strerror) if self.strerror else super().__str__()


def _advice(code: int | None) -> str:
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return "free some space (or raise the quota), then rerun: finished work is kept"
    return "make it writable or choose another path, then rerun: finished work is kept"


def is_storage_error(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in STORAGE_ERRNOS


def as_storage_error(err: OSError, what: str, path: str | os.PathLike) -> StorageError:
    """``err`` as one line: ``cannot write <what> <path>: <reason>; <advice>``."""
    if isinstance(err, StorageError):
        return err
    reason = err.strerror or str(err).strip().splitlines()[0]
    where = err.filename if err.filename and str(err.filename) != os.fspath(path) else None
    at = f" ({where})" if where else ""
    return StorageError(
        err.errno,
        f"cannot write {what + ' ' if what else ''}{os.fspath(path)}{at}: {reason}; "
        f"{_advice(err.errno)}",
    )


@contextlib.contextmanager
def writing(what: str, path: str | os.PathLike) -> Iterator[None]:
    """Turn storage faults raised inside into :class:`StorageError` naming ``path``."""
    try:
        yield
    except OSError as err:
        if not is_storage_error(err):
            raise
        raise as_storage_error(err, what, path) from err


def _blocking_file(path: str) -> str | None:
    """The nearest existing ancestor of ``path`` when it is a file (so nothing can go below)."""
    current = os.path.abspath(path)
    while True:
        if os.path.exists(current):
            return current if not os.path.isdir(current) else None
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent


def check_writable(what: str, location: Location) -> str | None:
    """One problem line when ``location`` cannot take writes (or has too little room); else None.

    Creates the directory, writes and removes a small probe file: exactly what the sweep will
    do, so permissions, read-only mounts, a file in the way and a full disk all show here,
    before Ray starts, instead of inside every trial.
    """
    uri = location.uri
    if location.local and (blocker := _blocking_file(location.path)) is not None:
        return f"{what} {uri}: {blocker} is a file, not a directory"
    probe = location.join(f".write-probe-{uuid.uuid4().hex[:12]}")
    created = _missing_top(location.path) if location.local else None
    try:
        location.makedirs()
        with location.fs.open_output_stream(probe) as out:
            out.write(b"repair-dist write probe\n")
        location.fs.delete_file(probe)
    except OSError as err:
        reason = err.strerror or (str(err).strip().splitlines() or [type(err).__name__])[0]
        with contextlib.suppress(OSError):
            location.fs.delete_file(probe)
        _remove_empty(location.path, created)
        return f"{what} {uri}: not writable ({reason})"
    try:
        return _free_space_problem(what, location)
    finally:
        _remove_empty(location.path, created)


def _remove_empty(path: str, top: str | None) -> None:
    """Remove the directories a check made, ``path`` up to ``top``, while they are empty.

    Only empty ones: a run starting beside this one may already have put its lock there.
    """
    if top is None:
        return
    current = os.path.abspath(path)
    while True:
        try:
            os.rmdir(current)
        except OSError:
            return
        if current == top:
            return
        current = os.path.dirname(current)


def _missing_top(path: str) -> str | None:
    """The outermost directory of ``path`` that does not exist yet (None if it all exists)."""
    top = None
    current = os.path.abspath(path)
    while not os.path.exists(current):
        top = current
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return top


def _free_space_problem(what: str, location: Location) -> str | None:
    uri = location.uri
    if location.local:
        free = shutil.disk_usage(location.path).free
        if free < MIN_FREE_BYTES:
            return (
                f"{what} {uri}: only {free / 1024**2:.1f} MiB free on its disk "
                f"(at least {MIN_FREE_BYTES // 1024**2} MiB needed); free some space"
            )
    return None


def disk_full(what: str, location: Location) -> str | None:
    """One line when the local disk under ``location`` is (nearly) full; else None.

    For failures that hide the full disk behind another error (a truncated state file read
    back as ``EOFError``): the sweep then ends with this line instead of the symptom.
    """
    if not location.local:
        return None
    path = location.path
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return None
    if free >= MIN_FREE_BYTES:
        return None
    return (
        f"{what} {location.uri}: its disk is full ({free / 1024**2:.1f} MiB free); "
        "free some space, then rerun: finished work is kept"
    )


def location_problem(what: str, uri: object) -> tuple[Location | None, str | None]:
    """(Location, None) for a usable URI, else (None, one problem line)."""
    try:
        return Location.of(uri), None  # type: ignore[arg-type]
    except (ValueError, TypeError, OSError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return None, f"{what} {uri!r}: not a usable path or URI ({first})"


__all__ = [
    "MIN_FREE_BYTES",
    "STORAGE_ERRNOS",
    "StorageError",
    "as_storage_error",
    "check_writable",
    "disk_full",
    "is_storage_error",
    "location_problem",
    "writing",
]
