"""Sweep results as Parquet tables (DESIGN.md §5): explicit schemas, one file per trial.

Layout: ``<root>/<table>/sweep=<sweep>/<key>.parquet`` for the tables ``endpoints``,
``trials``, ``curves``, ``layers``, ``pruning``, ``filters`` and ``merges``. ``root`` is a local path, any pyarrow URI
(``s3://...``, ``gs://...``) or a :class:`~repair_dist.location.Location`, which owns the layout. Each file is written under a temporary name starting with ``.``
(which Parquet readers, pyarrow and DuckDB skip) and then renamed, so a rerun of a trial
replaces its file and rows are never duplicated.

Schemas are explicit (strings are ``string``, never pandas 3's ``large_string``). ``sweep`` is
the hive partition: it is not stored inside the files and comes back as a plain string column
from :func:`read_table` (and from DuckDB with ``hive_partitioning=true``).

Column policy of :func:`write_rows`: every *required* column (DESIGN.md §5) must be present, or
a ValueError lists the missing ones; *optional* columns (convenience copies such as a trial's
model/width/depth in ``curves``) are filled with nulls when absent; columns outside the schema
are an error by default (a typo should not silently lose data), or dropped with
``extra="drop"``. A ``sweep`` column in the frame must equal the ``sweep`` argument.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from ..location import TABLES, Location
from ..storage import writing
from ..variants import variant_order

#: Version 2 added the optional ``trials`` columns ``residual``, ``curve_kind``,
#: ``curve_epochs`` and ``curve_seconds`` and the ``pruning`` and ``filters`` tables. Version-1
#: files still read: :func:`read_table` fills the columns a file lacks with nulls.
SCHEMA_VERSION = "2"

_S, _F, _I = pa.string(), pa.float64(), pa.int64()

#: The columns identifying a trial's net, in table order: copied into every row of a trial
#: (and of an endpoint), so each table filters by architecture without a join.
TRIAL_ID_COLUMNS: tuple[str, ...] = ("model", "width", "depth", "norm", "dataset")
# Width is float64: VGG/torchvision widths are multipliers (0.5, 2); depth is nullable
# (torchvision ResNets have none).
_ID_TYPES = {"model": _S, "width": _F, "depth": _I, "norm": _S, "dataset": _S}


def _id_columns(required: bool) -> list[tuple[str, pa.DataType, bool]]:
    return [(c, _ID_TYPES[c], required) for c in TRIAL_ID_COLUMNS]


# (name, type, required)
_COLUMNS: dict[str, list[tuple[str, pa.DataType, bool]]] = {
    "endpoints": [
        ("endpoint_key", _S, True),
        *_id_columns(required=True),
        ("seed", _I, True),
        ("epochs", _I, True),
        ("train_loss", _F, True),
        ("train_acc", _F, True),
        ("test_loss", _F, True),
        ("test_acc", _F, True),
        ("collapsed_filters", _I, True),
        ("train_seconds", _F, True),
        ("uri", _S, False),  # where the checkpoint lives (store path)
    ],
    "trials": [
        ("trial_key", _S, True),
        ("endpoint_a", _S, True),
        ("endpoint_b", _S, True),
        *_id_columns(required=True),
        ("method", _S, True),
        ("variant", _S, True),
        ("acc_a", _F, True),
        ("acc_b", _F, True),
        ("loss_a", _F, True),
        ("loss_b", _F, True),
        ("acc_mid", _F, True),
        ("loss_mid", _F, True),
        ("barrier_acc_mid", _F, True),
        ("barrier_loss_mid", _F, True),
        ("barrier_loss_max", _F, True),
        ("barrier_acc_max", _F, True),
        ("reduction_vs_aligned", _F, True),
        ("reduction_loss_vs_aligned", _F, True),
        ("seconds", _F, True),
        ("seed_a", _I, False),
        ("seed_b", _I, False),
        # schema 2: the activation-matching mode for residual streams, and curve trials
        ("residual", _S, False),
        ("curve_kind", _S, False),
        ("curve_epochs", _I, False),
        ("curve_seconds", _F, False),
    ],
    "curves": [
        ("trial_key", _S, True),
        ("method", _S, True),
        ("variant", _S, True),
        ("alpha", _F, True),
        ("split", _S, True),
        ("loss", _F, True),
        ("acc", _F, True),
        *_id_columns(required=False),
    ],
    "layers": [
        ("trial_key", _S, True),
        ("method", _S, True),
        ("variant", _S, True),
        ("alpha", _F, True),
        ("layer", _S, True),
        ("std_ratio", _F, True),
        ("mean_shift", _F, True),
        *_id_columns(required=False),
    ],
    "pruning": [
        ("endpoint_key", _S, True),
        *_id_columns(required=True),
        ("seed", _I, False),
        ("kind", _S, True),
        ("sparsity", _F, True),
        ("variant", _S, True),  # dense | pruned | repaired-<variant>
        ("train_loss", _F, True),
        ("train_acc", _F, True),
        ("test_loss", _F, True),
        ("test_acc", _F, True),
        ("measured_sparsity", _F, True),
        ("seconds", _F, True),
    ],
    "filters": [
        ("endpoint_key", _S, True),
        ("layer", _S, True),
        ("channels", _I, True),
        ("collapsed", _I, True),
        ("dead", _I, True),
        ("gamma_abs_median", _F, True),
        *_id_columns(required=False),
        ("seed", _I, False),
    ],
    # The merge-many study (issue 12): one row per (unit, method, variant). Its own table: a
    # ``trials`` row is keyed by a pair (endpoint_a/b, seed_a/b, alpha); an N-tuple is not.
    # New in schema 2 files (no existing table changed, so no version bump).
    "merges": [
        ("trial_key", _S, True),
        *_id_columns(required=True),
        ("n_models", _I, True),
        ("seeds", _S, True),  # "0,1,2": the tuple's seeds, net 0 first (the reference)
        ("endpoints", _S, True),  # their endpoint keys, comma-joined, same order
        ("method", _S, True),  # weight | activation | merge_many | none (naive)
        ("variant", _S, True),  # naive | aligned | REPAIR variant
        ("acc", _F, True),  # the merged net, test split
        ("loss", _F, True),
        ("train_acc", _F, False),
        ("train_loss", _F, False),
        ("endpoint_acc", _F, True),  # mean over the N endpoints, test split
        ("endpoint_loss", _F, True),
        ("ensemble_acc", _F, True),  # output-averaged ensemble of the N, test split
        ("ensemble_loss", _F, True),
        ("barrier_acc", _F, True),  # endpoint_acc - acc
        ("barrier_loss", _F, True),  # loss - endpoint_loss
        ("ensemble_gap_acc", _F, True),  # ensemble_acc - acc
        ("ensemble_gap_loss", _F, True),  # loss - ensemble_loss
        ("seconds", _F, True),  # alignment + interpolation + REPAIR (evaluation excluded)
        ("residual", _S, False),
    ],
}

#: The schema stored in each file (without the ``sweep`` partition column).
FILE_SCHEMAS: dict[str, pa.Schema] = {
    t: pa.schema(
        [pa.field(n, ty, nullable=True) for n, ty, _ in cols],
        metadata={"repair_dist.table": t, "repair_dist.schema_version": SCHEMA_VERSION},
    )
    for t, cols in _COLUMNS.items()
}
#: The logical table schemas: ``sweep`` (the hive partition) first, then the file columns.
SCHEMAS: dict[str, pa.Schema] = {
    t: pa.schema([pa.field("sweep", _S), *s], metadata=s.metadata) for t, s in FILE_SCHEMAS.items()
}
REQUIRED: dict[str, tuple[str, ...]] = {
    t: tuple(n for n, _, req in cols if req) for t, cols in _COLUMNS.items()
}

#: Key-value metadata of a trial's ``trials`` file: its MLflow params and run name as JSON,
#: so runs backfilled from Parquet get exactly what live runs got (the columns hold fewer).
TRIAL_PARAMS_KEY = "repair_dist.params"
TRIAL_RUN_NAME_KEY = "repair_dist.run_name"
#: ... and, for a study unit's last file, the study's registry name (``curve``, ``prune``).
STUDY_KEY = "repair_dist.study"

#: The tables a merge trial writes rows to (its MLflow run points at them by ``trial_key``).
TRIAL_TABLES = ("trials", "curves", "layers")

#: Compacted files of a sweep's table are named ``part-<ns>-<hex>.parquet`` (never a unit key:
#: keys are hex digests); beside the table's columns they hold the key of the unit each row
#: came from and that unit's file metadata as JSON (see :mod:`repair_dist.sweep.compaction`).
PART_PREFIX = "part-"
UNIT_COLUMN = "_unit"
META_COLUMN = "_unit_metadata"

#: Metrics that :func:`summarize` averages over seed pairs by default.
SUMMARY_METRICS = ("barrier_acc_mid", "barrier_loss_mid", "reduction_vs_aligned")
#: Default grouping of :func:`summarize` (columns absent from the frame are skipped): the
#: sweep and the :data:`TRIAL_ID_COLUMNS`, in the order a reader scans a summary.
DEFAULT_GROUP_BY = ("sweep", "model", "dataset", "width", "depth", "norm")

DUCKDB_EXAMPLE = """\
duckdb -c "SELECT model, width, depth, method, variant,
                  count(*) AS n, avg(barrier_acc_mid) AS barrier, stddev_samp(barrier_acc_mid) AS sd
           FROM read_parquet('results/trials/*/*.parquet', hive_partitioning = true)
           WHERE sweep = 'quickstart'
           GROUP BY ALL ORDER BY ALL"
