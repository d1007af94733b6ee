"""The content-addressed checkpoint store: trained nets keyed by what produced them.

:class:`CheckpointStore` keeps one checkpoint directory (:mod:`repair_dist.checkpoint`) per
key under its root, ``<root>/<key>/``, on any pyarrow filesystem (a local path, ``file://``,
``s3://``, ``gs://`` ...: :class:`~repair_dist.location.Location`). Keys are content hashes
(:meth:`CheckpointStore.endpoint_key`): equal endpoint configs give equal keys, so a rerun or
another sweep finds a trained net instead of training it again, and bumping
:data:`CODE_VERSION` retires every old key at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pyarrow import fs as pafs

from .checkpoint import (
    META_FILE,
    CheckpointError,
    delete_checkpoint,
    is_checkpoint_dir,
    is_intact,
    json_default,
    load_checkpoint,
    read_meta,
    register_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from .location import SAFE_NAME, SAFE_PUNCTUATION, Location

if TYPE_CHECKING:  # only annotations: keys and checks need no torch
    import torch
    from torch import nn

#: Bump whenever training changes what an endpoint config produces: it is part of every
#: endpoint key, so old checkpoints are then simply not found (and retrained) instead of reused.
CODE_VERSION = "1"


#: Where :meth:`CheckpointStore.quarantine` moves corrupt checkpoints (never a key: keys start
#: with a letter or digit).
QUARANTINE = "_quarantine"


class CorruptCheckpoint(CheckpointError):
    """A stored checkpoint is present but damaged; the message names the file and the fix.

    Never "absent": treating damage as absence retrains silently, which throws away registered
    weights (e.g. a torchvision ResNet50) and, on ImageNet, starts an unannounced long training.
    """

    def __init__(self, message: str, *, key: str, registered: bool) -> None:
        super().__init__(message)
        self.key, self.registered = key, registered


#: A temporary directory untouched this long, by a writer that is not alive, is stale.
STALE_TEMP_SECONDS = 3600.0
_TEMPORARY = re.compile(r"^\.[A-Za-z0-9][A-Za-z0-9_.+-]*\.(?:tmp|old)-(?P<pid>\d+)-[0-9a-f]+$")
log = logging.getLogger(__name__)


def _alive(pid: int) -> bool:
    """True when a process ``pid`` exists on this machine (signal 0 probes, sends nothing)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _latest_mtime(path: str) -> float:
    """Newest mtime of a directory and everything in it (a file being written keeps moving)."""
    latest = os.stat(path).st_mtime
    for dirpath, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                latest = max(latest, os.stat(os.path.join(dirpath, name)).st_mtime)
    return latest


