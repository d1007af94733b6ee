"""Compaction of a sweep's tables (repair_dist.sweep.compaction): a finished sweep's thousands
of one-unit files become one part, and no row is ever lost or doubled, whatever point a crash
interrupts it at and whatever is rewritten afterwards.

The strongest test is model-based: a random sequence of unit writes, rewrites, compactions
and simulated crashes (a compaction's new part in place, the files it replaces still there)
is checked after every step against a plain dict of what each unit last wrote.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pandas as pd
import pytest

from repair_dist.sweep.compaction import compact_sweep, compact_sweep_apart, compact_table
from repair_dist.sweep.results import (
    PART_PREFIX,
    file_metadata,
    partitions,
    read_table,
    unit_keys,
    unit_metadata,
    unit_rows,
    write_rows,
)

ARCH = {"model": "mlp", "width": 64.0, "depth": 6, "norm": "none", "dataset": "digits"}


def _filters(key: str, version: int, n: int = 2) -> pd.DataFrame:
    """``n`` rows of an endpoint's ``filters``; ``version`` tells rewrites apart."""
    return pd.DataFrame(
        [
            {
                "endpoint_key": key,
                "layer": f"l{i}",
                "channels": 8,
                "collapsed": version,
                "dead": i,
                "gamma_abs_median": 0.5,
                **ARCH,
                "seed": 0,
            }
            for i in range(n)
        ]
    )


def _state(root: Path, sweep: str) -> dict[str, list[tuple]]:
    frame = read_table(root, "filters", sweep)
    out: dict[str, list[tuple]] = {}
    for row in frame.sort_values(["endpoint_key", "layer"]).itertuples(index=False):
        out.setdefault(row.endpoint_key, []).append((row.layer, row.collapsed))
    return out


def _expected(model: dict[str, int], n_rows: dict[str, int]) -> dict[str, list[tuple]]:
    return {k: [(f"l{i}", v) for i in range(n_rows[k])] for k, v in sorted(model.items())}


def test_compaction_keeps_every_row_once_and_the_units_metadata(tmp_path: Path) -> None:
    for i in range(12):
        key = f"{i:016x}"
        write_rows(tmp_path, "filters", "s", key, _filters(key, i), metadata={"who": key})
    write_rows(tmp_path, "filters", "other", "a" * 16, _filters("a" * 16, 7))
    before = read_table(tmp_path, "filters").sort_values(["sweep", "endpoint_key", "layer"])

    result = compact_table(tmp_path, "filters", "s")

    assert (result.units, result.rows, result.files_before, result.files_after) == (12, 24, 12, 1)
    (part,) = partitions(tmp_path, "filters", "s")
    assert not part.units and len(part.parts) == 1
    assert Path(part.parts[0]).name.startswith(PART_PREFIX)
    after = read_table(tmp_path, "filters").sort_values(["sweep", "endpoint_key", "layer"])
    pd.testing.assert_frame_equal(before.reset_index(drop=True), after.reset_index(drop=True))
    assert unit_keys(tmp_path, "filters", "s") == {f"{i:016x}" for i in range(12)}
    key = f"{5:016x}"
    assert unit_rows(tmp_path, "filters", "s", key)["collapsed"].tolist() == [5, 5]
    assert file_metadata(tmp_path, "filters", "s", key)["who"] == key
    assert unit_metadata(tmp_path, "filters", "s")[key]["who"] == key
    # only the requested columns, and the other sweep untouched
    cols = read_table(tmp_path, "filters", "s", columns=["endpoint_key"])
    assert list(cols.columns) == ["endpoint_key"] and len(cols) == 24
    assert len(partitions(tmp_path, "filters", "other")[0].units) == 1
    # a second compaction with nothing new leaves the part alone
    assert compact_table(tmp_path, "filters", "s").files_after == 1
    assert partitions(tmp_path, "filters", "s")[0].parts == part.parts


def test_unit_rows_of_an_unknown_unit_is_one_clear_error(tmp_path: Path) -> None:
    write_rows(tmp_path, "filters", "s", "b" * 16, _filters("b" * 16, 1))
    compact_sweep(tmp_path, "s")
    with pytest.raises(FileNotFoundError, match="no filters rows of c{16}"):
        unit_rows(tmp_path, "filters", "s", "c" * 16)
    with pytest.raises(ValueError, match="may not start with 'part-'"):
        write_rows(tmp_path, "filters", "s", "part-x", _filters("x", 1))


def test_random_writes_compactions_and_crashes_never_lose_or_double_a_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from repair_dist.sweep import compaction

    monkeypatch.setattr(compaction, "_FILES_PER_PIECE", 3)  # parts written in several pieces
    rng = random.Random(0)
    keys = [f"{i:016x}" for i in range(8)]
    model: dict[str, int] = {}
    n_rows: dict[str, int] = {}
    saved: list[tuple[Path, bytes]] = []  # files a "crash" leaves behind
    version = 0
    directory = tmp_path / "filters" / "sweep=s"
    for step in range(40):
        op = rng.choice(["write", "write", "write", "compact", "crash"])
        if op == "write":
            key, version = rng.choice(keys), version + 1
            n = rng.choice([1, 2, 3])
            write_rows(tmp_path, "filters", "s", key, _filters(key, version, n))
            model[key], n_rows[key] = version, n
        elif op == "compact":
            compact_table(tmp_path, "filters", "s")
        else:
            # A compaction killed after its part was renamed into place, before it deleted
            # what the part replaces: put the replaced files back beside the new part.
            saved = [(p, p.read_bytes()) for p in directory.glob("*.parquet")]
            compact_table(tmp_path, "filters", "s")
            for path, data in saved:
                if not path.exists():
                    path.write_bytes(data)
        assert _state(tmp_path, "s") == _expected(model, n_rows), f"step {step}: {op}"
        assert unit_keys(tmp_path, "filters", "s") == set(model)
    compact_sweep(tmp_path, "s")
    assert _state(tmp_path, "s") == _expected(model, n_rows)
    assert len(list(directory.glob("*.parquet"))) == 1


