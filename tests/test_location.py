"""A results location is one directory on any pyarrow filesystem: a path, a ``file://`` URI
and an explicit filesystem all name the same files, and the layout is the one DESIGN.md §5
promises, whoever asks."""

from __future__ import annotations

import pickle
from pathlib import Path

import pandas as pd
import pytest
from pyarrow import fs as pafs

from repair_dist.location import Location, check_name
from repair_dist.store import CheckpointStore
from repair_dist.sweep.results import read_table, write_rows


def _three_ways(tmp_path: Path) -> list[Location]:
    """The same directory as a path, a file:// URI and a path inside a SubTreeFileSystem."""
    subtree = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    return [
        Location.of(tmp_path / "r"),
        Location.of((tmp_path / "r").as_uri()),
        Location.of("r", subtree),
    ]


def test_a_path_and_a_file_uri_are_the_same_local_directory(tmp_path: Path) -> None:
    path, uri, subtree = _three_ways(tmp_path)
    assert path == Location.of(path)  # an existing Location passes through
    assert path.local and uri.local and not subtree.local
    assert path.path == uri.path == str(tmp_path / "r") and path.uri == uri.uri
    assert path.local_path == tmp_path / "r" and subtree.local_path is None
    assert path.mlflow_uri == f"sqlite:///{tmp_path / 'r' / 'mlflow.db'}"
    assert path.mlflow_artifacts == str(tmp_path / "r" / "mlartifacts")
    assert subtree.mlflow_uri is None and subtree.mlflow_artifacts is None


def test_relative_paths_resolve_against_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Location.of("results").path == str(tmp_path / "results")


@pytest.mark.parametrize("which", [0, 1, 2])
def test_the_layout_below_a_root(tmp_path: Path, which: int) -> None:
    loc = _three_ways(tmp_path)[which]
    base = loc.path
    assert loc.table_dir("trials") == f"{base}/trials"
    assert loc.table_file("curves", "s", "k1") == f"{base}/curves/sweep=s/k1.parquet"
    assert loc.plot_file("s", "k1") == f"{base}/plots/sweep=s/k1.png"
    assert loc.tune.path == f"{base}/tune" and loc.checkpoints.path == f"{base}/checkpoints"
    assert loc.checkpoints.fs is loc.fs
    storage = loc.tune.ray_storage()
    assert storage["storage_path"] == f"{base}/tune"
    assert ("storage_filesystem" in storage) == (not loc.local)


@pytest.mark.parametrize("bad", ["", "../up", "a/b", ".hidden", "x.parquet", "a'b"])
def test_names_that_would_escape_hide_or_break_a_filter_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="must start with a letter or digit"):
        check_name("sweep", bad)
    with pytest.raises(ValueError, match="sweep"):
        Location.of("r").table_file("trials", bad, "k")
    with pytest.raises(ValueError, match="unknown results table"):
        Location.of("r").table_dir("trails")


def test_every_kind_of_root_reaches_the_same_files(tmp_path: Path) -> None:
    """Tables and checkpoints written through one form of the root read back through another."""
    import torch

    from repair_dist.models import build_model

    path, uri, subtree = _three_ways(tmp_path)
    rows = pd.DataFrame(
        {
            **{"trial_key": ["t"], "method": ["weight"], "variant": ["aligned"]},
            **{"alpha": [0.5], "split": ["test"], "loss": [1.0], "acc": [0.5]},
        }
    )
    written = write_rows(subtree, "curves", "s", "t", rows)
    assert written == subtree.table_file("curves", "s", "t")
    for loc in (path, uri, subtree):
        assert read_table(loc, "curves", "s")["loss"].tolist() == [1.0]
    torch.manual_seed(0)
    net = build_model("mlp", depth=1, width=4)
    CheckpointStore(path.checkpoints).save("k", net, {"seed": 0})
    for loc in (uri, subtree):
        store = CheckpointStore(loc.checkpoints)
        assert store.keys() == ["k"] and store.has("k")
        assert store.local == loc.local


def test_a_location_pickles_for_the_trials(tmp_path: Path) -> None:
    for loc in _three_ways(tmp_path):
        again = pickle.loads(pickle.dumps(loc))
        assert again.uri == loc.uri and again.path == loc.path and again.local == loc.local
    store = CheckpointStore(_three_ways(tmp_path)[2])
    assert pickle.loads(pickle.dumps(store)).uri == store.uri