def canonical_json(obj: Any) -> str:
    """Key-sorted, compact JSON (tuples as lists): equal configs give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=json_default)


def cached_key(spec: object, compute: Callable[[], str]) -> str:
    """``compute()``, once per frozen ``spec`` and :data:`CODE_VERSION`.

    A sweep asks for each trial's and endpoint's key several times (planning, finished-work
    checks, the publisher); hashing the nested dataclasses every time was half of a finished
    1,260-trial sweep's rerun (1.5 s). The key is kept in the instance's ``__dict__`` (a
    frozen dataclass's fields are untouched, so equality, ``asdict`` and ``replace`` ignore
    it) together with the code version it was made under, so a new version still re-keys.
    """
    cached = spec.__dict__.get("_cached_key")
    if cached is None or cached[0] != CODE_VERSION:
        cached = (CODE_VERSION, compute())
        object.__setattr__(spec, "_cached_key", cached)
    return cached[1]


class CheckpointStore:
    """Checkpoints keyed by content (``<uri>/<key>/``) on a local path or a pyarrow URI.

    ``uri`` is a directory of its own (e.g. ``results/checkpoints`` or
    ``s3://bucket/repair/checkpoints``), or a :class:`~repair_dist.location.Location`.
    ``filesystem`` overrides the filesystem that ``pyarrow.fs.FileSystem.from_uri`` would
    pick (then ``uri`` is a path inside it).
    """

    def __init__(
        self, uri: str | os.PathLike | Location, *, filesystem: pafs.FileSystem | None = None
    ) -> None:
        self.location = Location.of(uri, filesystem)
        self.uri = self.location.uri
        self.clean_stale_temporaries()

    def __repr__(self) -> str:
        return f"CheckpointStore({self.uri!r})"

    @property
    def local(self) -> bool:
        """True on the machine's own filesystem (directories are published by rename)."""
        return self.location.local

    @staticmethod
    def endpoint_key(config: Mapping[str, Any]) -> str:
        """First 16 hex of sha256(canonical JSON of the endpoint config + CODE_VERSION)."""
        payload = canonical_json({"config": dict(config), "code_version": CODE_VERSION})
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def _dir(self, key: str) -> Location:
        if not isinstance(key, str) or not SAFE_NAME.match(key):
            raise ValueError(
                f"checkpoint key {key!r} must start with a letter or digit and contain only "
                f"letters, digits and {' '.join(SAFE_PUNCTUATION)}"
            )
        return self.location.child(key)

    def path(self, key: str) -> str:
        """Where ``key`` lives: a local absolute path, or its URI on a remote filesystem."""
        return self._dir(key).uri

    # -- housekeeping ----------------------------------------------------------------------

    def clean_stale_temporaries(self, max_age_s: float = STALE_TEMP_SECONDS) -> list[str]:
        """Remove temporary directories that killed writers left in a local store; returns them.

        A local save writes ``.<key>.tmp-<pid>-<hex>/`` and renames it into place (and moves a
        replaced checkpoint to ``.<key>.old-<pid>-<hex>/`` for a moment); a writer killed in
        between leaves them behind for good. One is removed only when its writer is not alive
        on this machine (the pid in its name) *and* nothing in it changed for ``max_age_s``
        (a live writer touches its files continuously and renames within milliseconds; the
        age also covers writers on other machines of a shared store, whose pids mean nothing
        here). Object stores have no temporary directories (see :mod:`repair_dist.checkpoint`).
        """
        if not self.local:
            return []
        try:
            entries = list(os.scandir(self.location.path))
        except OSError:  # not created yet, or unreadable: nothing to clean
            return []
        now, removed = time.time(), []
        for entry in entries:
            match = _TEMPORARY.match(entry.name)
            if match is None or not entry.is_dir(follow_symlinks=False):
                continue
            if _alive(int(match["pid"])) or now - _latest_mtime(entry.path) < max_age_s:
                continue
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.path)
        if removed:
            log.info("removed %d stale temporary checkpoint directories", len(removed))
        return removed

    # -- queries ---------------------------------------------------------------------------

    def has(self, key: str) -> bool:
        """True when ``key`` is present and intact (meta.json parses, weights match sha256)."""
        return is_intact(self._dir(key))

    def check(self, key: str) -> bool:
        """True when ``key`` is intact, False when absent; :class:`CorruptCheckpoint` when damaged.

        Absent means no ``meta.json``: a write that never finished (meta.json is published
        last everywhere). A ``meta.json`` with unreadable contents or weights that are missing
        or do not hash to its sha256 is damage, reported with the way out.
        """
        loc = self._dir(key)
        if not loc.is_file(META_FILE):
            return False
        try:
            verify_checkpoint(loc)
        except CheckpointError as err:
            raise self._corrupt(key, err) from None
        return True

    def _corrupt(self, key: str, err: CheckpointError) -> CorruptCheckpoint:
        try:
            meta = read_meta(self._dir(key))
        except CheckpointError:
            meta = {}
        source = meta.get("registered_from") or meta.get("source")
        where = f"{self.uri.rstrip('/')}/{QUARANTINE}/"
        if source:
            fix = (
                f"these weights were registered from {source}: re-register them "
                f"(repair-dist register {source} ...) or move {self.path(key)} aside; "
                "registered weights are never retrained"
            )
        else:
            fix = (
                f"rerun with --retrain-corrupt to move it to {where} and train it again, "
                f"or move {self.path(key)} aside yourself"
            )
        return CorruptCheckpoint(f"{err}; {fix}", key=key, registered=bool(source))

    def quarantine(self, key: str) -> str:
        """Move ``key``'s directory to ``<store>/_quarantine/<key>-<UTC time>``; returns it.

        Kept, not deleted: a damaged file is evidence (a bad disk, a truncated upload).
        """
        src = self._dir(key)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        dst = self.location.child(QUARANTINE, f"{key}-{stamp}")
        fs = self.location.fs
        if self.local:
            fs.create_dir(self.location.join(QUARANTINE), recursive=True)
            fs.move(src.path, dst.path)  # one rename
        else:  # object stores move files, not directories
            for info in fs.get_file_info(pafs.FileSelector(src.path, recursive=True)):
                if info.type == pafs.FileType.File:
                    fs.copy_file(info.path, dst.join(info.path[len(src.path) + 1 :]))
            fs.delete_dir(src.path)
        return dst.uri

    def meta(self, key: str) -> dict:
        """``meta.json`` of ``key`` (not verified); CheckpointError if absent."""
        return read_meta(self._dir(key))

    def keys(self) -> list[str]:
        """Keys with a meta.json (intactness not checked), sorted."""
        fs = self.location.fs
        try:
            infos = fs.get_file_info(pafs.FileSelector(self.location.path, allow_not_found=True))
        except OSError:
            return []
        return sorted(
            info.base_name
            for info in infos
            if is_checkpoint_dir(info)
            and fs.get_file_info(f"{info.path}/{META_FILE}").type == pafs.FileType.File
        )

    # -- writes ----------------------------------------------------------------------------

    def save(self, key: str, net: nn.Module, meta: Mapping[str, Any]) -> dict:
        """Write ``net`` under ``key`` (atomically; replaces). Returns the meta written."""
        return save_checkpoint(net, self._dir(key), {**meta, "key": key})

    def register(
        self,
        key: str,
        source: str | os.PathLike | nn.Module,
        model_config: Mapping[str, Any],
        meta: Mapping[str, Any] | None = None,
    ) -> dict:
        """Adopt an existing checkpoint (a ``.pt``/``.pth`` state_dict file or a net) as ``key``.

        The weights are checked against ``build_model(**model_config)`` before anything is
        written; torch files keep their format and are loaded with ``weights_only=True``.
        """
        return register_checkpoint(
            self._dir(key), source, model_config, {**(meta or {}), "key": key}
        )

    def load(self, key: str, *, device: str | torch.device | None = None) -> tuple[nn.Module, dict]:
        """(net, meta) for ``key``; CheckpointError when absent or not intact."""
        return load_checkpoint(self._dir(key), device=device)

    def delete(self, key: str) -> None:
        """Remove ``key`` (no error when absent)."""
        delete_checkpoint(self._dir(key))


__all__ = [
    "CODE_VERSION",
    "QUARANTINE",
    "STALE_TEMP_SECONDS",
    "CheckpointError",
    "CheckpointStore",
    "CorruptCheckpoint",
    "cached_key",
    "canonical_json",
]