def test_a_rerun_after_compaction_supersedes_the_compacted_rows(tmp_path: Path) -> None:
    key = "d" * 16
    write_rows(tmp_path, "filters", "s", key, _filters(key, 1, n=3), metadata={"v": "1"})
    compact_table(tmp_path, "filters", "s")
    write_rows(tmp_path, "filters", "s", key, _filters(key, 2, n=1), metadata={"v": "2"})
    assert _state(tmp_path, "s") == {key: [("l0", 2)]}
    assert file_metadata(tmp_path, "filters", "s", key) == {
        **file_metadata(tmp_path, "filters", "s", key),
        "v": "2",
    }
    compact_table(tmp_path, "filters", "s")
    assert _state(tmp_path, "s") == {key: [("l0", 2)]}
    assert json.loads(json.dumps(unit_metadata(tmp_path, "filters", "s")[key]))["v"] == "2"


def test_compaction_works_through_a_pyarrow_filesystem_uri(tmp_path: Path) -> None:
    uri = f"file://{tmp_path}"
    for i in range(3):
        write_rows(uri, "filters", "s", f"{i:016x}", _filters(f"{i:016x}", i))
    assert compact_table(uri, "filters", "s").files_after == 1
    assert sorted(read_table(uri, "filters", "s")["collapsed"]) == [0, 0, 1, 1, 2, 2]
    shutil.rmtree(tmp_path / "filters")
    assert read_table(uri, "filters", "s").empty


def test_a_read_that_races_a_compaction_lists_again_and_reads_every_row_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader lists the unit files, a compaction deletes them, the reader opens them: it
    must list again (the new part is in place before any delete), not fail or miss rows."""
    from repair_dist.sweep import results as results_mod

    for i in range(4):
        write_rows(tmp_path, "filters", "s", f"{i:016x}", _filters(f"{i:016x}", i))
    before = _state(tmp_path, "s")
    stale = partitions(tmp_path, "filters", "s")  # listed before the compaction...
    compact_table(tmp_path, "filters", "s")  # ...which deletes every listed unit file
    real = results_mod.partitions
    calls = {"n": 0}

    def first_listing_is_stale(*args, **kwargs):
        calls["n"] += 1
        return stale if calls["n"] == 1 else real(*args, **kwargs)

    monkeypatch.setattr(results_mod, "partitions", first_listing_is_stale)
    assert _state(tmp_path, "s") == before
    assert calls["n"] == 2  # the stale listing failed to open, the second one read the part


def test_a_damaged_part_is_one_error_naming_its_directory(tmp_path: Path) -> None:
    for i in range(2):
        write_rows(tmp_path, "filters", "s", f"{i:016x}", _filters(f"{i:016x}", i))
    compact_table(tmp_path, "filters", "s")
    (part,) = partitions(tmp_path, "filters", "s")[0].parts
    Path(part).write_bytes(Path(part).read_bytes()[:100])  # truncated (a full disk, a crash)
    with pytest.raises(ValueError, match=r"results file under .*filters/sweep=s is damaged"):
        read_table(tmp_path, "filters", "s")


def test_compaction_in_a_child_process_is_the_same_compaction(tmp_path: Path) -> None:
    """The running sweep compacts in a child (its heap dies with it): same rows, same parts."""
    for i in range(6):
        key = f"{i:016x}"
        write_rows(tmp_path, "filters", "s", key, _filters(key, i), metadata={"who": key})
    before = _state(tmp_path, "s")

    compact_sweep_apart(str(tmp_path), "s")

    (part,) = partitions(tmp_path, "filters", "s")
    assert not part.units and len(part.parts) == 1
    assert _state(tmp_path, "s") == before
    assert unit_metadata(tmp_path, "filters", "s")[f"{3:016x}"]["who"] == f"{3:016x}"


def test_a_failed_child_compaction_is_one_oserror_naming_the_sweep(tmp_path: Path) -> None:
    write_rows(tmp_path, "filters", "s", "b" * 16, _filters("b" * 16, 1))
    compact_table(tmp_path, "filters", "s")
    (part,) = partitions(tmp_path, "filters", "s")[0].parts
    Path(part).write_bytes(Path(part).read_bytes()[:100])  # a damaged part the child must read
    write_rows(tmp_path, "filters", "s", "c" * 16, _filters("c" * 16, 2))
    with pytest.raises(
        OSError, match=r"compacting sweep .s. under .* failed \(exit 1\): .*(Parquet|damaged)"
    ):
        compact_sweep_apart(str(tmp_path), "s")
