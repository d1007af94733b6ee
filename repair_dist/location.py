"""Where results live: one typed object for a results root on any pyarrow filesystem.

A sweep writes to one root: a local path, a ``file://`` URI, or an object-store URI such as
``s3://bucket/repair`` or ``gs://...`` (anything :func:`pyarrow.fs.FileSystem.from_uri`
knows), or a path inside an explicit :class:`pyarrow.fs.FileSystem`. Before this object, every
caller sniffed ``"://" in root`` and joined paths by hand, with local and remote twins of each
operation. :class:`Location` resolves the root once and owns the layout below it (DESIGN.md §5)::

    <root>/<table>/sweep=<sweep>/<key>.parquet   results tables (hive-partitioned by sweep)
    <root>/plots/sweep=<sweep>/<key>.png         per-trial plots
    <root>/tune/                                 Ray Tune experiment state
    <root>/checkpoints/<key>/                    the content-addressed checkpoint store
    <root>/checkpoints/_quarantine/<key>-<time>/ damaged checkpoints moved aside
    <root>/locks/<sweep>.lock                    who runs the sweep now (sweep.lock)
    <root>/mlflow.db, <root>/mlartifacts/        default MLflow store (local roots only)

Only pyarrow is imported here, so the checkpoint store and the science wing can use it; Ray and
MLflow stay in ``repair_dist.sweep``. Locations pickle (pyarrow filesystems do), so a driver
hands them to its Tune trials as they are.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from pyarrow import fs as pafs

#: Names that become one path component (sweep names, trial and endpoint keys, MLflow tag
#: values): a letter or digit first, then letters, digits and ``_ . + -``. Nothing can climb out
#: of its directory or hide (leading ``.``), and MLflow filter strings (quoted with ``'``, which
#: cannot be escaped) stay safe.
SAFE_PUNCTUATION = "_.+-"
SAFE_NAME = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9{re.escape(SAFE_PUNCTUATION)}]*$")
#: Results tables (DESIGN.md §5), in the order a sweep writes them.
TABLES: tuple[str, ...] = (
    "endpoints",
    "trials",
    "curves",
    "layers",
    "pruning",
    "filters",
    "merges",
)


def check_name(what: str, value: object) -> str:
    """``value`` if it is a :data:`SAFE_NAME` (and no ``.parquet`` file name), else ValueError."""
    if not isinstance(value, str) or not SAFE_NAME.match(value) or value.endswith(".parquet"):
        raise ValueError(
            f"{what} {value!r} must start with a letter or digit and contain only letters, "
            "digits and _ . + - (it becomes a file or directory name)"
        )
    return value


def _has_scheme(text: str) -> bool:
    # "C:\\..." is a Windows drive, not a scheme; URIs have "<scheme>://".
    head, sep, _ = text.partition("://")
    return bool(sep) and head.isascii() and head.replace("+", "").isalnum() and len(head) > 1


@dataclass(frozen=True)
class Location:
    """A directory on a pyarrow filesystem: ``fs`` and the ``path`` inside it.

    ``uri`` is how the directory is named to users and to tools that take URIs (Ray Tune,
    MLflow artifacts): a local absolute path for local directories, the original URI (or the
    path inside an explicit filesystem) otherwise. Build one with :meth:`of`.
    """

    fs: pafs.FileSystem
    path: str
    uri: str

    @classmethod
    def of(
        cls, root: str | os.PathLike | Location, filesystem: pafs.FileSystem | None = None
    ) -> Location:
        """Resolve a path, a URI or an existing Location (returned as is).

        ``filesystem`` overrides the filesystem the URI names: ``root`` is then a path inside
        it (``SubTreeFileSystem`` and test doubles use this).
        """
        if isinstance(root, Location):
            return root
        text = os.fspath(root)
        if filesystem is not None:
            if isinstance(filesystem, pafs.LocalFileSystem):
                path = os.path.abspath(os.path.expanduser(text))
                return cls(filesystem, path, path)
            path = text.rstrip("/") or "/"
            return cls(filesystem, path, path)
        if not _has_scheme(text):
            path = os.path.abspath(os.path.expanduser(text))
            return cls(pafs.LocalFileSystem(), path, path)
        fs, path = pafs.FileSystem.from_uri(text)
        path = path.rstrip("/") or "/"
        if isinstance(fs, pafs.LocalFileSystem):  # file:// URIs are local directories
            return cls(fs, path, path)
        return cls(fs, path, text.rstrip("/"))

    def __str__(self) -> str:
        return self.uri

    # -- what kind of directory ------------------------------------------------------------

    @property
    def local(self) -> bool:
        """True on the machine's own filesystem: plain paths work and renames are atomic."""
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def local_path(self) -> Path | None:
        """The directory as a :class:`~pathlib.Path` when :attr:`local`, else None."""
        return Path(self.path) if self.local else None

    # -- paths -----------------------------------------------------------------------------

    def join(self, *parts: str) -> str:
        """A path inside :attr:`fs` below this directory (no checks on ``parts``)."""
        return "/".join([self.path.rstrip("/"), *parts]) if parts else self.path

    def child(self, *parts: str) -> Location:
        """The Location of a subdirectory (same filesystem)."""
        uri = "/".join([self.uri.rstrip("/"), *parts])
        return Location(self.fs, self.join(*parts), uri)

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.join(*parts)).type != pafs.FileType.NotFound

    def is_dir(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.join(*parts)).type == pafs.FileType.Directory

    def is_file(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.join(*parts)).type == pafs.FileType.File

    def makedirs(self) -> Location:
        """Create the directory (and parents) if missing; returns self."""
        self.fs.create_dir(self.path, recursive=True)
        return self

    # -- the results layout ----------------------------------------------------------------

    def table_dir(self, table: str, sweep: str | None = None) -> str:
        """``<root>/<table>`` or ``<root>/<table>/sweep=<sweep>``."""
        if table not in TABLES:
            raise ValueError(f"unknown results table {table!r}; choose one of {', '.join(TABLES)}")
        if sweep is None:
            return self.join(table)
        return self.join(table, f"sweep={check_name('sweep', sweep)}")

    def table_file(self, table: str, sweep: str, key: str) -> str:
        """``<root>/<table>/sweep=<sweep>/<key>.parquet`` (a path inside :attr:`fs`)."""
        return f"{self.table_dir(table, sweep)}/{check_name('key', key)}.parquet"

    def plot_file(self, sweep: str, key: str) -> str:
        """``<root>/plots/sweep=<sweep>/<key>.png``."""
        return self.join(
            "plots", f"sweep={check_name('sweep', sweep)}", f"{check_name('key', key)}.png"
        )

    @property
    def tune(self) -> Location:
        """Ray Tune's storage (pass ``uri``/``path`` with ``fs`` as ``storage_filesystem``)."""
        return self.child("tune")

    def ray_storage(self) -> dict[str, object]:
        """``RunConfig`` keyword arguments (Ray Tune, Ray Train) that keep state here.

        A local directory is a plain path; any other filesystem goes in as
        ``storage_filesystem``, so object stores and explicit filesystems work alike.
        """
        if self.local:
            return {"storage_path": self.path}
        return {"storage_path": self.path, "storage_filesystem": self.fs}

    @property
    def checkpoints(self) -> Location:
        """Default directory of the checkpoint store."""
        return self.child("checkpoints")

    @property
    def mlflow_uri(self) -> str | None:
        """``sqlite:///<root>/mlflow.db`` for a local root; None elsewhere (sqlite needs a
        local file, and MLflow 3 refuses the plain file store)."""
        return f"sqlite:///{Path(self.path) / 'mlflow.db'}" if self.local else None

    @property
    def mlflow_artifacts(self) -> str | None:
        """``<root>/mlartifacts`` for a local root (what the default store's runs use)."""
        return str(Path(self.path) / "mlartifacts") if self.local else None


__all__ = ["SAFE_NAME", "SAFE_PUNCTUATION", "TABLES", "Location", "check_name"]
