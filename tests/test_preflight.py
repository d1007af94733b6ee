"""Storage faults and every up-front problem as one message, before Ray starts.

Tests may run as root, where ``chmod`` cannot make a directory read-only; a path below a file
is unwritable for everyone, and ``RLIMIT_FSIZE`` (with SIGXFSZ ignored) makes writes fail the
way a full disk does, without a tiny filesystem.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from repair_dist.cli import main as cli_main
from repair_dist.location import Location
from repair_dist.storage import StorageError, check_writable

pytestmark = pytest.mark.timeout(300)
REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}

SCRIPT = textwrap.dedent(
    """
    from repair_dist.sweep.config import ArchGrid, Sweep

    def build_sweep(smoke=False):
        return Sweep(
            name="preflight",
            dataset="digits",
            archs=(ArchGrid("mlp", widths=(16,), depths=(3,)),),
            seeds=(0, 1),
            epochs=0,
            methods=("activation",),
            gpus_per_worker=1,
        )
    """
)


def test_every_problem_of_a_sweep_is_listed_in_one_message_before_ray_starts(tmp_path, capsys):
    import ray

    for name in ("root-file", "store-file", "mlflow-file"):
        (tmp_path / name).write_text("a file, not a directory\n")
    script = tmp_path / "preflight.py"
    script.write_text(SCRIPT)
    root, store = tmp_path / "root-file" / "results", tmp_path / "store-file" / "ckpts"
    tracking = f"sqlite:///{tmp_path / 'mlflow-file' / 'db' / 'mlflow.db'}"
    before = sorted(p.name for p in tmp_path.iterdir())
    ray_was_up = ray.is_initialized()
    code = cli_main(
        ["sweep", str(script), "--root", str(root), "--store", str(store)]
        + ["--tracking-uri", tracking]
    )
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[0] == "repair-dist sweep: error: invalid sweep 'preflight' (5 problems):", err
    assert any(line.startswith("  - epochs:") for line in lines)
    assert any("gpus_per_worker" in line and "no GPU" in line for line in lines)
    assert (
        f"  - results root (--root) {root}: {tmp_path / 'root-file'} is a file, not a directory"
        in lines
    )
    assert (
        f"  - checkpoint store (--store) {store}: {tmp_path / 'store-file'} is a file, not a directory"
        in lines
    )
    assert any(line.startswith("  - MLflow store directory") for line in lines)
    assert "Rerun" not in err and "Traceback" not in err
    assert ray.is_initialized() == ray_was_up  # no Ray was started for it
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_a_bad_tune_state_period_in_the_environment_is_one_line_before_ray_starts(
    tmp_path, capsys, monkeypatch
):
    script = tmp_path / "preflight.py"
    script.write_text(SCRIPT.replace("gpus_per_worker=1", "gpus_per_worker=0"))
    args = ["sweep", str(script), "--root", str(tmp_path / "results")]
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "bogus")
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "  - environment TUNE_GLOBAL_CHECKPOINT_S='bogus': Tune reads seconds" in err, err
    assert "could not convert" not in err and "Traceback" not in err
    for fine in ("auto", "30"):  # Tune's own values pass (the sweep's epochs=0 still fails)
        monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", fine)
        assert cli_main(args) == 2
        assert "TUNE_GLOBAL_CHECKPOINT_S" not in capsys.readouterr().err


def test_check_writable_passes_a_good_directory_and_leaves_no_probe(tmp_path):
    assert check_writable("results root", Location.of(tmp_path / "new" / "dir")) is None
    assert list(tmp_path.iterdir()) == []  # not even the directories it made for the probe
    (tmp_path / "old").mkdir()
    assert check_writable("results root", Location.of(tmp_path / "old")) is None
    assert [p.name for p in tmp_path.iterdir()] == ["old"] and not any((tmp_path / "old").iterdir())


def _limited(limit: int):
    def setup() -> None:  # a write past the limit then fails with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return setup


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_leaves_nothing(tmp_path):
    out = tmp_path / "ckpt"
    proc = subprocess.run(
        [sys.executable, "-m", "repair_dist.cli", "train", "--model", "mlp", "--width", "256"]
        + ["--epochs", "1", "--out", str(out)],
        env=ENV,
        capture_output=True,
        text=True,
        preexec_fn=_limited(64 * 1024),  # the weights are ~0.4 MB
        timeout=240,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(
        f"repair-dist train: error: cannot write checkpoint {out}"
    )
    assert "File too large" in lines[0] and "free some space" in lines[0]
    assert list(tmp_path.iterdir()) == []  # no checkpoint, no temporary sibling


WRITE_ROWS = textwrap.dedent(
    """
    import pandas as pd
    from repair_dist.sweep import results
    from repair_dist.storage import StorageError
    import numpy as np
    n = 20000
    noise = np.random.default_rng(0).random(n)  # incompressible: far past the file size limit
    rows = pd.DataFrame({{
        "endpoint_key": [f"k{{i}}" for i in range(n)], "model": "mlp", "width": 16.0,
        "depth": 3, "norm": "none", "dataset": "digits", "seed": range(n), "epochs": 1,
        "train_loss": noise, "train_acc": noise, "test_loss": noise, "test_acc": noise,
        "collapsed_filters": 0, "train_seconds": noise, "uri": "x",
    }})
    try:
        results.write_rows({root!r}, "endpoints", "s", "big", rows)
    except StorageError as err:
        print(err)
    """
)


def test_a_full_disk_while_writing_parquet_is_one_line_and_leaves_nothing(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", WRITE_ROWS.format(root=str(tmp_path))],
        env=ENV,
        capture_output=True,
        text=True,
        preexec_fn=_limited(16 * 1024),
        timeout=120,
    )
    final = tmp_path / "endpoints" / "sweep=s" / "big.parquet"
    assert proc.stdout.startswith(f"cannot write endpoints rows {final}"), proc.stderr[-3000:]
    assert list((tmp_path / "endpoints" / "sweep=s").iterdir()) == []  # no temporary file


def test_a_trial_that_hit_a_full_disk_ends_the_sweep_with_that_path(ray_ready):
    from ray.exceptions import RayTaskError

    from repair_dist.sweep.runner import _raise_if_storage

    @ray_ready.remote
    def trial() -> None:
        raise OSError(
            errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/store/abc/weights.safetensors"
        )

    with pytest.raises(RayTaskError) as failed:
        ray_ready.get(trial.remote())
    with pytest.raises(StorageError) as err:
        _raise_if_storage([failed.value])
    assert str(err.value) == (
        "cannot write /data/store/abc/weights.safetensors: No space left on device; "
        "free some space (or raise the quota), then rerun: finished work is kept"
    )
