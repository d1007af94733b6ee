"""Results tables (DESIGN.md §5): what is written is what is read, with the contract's schemas;
a rerun replaces a trial's rows instead of duplicating them; a frame missing a required column
is refused with the list of what is missing; summaries average over seed pairs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyarrow import fs as pafs

from repair_dist.sweep.results import (
    FILE_SCHEMAS,
    REQUIRED,
    SCHEMAS,
    TABLES,
    format_table,
    read_table,
    summarize,
    table_path,
    write_rows,
)

ARCH = {"model": "mlp", "width": 64.0, "depth": 6, "norm": "none", "dataset": "digits"}


def _endpoints(key: str = "e0", seed: int = 0) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "endpoint_key": key,
                **ARCH,
                "seed": seed,
                "epochs": 3,
                "train_loss": 0.1,
                "train_acc": 0.97,
                "test_loss": 0.2,
                "test_acc": 0.95,
                "collapsed_filters": 0,
                "train_seconds": 1.5,
                "uri": f"/store/{key}",
            }
        ]
    )


def _trials(key: str = "t0", barrier: float = 0.3, pair: tuple[int, int] = (0, 1)) -> pd.DataFrame:
    rows = []
    for i, variant in enumerate(["naive", "aligned", "full"]):
        b = barrier / (i + 1)
        rows.append(
            {
                "trial_key": key,
                "endpoint_a": "e0",
                "endpoint_b": "e1",
                **ARCH,
                "method": "activation",
                "variant": variant,
                "acc_a": 0.95,
                "acc_b": 0.94,
                "loss_a": 0.2,
                "loss_b": 0.21,
                "acc_mid": 0.945 - b,
                "loss_mid": 0.2 + b,
                "barrier_acc_mid": b,
                "barrier_loss_mid": 2 * b,
                "barrier_loss_max": 2 * b,
                "barrier_acc_max": b,
                "reduction_vs_aligned": 1 - b / barrier * 2,
                "reduction_loss_vs_aligned": 0.5,
                "seconds": 2.0,
                "seed_a": pair[0],
                "seed_b": pair[1],
            }
        )
    return pd.DataFrame(rows)


def _curves(key: str = "t0") -> pd.DataFrame:
    rows = [
        {
            "trial_key": key,
            "method": "weight",
            "variant": v,
            "alpha": a,
            "split": s,
            "loss": 1.0 + a,
            "acc": 0.9 - a / 10,
        }
        for v in ("aligned", "full")
        for a in (0.0, 0.5, 1.0)
        for s in ("train", "test")
    ]
    return pd.DataFrame(rows)


def _layers(key: str = "t0") -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "trial_key": key,
                "method": "weight",
                "variant": "aligned",
                "alpha": 0.5,
                "layer": f"blocks.{i}.linear",
                "std_ratio": 0.5 + i / 10,
                "mean_shift": 0.01,
            }
            for i in range(3)
        ]
    )


def _pruning(key: str = "e0") -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "endpoint_key": key,
                **ARCH,
                "seed": 0,
                "kind": "global_l1",
                "sparsity": s,
                "variant": v,
                "train_loss": 0.3,
                "train_acc": 0.9,
                "test_loss": 0.4,
                "test_acc": 0.88,
                "measured_sparsity": s,
                "seconds": 0.1,
            }
            for s in (0.5, 0.9)
            for v in ("dense", "pruned", "repaired-full")
        ]
    )


def _merges(key: str = "m0") -> pd.DataFrame:
    rows = [("none", "naive")] + [
        (m, v) for m in ("weight", "merge_many") for v in ("aligned", "full")
    ]
    return pd.DataFrame(
        [
            {
                "trial_key": key,
                **ARCH,
                "n_models": 3,
                "seeds": "0,1,2",
                "endpoints": "e0,e1,e2",
                "method": m,
                "variant": v,
                "acc": 0.8,
                "loss": 0.5,
                "endpoint_acc": 0.9,
                "endpoint_loss": 0.3,
                "ensemble_acc": 0.93,
                "ensemble_loss": 0.25,
                "barrier_acc": 0.1,
                "barrier_loss": 0.2,
                "ensemble_gap_acc": 0.13,
                "ensemble_gap_loss": 0.25,
                "seconds": 0.1,
            }
            for m, v in rows
        ]
    )


def _filters(key: str = "e0") -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "endpoint_key": key,
                "layer": f"blocks.{i}.linear",
                "channels": 64,
                "collapsed": i,
                "dead": 2 * i,
                "gamma_abs_median": 0.5,
            }
            for i in range(3)
        ]
    )


FRAMES = {
    "endpoints": _endpoints,
    "trials": _trials,
    "curves": _curves,
    "layers": _layers,
    "pruning": _pruning,
    "filters": _filters,
    "merges": _merges,
}


@pytest.mark.parametrize("table", TABLES)
def test_rows_roundtrip_with_the_contract_schema(table: str, tmp_path: Path) -> None:
    df = FRAMES[table]()
    path = write_rows(tmp_path, table, "quick", "k0", df)
    assert path == str(tmp_path / table / "sweep=quick" / "k0.parquet")
    assert path == table_path(tmp_path, table, "quick", "k0")
    # The file holds exactly the file schema: plain strings (not pandas 3's large_string).
    stored = pq.read_schema(path)
    assert stored.remove_metadata() == FILE_SCHEMAS[table].remove_metadata()
    assert pa.large_string() not in stored.types
    back = read_table(tmp_path, table)
    assert list(back.columns) == SCHEMAS[table].names and back.columns[0] == "sweep"
    assert (back["sweep"] == "quick").all()
    for col in df.columns:
        assert back[col].tolist() == df[col].tolist(), col
    # Optional columns the writer did not give come back as nulls, never as errors.
    absent = [c for c in SCHEMAS[table].names if c not in df.columns and c != "sweep"]
    assert back[absent].isna().all().all()


def test_every_required_column_of_the_contract_is_required() -> None:
    assert {
        "trial_key",
        "variant",
        "barrier_acc_mid",
        "barrier_loss_mid",
        "barrier_acc_max",
        "barrier_loss_max",
        "reduction_vs_aligned",
        "seconds",
        "endpoint_a",
        "endpoint_b",
    } <= set(REQUIRED["trials"])
    assert set(REQUIRED["curves"]) >= {"trial_key", "variant", "alpha", "split", "loss", "acc"}
    assert set(REQUIRED["layers"]) >= {"layer", "std_ratio", "mean_shift"}
    assert {"endpoint_key", "seed", "test_acc", "collapsed_filters"} <= set(REQUIRED["endpoints"])
    assert {
        "endpoint_key",
        "kind",
        "sparsity",
        "variant",
        "test_acc",
        "measured_sparsity",
        "seconds",
    } <= set(REQUIRED["pruning"])
    assert {"endpoint_key", "layer", "channels", "collapsed", "dead", "gamma_abs_median"} <= set(
        REQUIRED["filters"]
    )


def test_a_rerun_replaces_the_trial_file_and_never_duplicates(tmp_path: Path) -> None:
    write_rows(tmp_path, "trials", "s", "t0", _trials("t0", barrier=0.3))
    write_rows(tmp_path, "trials", "s", "t1", _trials("t1", barrier=0.2, pair=(2, 3)))
    write_rows(tmp_path, "trials", "s", "t0", _trials("t0", barrier=0.1))  # the rerun
    back = read_table(tmp_path, "trials", "s")
    assert len(back) == 6 and back.groupby("trial_key").size().tolist() == [3, 3]
    naive = back[(back.trial_key == "t0") & (back.variant == "naive")]
    assert naive["barrier_acc_mid"].item() == pytest.approx(0.1)
    assert sorted(os.listdir(tmp_path / "trials" / "sweep=s")) == ["t0.parquet", "t1.parquet"]


def test_a_crashed_writers_temporary_file_is_never_read(tmp_path: Path) -> None:
    write_rows(tmp_path, "curves", "s", "t0", _curves())
    part = tmp_path / "curves" / "sweep=s"
    (part / ".t1.parquet.tmp-0123456789ab").write_bytes(b"PAR1 half a file")
    assert len(read_table(tmp_path, "curves")) == len(_curves())


def test_missing_required_columns_are_all_listed(tmp_path: Path) -> None:
    df = _trials().drop(columns=["barrier_acc_mid", "seconds", "endpoint_b"])
    with pytest.raises(ValueError) as err:
        write_rows(tmp_path, "trials", "s", "t0", df)
    msg = str(err.value)
    assert "lack required column(s) endpoint_b, barrier_acc_mid, seconds" in msg
    assert not (tmp_path / "trials").exists()


def test_unknown_columns_are_an_error_unless_dropped(tmp_path: Path) -> None:
    df = _curves().assign(tempreature=1.0)
    with pytest.raises(ValueError, match="outside the schema: tempreature"):
        write_rows(tmp_path, "curves", "s", "t0", df)
    write_rows(tmp_path, "curves", "s", "t0", df, extra="drop")
    assert "tempreature" not in read_table(tmp_path, "curves").columns


def test_types_are_checked_and_nulls_kept(tmp_path: Path) -> None:
    bad = _endpoints().assign(depth=[1.5])
    with pytest.raises(ValueError, match="column 'depth'"):
        write_rows(tmp_path, "endpoints", "s", "e0", bad)
    # torchvision ResNets have no depth: a null, and ints given as floats are fine.
    ok = _endpoints().assign(depth=[None], width=[2], seed=[3.0])
    write_rows(tmp_path, "endpoints", "s", "e0", ok)
    back = read_table(tmp_path, "endpoints")
    assert back["depth"].isna().item() and back["width"].item() == 2.0
    assert back["seed"].item() == 3


def test_a_sweep_column_must_agree_with_the_partition(tmp_path: Path) -> None:
    write_rows(tmp_path, "layers", "s", "t0", _layers().assign(sweep="s"))
    with pytest.raises(ValueError, match="sweep="):
        write_rows(tmp_path, "layers", "s", "t1", _layers("t1").assign(sweep="other"))


def test_read_one_sweep_all_sweeps_columns_and_nothing(tmp_path: Path) -> None:
    empty = read_table(tmp_path, "trials")
    assert empty.empty and list(empty.columns) == SCHEMAS["trials"].names
    write_rows(tmp_path, "trials", "a", "t0", _trials("t0"))
    write_rows(tmp_path, "trials", "b.v2", "t1", _trials("t1"))
    assert set(read_table(tmp_path, "trials")["sweep"]) == {"a", "b.v2"}
    only_b = read_table(tmp_path, "trials", "b.v2", columns=["sweep", "trial_key"])
    assert list(only_b.columns) == ["sweep", "trial_key"] and set(only_b.trial_key) == {"t1"}
    assert read_table(tmp_path, "trials", "never").empty
    with pytest.raises(ValueError, match="no column"):
        read_table(tmp_path, "trials", columns=["nope"])
    with pytest.raises(ValueError, match="unknown results table"):
        read_table(tmp_path, "trails")


@pytest.mark.parametrize("bad", ["", "../up", "a/b", ".hidden", "x.parquet"])
def test_names_that_would_escape_or_hide_a_file_are_refused(bad: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must start with a letter or digit"):
        write_rows(tmp_path, "curves", bad, "t0", _curves())
    with pytest.raises(ValueError, match="must start with a letter or digit"):
        write_rows(tmp_path, "curves", "s", bad, _curves())


def test_a_remote_filesystem_roundtrips_and_replaces(tmp_path: Path) -> None:
    remote = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    write_rows("results", "trials", "s", "t0", _trials(barrier=0.3), filesystem=remote)
    write_rows("results", "trials", "s", "t0", _trials(barrier=0.1), filesystem=remote)
    back = read_table("results", "trials", filesystem=remote)
    assert len(back) == 3 and back["barrier_acc_mid"].max() == pytest.approx(0.1)
    assert sorted(os.listdir(tmp_path / "results" / "trials" / "sweep=s")) == ["t0.parquet"]
    # and a file:// URI reads the same files as the plain path
    assert len(read_table((tmp_path / "results").as_uri(), "trials", "s")) == 3


# -------------------------------------------------------------------------- summaries, tables


def _two_pairs() -> pd.DataFrame:
    return pd.concat(
        [_trials("t0", barrier=0.3, pair=(0, 1)), _trials("t1", barrier=0.1, pair=(2, 3))]
    ).assign(sweep="s")


def test_summarize_averages_over_seed_pairs_in_variant_order() -> None:
    out = summarize(_two_pairs())
    assert out["variant"].tolist() == ["naive", "aligned", "full"]
    assert out["n"].tolist() == [2, 2, 2]
    naive = out.iloc[0]
    assert naive["barrier_acc_mid_mean"] == pytest.approx(0.2)
    assert naive["barrier_acc_mid_std"] == pytest.approx(np.std([0.3, 0.1], ddof=1))
    assert list(out.columns[:8]) == [
        "sweep",
        "model",
        "dataset",
        "width",
        "depth",
        "norm",
        "method",
        "variant",
    ]


def test_summarize_custom_groups_single_pairs_and_errors() -> None:
    one = summarize(_trials(), group_by=["width"], metrics=["barrier_loss_mid"])
    assert list(one.columns) == [
        "width",
        "method",
        "variant",
        "n",
        "barrier_loss_mid_mean",
        "barrier_loss_mid_std",
    ]
    assert one["barrier_loss_mid_std"].isna().all()  # one pair: no spread to report
    with pytest.raises(ValueError, match="no column"):
        summarize(_trials(), group_by=["lr"])
    assert summarize(_trials().iloc[:0]).empty


def test_format_table_renders_mean_plus_minus_std_csv_and_json() -> None:
    out = summarize(_two_pairs())
    text = format_table(out)
    assert "barrier_acc_mid" in text and "±" in text and "_std" not in text
    assert "0.2 ± 0.14" in text
    assert format_table(out, "csv").splitlines()[0].startswith("sweep,model")
    assert len(json.loads(format_table(out, "json"))) == 3
    assert format_table(out.iloc[:0]) == "(no rows)"
    nulls = format_table(pd.DataFrame({"a": pd.array([pd.NA, 1.5], dtype="Float64")}))
    assert "<NA>" not in nulls and "-" in nulls
    with pytest.raises(ValueError, match="unknown format"):
        format_table(out, "xml")