"""


def _check_table(table: str) -> str:
    if table not in SCHEMAS:
        raise ValueError(f"unknown results table {table!r}; choose one of {', '.join(TABLES)}")
    return table


def table_path(
    root: str | os.PathLike | Location,
    table: str,
    sweep: str,
    key: str,
    *,
    filesystem: pafs.FileSystem | None = None,
) -> str:
    """``<root>/<table>/sweep=<sweep>/<key>.parquet`` (the path inside root's filesystem)."""
    return Location.of(root, filesystem).table_file(_check_table(table), sweep, key)


def to_arrow(table: str, df: pd.DataFrame, sweep: str, *, extra: str = "error") -> pa.Table:
    """Conform ``df`` to the file schema of ``table`` (see the module doc for the policy)."""
    _check_table(table)
    if extra not in ("error", "drop"):
        raise ValueError(f"extra must be 'error' or 'drop' (got {extra!r})")
    schema = FILE_SCHEMAS[table]
    if "sweep" in df.columns:
        other = set(df["sweep"].dropna().astype(str)) - {sweep}
        if other:
            raise ValueError(
                f"{table} rows carry sweep={sorted(other)} but are written to sweep={sweep!r}"
            )
        df = df.drop(columns="sweep")
    missing = [c for c in REQUIRED[table] if c not in df.columns]
    if missing:
        raise ValueError(
            f"{table} rows lack required column(s) {', '.join(missing)}; "
            f"the {table} schema is: {', '.join(schema.names)}"
        )
    unknown = [c for c in df.columns if c not in schema.names]
    if unknown and extra == "error":
        raise ValueError(
            f"{table} rows have column(s) outside the schema: {', '.join(map(str, unknown))} "
            f"(pass extra='drop' to drop them); the {table} schema is: {', '.join(schema.names)}"
        )
    arrays = []
    for field in schema:
        if field.name not in df.columns:
            arrays.append(pa.nulls(len(df), type=field.type))
            continue
        col = df[field.name]
        try:
            arrays.append(pa.array(col, type=field.type, from_pandas=True))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
            raise ValueError(
                f"{table} column {field.name!r} ({col.dtype}) does not convert to {field.type}: {e}"
            ) from None
    return pa.Table.from_arrays(arrays, schema=schema)


def write_rows(
    root: str | os.PathLike | Location,
    table: str,
    sweep: str,
    key: str,
    df: pd.DataFrame,
    *,
    extra: str = "error",
    filesystem: pafs.FileSystem | None = None,
    metadata: Mapping[str, str] | None = None,
) -> str:
    """Write ``df`` as ``<root>/<table>/sweep=<sweep>/<key>.parquet``, atomically; replaces.

    Returns the written path (inside ``root``'s filesystem; a local path for local roots).
    ``filesystem`` overrides the filesystem pyarrow infers from ``root``. ``metadata`` goes
    into the file's key-value metadata (no column: readers of the table never see it).
    """
    loc = Location.of(root, filesystem)
    if key.startswith(PART_PREFIX):
        raise ValueError(f"unit key {key!r} may not start with {PART_PREFIX!r} (compacted files)")
    final = loc.table_file(_check_table(table), sweep, key)
    data = to_arrow(table, df, sweep, extra=extra)
    if metadata:
        data = data.replace_schema_metadata({**(data.schema.metadata or {}), **metadata})
    tmp = f"{loc.table_dir(table, sweep)}/.{key}.parquet.tmp-{uuid.uuid4().hex[:12]}"
    with writing(f"{table} rows", final):  # a full disk is one line naming the file
        _publish(loc, data, tmp, final)
    return final


def _publish(loc: Location, data: pa.Table, tmp: str, final: str) -> None:
    """Write ``data`` to ``tmp``, then move it to ``final`` (a rename on local disks)."""
    fs = loc.fs
    fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
    try:
        if loc.local:
            pq.write_table(data, tmp, compression="zstd")
            os.replace(tmp, final)
        else:
            with fs.open_output_stream(tmp) as out:
                pq.write_table(data, out, compression="zstd")
            fs.move(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError, FileNotFoundError):
            fs.delete_file(tmp)
        raise


def _empty(table: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
    frame = SCHEMAS[table].empty_table().to_pandas()
    return frame[list(columns)] if columns else frame


# ---- the files of a table: one per unit while a sweep runs, a few parts once compacted -------


@dataclass
class Partition:
    """The files of one sweep's directory of a table.

    ``units``: key -> path of each unit's own file (a trial's, an endpoint's...); ``parts``:
    the compacted files (:mod:`repair_dist.sweep.compaction`), newest first. Reading rule,
    which keeps every unit's rows exactly once even after a crash mid-compaction: a unit's
    own file wins; otherwise the newest part holding the unit.
    """

    sweep: str
    units: dict[str, str] = dataclass_field(default_factory=dict)
    parts: list[str] = dataclass_field(default_factory=list)
    #: (size, mtime) of each unit file as listed: compaction deletes only files it read.
    stamps: dict[str, tuple[int, int | None]] = dataclass_field(default_factory=dict)


def partitions(
    root: str | os.PathLike | Location, table: str, sweep: str | None = None
) -> list[Partition]:
    """The table's files, per sweep (one listing: no file is opened)."""
    _check_table(table)
    loc = Location.of(root)
    where = loc.table_dir(table, sweep)
    selector = pafs.FileSelector(where, allow_not_found=True, recursive=sweep is None)
    found: dict[str, Partition] = {}
    for info in loc.fs.get_file_info(selector):
        name = info.base_name
        if info.type != pafs.FileType.File or name.startswith(".") or not name.endswith(".parquet"):
            continue
        parent = info.path.rsplit("/", 2)[-2]
        if sweep is None and not parent.startswith("sweep="):
            continue
        name_of_sweep = sweep if sweep is not None else parent[len("sweep=") :]
        part = found.setdefault(name_of_sweep, Partition(name_of_sweep))
        if name.startswith(PART_PREFIX):
            part.parts.append(info.path)
        else:
            key = name[: -len(".parquet")]
            part.units[key] = info.path
            part.stamps[key] = (info.size, info.mtime_ns)
    for part in found.values():
        part.parts.sort(reverse=True)  # names start with the time they were written
    return [found[k] for k in sorted(found)]


def _read_units(loc: Location, table: str, paths: list[str], columns: list[str]) -> pa.Table:
    """The unit files' rows in one threaded scan (the file schema; absent columns null)."""
    dataset = ds.dataset(
        paths,
        filesystem=loc.fs,
        format="parquet",
        schema=FILE_SCHEMAS[table],
        exclude_invalid_files=False,
    )
    return dataset.to_table(columns=columns)


def _read_parts(
    loc: Location, part: Partition, columns: list[str], only: str | None = None
) -> pa.Table | None:
    """Rows of the compacted parts that no unit file or newer part supersedes (see
    :class:`Partition`), with the ``_unit`` column; ``only``: one unit's rows."""
    seen = set(part.units)
    pieces = []
    for path in part.parts:
        present = set(pq.read_schema(path, filesystem=loc.fs).names)  # older parts: fewer
        data = pq.read_table(
            path,
            filesystem=loc.fs,
            columns=[c for c in [*columns, UNIT_COLUMN] if c in present],
            filters=[(UNIT_COLUMN, "=", only)] if only is not None else None,
        )
        units = data[UNIT_COLUMN]
        if seen:
            data = data.filter(pc.invert(pc.is_in(units, value_set=pa.array(sorted(seen)))))
        seen.update(pc.unique(units).to_pylist())
        pieces.append(data)
    return pa.concat_tables(pieces) if pieces else None


def _conform(data: pa.Table, table: str, columns: list[str]) -> pa.Table:
    """Columns of an older part (schema 1) that it lacks come back null, like unit files."""
    schema = FILE_SCHEMAS[table]
    arrays = []
    for name in columns:
        if name in data.column_names:
            arrays.append(data[name].cast(schema.field(name).type))
        else:
            arrays.append(pa.nulls(data.num_rows, type=schema.field(name).type))
    return pa.Table.from_arrays(arrays, names=columns)


@contextlib.contextmanager
def _naming_corrupt_files(directory: str) -> Iterator[None]:
    """A damaged Parquet file is one line naming where it is and what to do (pyarrow's own
    message names neither)."""
    try:
        yield
    except pa.ArrowInvalid as err:
        raise ValueError(
            f"a results file under {directory} is damaged ({err}); move the damaged file "
            "aside (pyarrow.parquet.read_metadata on each file finds it): the sweep recomputes "
            "its trials on the next run"
        ) from None


#: Listings read_table tries when a compaction removes files under it (each try is consistent).
_READ_ATTEMPTS = 5
T = TypeVar("T")


def _read_pieces(loc: Location, table: str, sweep: str | None, wanted: list[str]) -> list[pa.Table]:
    """One listing of the table and the rows it names (FileNotFoundError: listing is stale)."""
    file_columns = [c for c in wanted if c != "sweep"]
    pieces: list[pa.Table] = []
    for part in partitions(loc, table, sweep):
        chunks = []
        with _naming_corrupt_files(loc.table_dir(table, part.sweep)):
            if part.units:
                chunks.append(_read_units(loc, table, list(part.units.values()), file_columns))
            parts = _read_parts(loc, part, file_columns)
        if parts is not None:
            chunks.append(_conform(parts, table, file_columns))
        for data in chunks:
            if "sweep" in wanted:
                data = data.append_column("sweep", pa.array([part.sweep] * data.num_rows, _S))
            pieces.append(data.select(wanted))
    return pieces


def read_table(
    root: str | os.PathLike | Location,
    table: str,
    sweep: str | None = None,
    *,
    columns: Sequence[str] | None = None,
    filesystem: pafs.FileSystem | None = None,
) -> pd.DataFrame:
    """One results table as a DataFrame (``sweep`` a plain string column), all sweeps or one.

    Every unit's rows exactly once, whether they sit in the unit's own file or in a
    compacted part. An empty frame with the table's columns when nothing has been written.
    """
    _check_table(table)
    loc = Location.of(root, filesystem)
    full = SCHEMAS[table]
    if columns is not None:
        bad = [c for c in columns if c not in full.names]
        if bad:
            raise ValueError(f"{table} has no column(s) {', '.join(bad)}")
    wanted = list(columns) if columns is not None else list(full.names)
    for attempt in range(_READ_ATTEMPTS):
        try:
            pieces = _read_pieces(loc, table, sweep, wanted)
            break
        except FileNotFoundError:
            # A compaction deleted a listed file between listing and reading. Its new part
            # was in place before the first delete, so listing again reads every row once.
            if attempt == _READ_ATTEMPTS - 1:
                raise
    if not pieces:
        return _empty(table, columns)
    frame = pa.concat_tables(pieces).to_pandas()
    if frame.empty:
        return _empty(table, columns)
    return frame


def unit_keys(root: str | os.PathLike | Location, table: str, sweep: str) -> set[str]:
    """Keys of the units with rows in ``table`` (own files and compacted parts alike)."""
    loc = Location.of(root)
    return _relisting(lambda: _unit_keys(loc, table, sweep))


def _unit_keys(loc: Location, table: str, sweep: str) -> set[str]:
    keys: set[str] = set()
    for part in partitions(loc, table, sweep):
        keys.update(part.units)
        for path in part.parts:
            units = pq.read_table(path, filesystem=loc.fs, columns=[UNIT_COLUMN])[UNIT_COLUMN]
            keys.update(pc.unique(units).to_pylist())
    return keys


def _relisting(read: Callable[[], T]) -> T:
    """``read()``, listed and read again when a compaction running meanwhile (the publisher
    compacts during a sweep) deleted a listed file: the new part was in place before the
    first delete, so the next listing finds every row once."""
    for attempt in range(_READ_ATTEMPTS):
        try:
            return read()
        except FileNotFoundError:
            if attempt == _READ_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def unit_rows(root: str | os.PathLike | Location, table: str, sweep: str, key: str) -> pd.DataFrame:
    """One unit's rows of ``table`` (file columns, no ``sweep``); FileNotFoundError if none."""
    loc = Location.of(root)
    columns = list(FILE_SCHEMAS[_check_table(table)].names)
    rows = _relisting(lambda: _unit_rows(loc, table, sweep, key, columns))
    if rows is None:
        raise FileNotFoundError(f"no {table} rows of {key} in sweep {sweep!r} under {loc.uri}")
    return rows


def _unit_rows(
    loc: Location, table: str, sweep: str, key: str, columns: list[str]
) -> pd.DataFrame | None:
    own = loc.table_file(table, sweep, key)
    if loc.fs.get_file_info(own).type == pafs.FileType.File:  # no listing: O(1) per unit
        return _read_units(loc, table, [own], columns).to_pandas()
    for part in partitions(loc, table, sweep):
        if key in part.units:
            return _read_units(loc, table, [part.units[key]], columns).to_pandas()
        data = _read_parts(loc, part, columns, only=key)
        if data is not None and data.num_rows:
            return _conform(data, table, columns).to_pandas()
    return None


def _decode(raw: Mapping[bytes, bytes] | None) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (raw or {}).items() if not k.startswith(b"ARROW:")}


def unit_metadata(
    root: str | os.PathLike | Location, table: str, sweep: str
) -> dict[str, dict[str, str]]:
    """key -> the key-value metadata :func:`write_rows` stored with each unit's rows."""
    loc = Location.of(root)
    out: dict[str, dict[str, str]] = {}
    for part in partitions(loc, table, sweep):
        for path in reversed(part.parts):  # oldest first: newer parts overwrite
            data = pq.read_table(path, filesystem=loc.fs, columns=[UNIT_COLUMN, META_COLUMN])
            for unit, meta in zip(
                data[UNIT_COLUMN].to_pylist(), data[META_COLUMN].to_pylist(), strict=True
            ):
                out[unit] = json.loads(meta) if meta else {}
        for key, path in part.units.items():
            out[key] = _decode(pq.read_schema(path, filesystem=loc.fs).metadata)
    return out


def file_metadata(root: str | os.PathLike | Location, table: str, sweep: str, key: str) -> dict:
    """The key-value metadata :func:`write_rows` stored with one unit's rows (``{}`` when
    none); FileNotFoundError when the unit has no rows in ``table``."""
    loc = Location.of(root)
    path = loc.table_file(_check_table(table), sweep, key)
    if loc.fs.get_file_info(path).type == pafs.FileType.File:
        return _decode(pq.read_schema(path, filesystem=loc.fs).metadata)
    found = unit_metadata(loc, table, sweep)
    if key not in found:
        raise FileNotFoundError(f"no {table} rows of {key} in sweep {sweep!r} under {loc.uri}")
    return found[key]


# --------------------------------------------------------------------------------------------
# summaries and formatting
# --------------------------------------------------------------------------------------------


def _variant_order(values: Iterable[str]) -> dict[str, int]:
    return {v: i for i, v in enumerate(variant_order(values))}


def summarize(
    trials_df: pd.DataFrame,
    group_by: Sequence[str] | None = None,
    *,
    metrics: Sequence[str] = SUMMARY_METRICS,
) -> pd.DataFrame:
    """Mean and sample std (ddof=1) over seed pairs per (group_by..., method, variant).

    Columns: group_by..., method, variant, n, then ``<metric>_mean`` and ``<metric>_std`` per
    metric (std is NaN for a single pair). ``group_by`` defaults to whichever of
    sweep, model, dataset, width, depth, norm the frame has; null keys form their own group.
    """
    if group_by is None:
        group_by = [c for c in DEFAULT_GROUP_BY if c in trials_df.columns]
    keys = [*[c for c in group_by if c not in ("method", "variant")], "method", "variant"]
    missing = [c for c in [*keys, *metrics] if c not in trials_df.columns]
    if missing:
        raise ValueError(f"summarize: trials have no column(s) {', '.join(missing)}")
    out_cols = [*keys, "n", *[f"{m}_{s}" for m in metrics for s in ("mean", "std")]]
    if trials_df.empty:
        return pd.DataFrame(columns=out_cols)
    grouped = trials_df.groupby(keys, dropna=False, sort=True)
    stats = grouped[list(metrics)].agg(["mean", "std"])
    stats.columns = [f"{m}_{s}" for m, s in stats.columns]
    stats.insert(0, "n", grouped.size())
    out = stats.reset_index()
    order = _variant_order(out["variant"].astype(str))
    out = out.assign(_v=out["variant"].map(order)).sort_values(
        [*keys[:-1], "_v"], kind="stable", na_position="last"
    )
    return out.drop(columns="_v").reset_index(drop=True)[out_cols]


def describe(frame: pd.DataFrame, group_by: Sequence[str]) -> pd.DataFrame:
    """Any results table summarised: n, then mean and sample std of every numeric column
    per ``group_by`` group (null keys form their own group), in group order."""
    keys = list(group_by)
    numeric = [
        c
        for c in frame.columns
        if c not in keys and c != "seed" and pd.api.types.is_numeric_dtype(frame[c])
    ]
    grouped = frame.groupby(keys, dropna=False, sort=True)
    stats = grouped[numeric].agg(["mean", "std"])
    stats.columns = [f"{m}_{s}" for m, s in stats.columns]
    stats.insert(0, "n", grouped.size())
    return stats.reset_index()


def _fmt_number(x: object) -> str:
    if x is None or x is pd.NA or x is pd.NaT or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, (float, np.floating)):
        if float(x).is_integer() and abs(x) < 1e6:
            return str(int(x))
        return f"{x:.4g}"
    return str(x)


