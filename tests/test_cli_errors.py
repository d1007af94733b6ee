"""Every bad input to the CLI ends as ONE line on stderr and exit status 2, never a traceback
(issue 14, item 5). The catalogue below is the list of inputs that used to give a traceback;
each case names a word its message must contain, so a line about something else fails."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from repair_dist.cli import main
from repair_dist.sweep.results import FILE_SCHEMAS, write_rows

GOOD_SWEEP = 'Sweep(name="s", dataset="digits", archs=(ArchGrid("mlp", widths=(8,)),))'


def _script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "my_sweep.py"
    path.write_text(
        "from repair_dist.sweep.config import ArchGrid, Sweep\n\n"
        "def build_sweep(smoke: bool = False):\n" + textwrap.indent(body, "    ") + "\n"
    )
    return str(path)


def _row(table: str, **given: object) -> dict[str, object]:
    """A row of ``table`` with every schema column: ``given`` values, else a plain one."""
    plain = {pa.string(): "x", pa.float64(): 0.5, pa.int64(): 1}
    return {f.name: given.get(f.name, plain[f.type]) for f in FILE_SCHEMAS[table]}


def _root_with_trials(tmp_path: Path) -> str:
    """A results root holding one trial (so commands get past "no trials")."""
    root = tmp_path / "results"
    ids = {"trial_key": "t0", "endpoint_a": "e0", "endpoint_b": "e1", "variant": "full"}
    write_rows(root, "trials", "s", "t0", pd.DataFrame([_row("trials", **ids)]))
    curve = _row("curves", **ids, split="test")
    write_rows(root, "curves", "s", "t0", pd.DataFrame([curve]))
    endpoint = _row("endpoints", endpoint_key="e0")
    write_rows(root, "endpoints", "s", "e0", pd.DataFrame([endpoint]))
    return str(root)


# (id, argv builder, a word the one line must contain)
CASES = [
    (
        "train-unknown-model",
        lambda t: ["train", "--model", "resnet9000", "--out", f"{t}/o"],
        "resnet9000",
    ),
    (
        "train-negative-width",
        lambda t: ["train", "--model", "mlp", "--width", "-2", "--out", f"{t}/o"],
        "--width",
    ),
    (
        "train-vgg-depth-12",
        lambda t: ["train", "--model", "vgg", "--depth", "12", "--out", f"{t}/o"],
        "depth",
    ),
    (
        "train-unknown-norm",
        lambda t: ["train", "--model", "mlp", "--norm", "groupnorm", "--out", f"{t}/o"],
        "groupnorm",
    ),
    (
        "train-negative-epochs",
        lambda t: ["train", "--model", "mlp", "--epochs", "-1", "--out", f"{t}/o"],
        "--epochs",
    ),
    (
        "train-unknown-dataset",
        lambda t: ["train", "--model", "mlp", "--dataset", "mnist-on-mars", "--out", f"{t}/o"],
        "mnist-on-mars",
    ),
    (
        "merge-unknown-variant",
        lambda t: ["merge", f"{t}/a", f"{t}/b", "--variants", "bogus"],
        "bogus",
    ),
    ("merge-one-alpha", lambda t: ["merge", f"{t}/a", f"{t}/b", "--alphas", "1"], "--alphas"),
    ("merge-zero-workers", lambda t: ["merge", f"{t}/a", f"{t}/b", "--workers", "0"], "--workers"),
    (
        "results-group-by-unknown-column",
        lambda t: ["results", "--root", _root_with_trials(t), "--group-by", "colour"],
        "colour",
    ),
    (
        "sweep-misspelt-field",
        lambda t: [
            "sweep",
            _script(t, f"return {GOOD_SWEEP.replace('dataset=', 'datset=')}"),
            "--root",
            f"{t}/r",
        ],
        "did you mean 'dataset'?",
    ),
    (
        "sweep-misspelt-archgrid-field",
        lambda t: [
            "sweep",
            _script(t, f"return {GOOD_SWEEP.replace('widths=', 'width=')}"),
            "--root",
            f"{t}/r",
        ],
        "did you mean 'widths'?",
    ),
    (
        "sweep-syntax-error",
        lambda t: ["sweep", _script(t, f"return {GOOD_SWEEP}("), "--root", f"{t}/r"],
        "syntax error",
    ),
    (
        "sync-mlflow-unavailable",
        lambda t: [
            "sync-mlflow",
            "--root",
            _root_with_trials(t),
            "--tracking-uri",
            "http://127.0.0.1:1",
        ],
        "MLflow",
    ),
]


def _one_line_exit_2(code: object, err: str, word: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert word in lines[0], lines[0]


@pytest.mark.parametrize(("argv", "word"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_and_exit_2(
    argv, word: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = argv(tmp_path)
    capsys.readouterr()
    try:
        code = main(args)
    except SystemExit as stop:  # argparse rejects
        code = stop.code
    _one_line_exit_2(code, capsys.readouterr().err, word)
    assert not (tmp_path / "o").exists()  # rejected before anything was written


def test_the_real_entry_point_too(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "repair_dist.cli", "train", "--model", "nope", "--out", "o"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    _one_line_exit_2(proc.returncode, proc.stderr, "nope")


def test_every_user_error_class_the_cli_knows_exists() -> None:
    """The CLI names its error classes by module (so it never imports the runner only to
    classify an error): each name must resolve, or that error would print a traceback."""
    import importlib

    from repair_dist.cli import _USER_ERROR_CLASSES

    for module, name in _USER_ERROR_CLASSES:
        assert issubclass(getattr(importlib.import_module(module), name), BaseException)
