"""Compaction: a finished sweep's one-file-per-unit tables become a few files.

While a sweep runs, every trial (endpoint, study unit) writes its rows to its own Parquet file,
atomically: that file marks the unit finished and a rerun replaces it, so nothing is ever
duplicated. Thousands of small files make every later read slow (a footer per file), so the
runner compacts each table of the sweep when the sweep ends: the unit files and older parts
are written into one new part ``part-<ns>-<hex>.parquet``, then the files it replaces are
deleted. Each row keeps the key of its unit (``_unit``) and the unit's file metadata
(``_unit_metadata``: e.g. a trial's MLflow params), so nothing a unit file carried is lost.

Why no row is ever lost or doubled, even if the process dies at any point: readers
(:func:`repair_dist.sweep.results.read_table`) take a unit's rows from its own file if one
exists, else from the newest part holding it. Until the new part is renamed into place it is
invisible; after that it supersedes the older parts, and the unit files it copied still win
over it until they are deleted, with identical rows. A unit file rewritten after it was read
(a rerun) is not deleted: its size or mtime no longer match what was read.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from .._pythonpath import pythonpath_with_package
from ..location import TABLES, Location
from ..storage import writing
from .results import (
    FILE_SCHEMAS,
    META_COLUMN,
    PART_PREFIX,
    UNIT_COLUMN,
    Partition,
    _conform,
    _decode,
    _read_parts,
    partitions,
)


@dataclass(frozen=True)
class Compacted:
    """What :func:`compact_table` did to one sweep's table."""

    table: str
    units: int
    rows: int
    files_before: int
    files_after: int


def _part_schema(table: str) -> pa.Schema:
    schema = FILE_SCHEMAS[table]
    fields = [*schema, pa.field(UNIT_COLUMN, pa.string()), pa.field(META_COLUMN, pa.string())]
    return pa.schema(fields, metadata={**schema.metadata, b"repair_dist.compacted": b"1"})


def _unit_files(loc: Location, table: str, part: Partition) -> pa.Table:
    """Every unit file's rows, tagged with its unit key and metadata: one threaded scan (the
    footers it reads serve the metadata too), about twice as fast as a read per file."""
    schema = FILE_SCHEMAS[table]
    keys_of = {path: key for key, path in part.units.items()}
    dataset = ds.dataset(
        list(part.units.values()), filesystem=loc.fs, format="parquet", schema=schema
    )
    batches: list[pa.RecordBatch] = []
    paths: list[str] = []
    for tagged in dataset.scanner(use_threads=True).scan_batches():
        batches.append(tagged.record_batch)
        paths.append(tagged.fragment.path)
    if not batches:
        return _part_schema(table).empty_table()
    meta_of = {}
    for fragment in dataset.get_fragments():
        meta = _decode(fragment.physical_schema.metadata)
        meta_of[fragment.path] = json.dumps(
            {k: v for k, v in meta.items() if k not in _TABLE_LEVEL}, sort_keys=True
        )
    rows = [b.num_rows for b in batches]
    data = pa.Table.from_batches(batches, schema=schema)
    unit = pa.array(np.repeat([keys_of[p] for p in paths], rows), pa.string())
    blob = pa.array(np.repeat([meta_of[p] for p in paths], rows), pa.string())
    return data.append_column(UNIT_COLUMN, unit).append_column(META_COLUMN, blob)


#: File metadata that describes the table, not the unit (the part's own schema has it).
_TABLE_LEVEL = ("repair_dist.table", "repair_dist.schema_version")