def format_table(df: pd.DataFrame, fmt: str = "table") -> str:
    """Render a results frame: ``table`` (human: ``m ± s`` for *_mean/*_std pairs), ``csv``,
    or ``json`` (records)."""
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        return df.to_json(orient="records", indent=1)
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}; choose table, csv or json")
    if df.empty:
        return "(no rows)"
    shown = pd.DataFrame(index=df.index)
    for col in df.columns:
        if col.endswith("_std") and f"{col[:-4]}_mean" in df.columns:
            continue
        if col.endswith("_mean") and f"{col[:-5]}_std" in df.columns:
            std = df[f"{col[:-5]}_std"]
            shown[col[:-5]] = [
                _fmt_number(m) if pd.isna(s) else f"{_fmt_number(m)} ± {s:.2g}"
                for m, s in zip(df[col], std, strict=True)
            ]
        else:
            shown[col] = [_fmt_number(v) for v in df[col]]
    return shown.to_string(index=False)


__all__ = [
    "DUCKDB_EXAMPLE",
    "FILE_SCHEMAS",
    "REQUIRED",
    "SCHEMAS",
    "SUMMARY_METRICS",
    "STUDY_KEY",
    "TRIAL_PARAMS_KEY",
    "TRIAL_TABLES",
    "TRIAL_RUN_NAME_KEY",
    "TABLES",
    "TRIAL_ID_COLUMNS",
    "describe",
    "format_table",
    "file_metadata",
    "partitions",
    "read_table",
    "summarize",
    "table_path",
    "to_arrow",
    "unit_keys",
    "unit_metadata",
    "unit_rows",
    "write_rows",
]