def compact_table(root: str | os.PathLike | Location, table: str, sweep: str) -> Compacted:
    """Fold one sweep's unit files and parts of ``table`` into one part (see the module doc).

    Nothing to do (no unit file, at most one part) leaves the files as they are. The caller
    holds the sweep's lock (:class:`~repair_dist.sweep.lock.SweepLock`), so it is the only
    compactor; trials may still write unit files meanwhile (the publisher compacts during a
    sweep): a file listed after the scan is left alone, one rewritten since is not deleted.
    """
    loc = Location.of(root)
    found = partitions(loc, table, sweep)
    if not found:
        return Compacted(table, 0, 0, 0, 0)
    (part,) = found
    before = len(part.units) + len(part.parts)
    if not part.units and len(part.parts) <= 1:
        return Compacted(table, 0, 0, before, before)
    schema = _part_schema(table)
    directory = loc.table_dir(table, sweep)
    final = f"{directory}/{PART_PREFIX}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = f"{directory}/.{final.rsplit('/', 1)[1]}.tmp"
    units: set[str] = set()
    rows = 0
    with writing(f"compacted {table} rows", final):
        try:
            with (
                loc.fs.open_output_stream(tmp) as out,
                pq.ParquetWriter(out, schema, compression="zstd") as writer,
            ):
                for piece in _pieces(loc, table, part):
                    writer.write_table(piece.cast(schema))
                    units.update(pc.unique(piece[UNIT_COLUMN]).to_pylist())
                    rows += piece.num_rows
            loc.fs.move(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                loc.fs.delete_file(tmp)
            raise
    for path in part.parts:  # superseded by the new part (newest first wins)
        loc.fs.delete_file(path)
    listed = {info.path: info for info in loc.fs.get_file_info(list(part.units.values()))}
    for key, path in part.units.items():
        info = listed[path]
        if (info.size, info.mtime_ns) == part.stamps[key]:  # not rewritten since read
            loc.fs.delete_file(path)
    after = len(partitions(loc, table, sweep)[0].units) + 1
    return Compacted(table, len(units), rows, before, after)


#: Unit files read (and held) at a time: compaction's memory stays flat in the sweep's size.
_FILES_PER_PIECE = 128


def _pieces(loc: Location, table: str, part: Partition) -> Iterator[pa.Table]:
    """The new part's rows, a bounded piece at a time: the rows of the older parts that no
    unit file supersedes, then the unit files, ``_FILES_PER_PIECE`` at a time."""
    names = list(FILE_SCHEMAS[table].names)
    older = _read_parts(loc, part, [*names, META_COLUMN])
    if older is not None:
        kept = _conform(older, table, names)
        kept = kept.append_column(UNIT_COLUMN, older[UNIT_COLUMN])
        yield kept.append_column(META_COLUMN, older[META_COLUMN])
    items = list(part.units.items())
    for i in range(0, len(items), _FILES_PER_PIECE):
        group = dict(items[i : i + _FILES_PER_PIECE])
        yield _unit_files(loc, table, Partition(part.sweep, units=group))


def compact_sweep(root: str | os.PathLike | Location, sweep: str) -> list[Compacted]:
    """:func:`compact_table` for every results table of ``sweep``."""
    return [compact_table(root, table, sweep) for table in TABLES]


def compact_sweep_apart(root: str | os.PathLike | Location, sweep: str) -> None:
    """:func:`compact_sweep` in a short-lived child process; raises OSError if it fails.

    Why: the driver of a long sweep compacts every few hundred units. Done in the driver, each
    compaction's buffers (pyarrow's scans, the new part) leave the driver's heap fragmented:
    its live memory stayed flat over 2,520 trials but its resident memory grew ~12 KB per
    trial, memory the allocator kept and could not hand back. A child's heap goes away with
    it. The child costs a Python start with pyarrow and pandas (~0.6 s of CPU) per
    compaction; it runs under the parent's sweep lock, and compaction is safe to interrupt
    at any point (see the module docstring), so a child outliving a killed driver is harmless.
    """
    loc = Location.of(root)
    env = {**os.environ, "PYTHONPATH": pythonpath_with_package(os.environ.get("PYTHONPATH"))}
    proc = subprocess.run(
        [sys.executable, "-m", __name__, loc.uri, sweep],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        said = proc.stderr.strip().splitlines()
        raise OSError(
            f"compacting sweep {sweep!r} under {loc.uri} in a child process failed "
            f"(exit {proc.returncode}): {said[-1] if said else 'no message'}"
        )


def _main(argv: list[str]) -> int:
    """``python -m repair_dist.sweep.compaction ROOT SWEEP`` (what :func:`compact_sweep_apart`
    runs)."""
    if len(argv) != 2:
        print("usage: python -m repair_dist.sweep.compaction ROOT SWEEP", file=sys.stderr)
        return 2
    compact_sweep(argv[0], argv[1])
    return 0


__all__ = ["Compacted", "compact_sweep", "compact_sweep_apart", "compact_table"]

if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
