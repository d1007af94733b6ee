"""Small faults of issue 14, item 9: each reproduced here first, then held.

- SIGTERM to ``repair-dist ui`` stops the MLflow server and its workers (port released);
  MLflow runs with telemetry off.
- Progress lines count trials, not Tune events: a retried trial is one trial.
- An MLflow outage is warned about once, not once per trial.
- Tune's ``Tuner.restore(...)`` hint (which contradicts "rerun the same command") is dropped.
- ``weights.safetensors`` gets the same permissions as every other file (umask honoured).
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pyarrow as pa
import pytest
from ray import tune

from repair_dist.checkpoint import META_FILE, WEIGHTS_FILE, save_checkpoint
from repair_dist.cli import _print_outcome
from repair_dist.models import build_model
from repair_dist.sweep.config import ArchGrid, Sweep
from repair_dist.sweep.publish import TUNE_LOGGER, Progress, TrialPublisher
from repair_dist.sweep.results import FILE_SCHEMAS, write_rows
from repair_dist.sweep.runner import SweepOutcome
from repair_dist.sweep.tracking import Tracker

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")


# ---- repair-dist ui ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (from /proc; zombies count as gone)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                parent[int(entry.name)] = int(fields[1])
    out, frontier = [], [pid]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier]
        out += kids
        frontier = kids
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _environ(pid: int) -> list[bytes] | None:
    """``pid``'s environment, or None if it exited since it was listed.

    The server may start short-lived helpers (a worker being replaced, a shell), so a process
    seen in ``_descendants`` can be gone a moment later; CI once hit exactly that.
    """
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except (ProcessLookupError, FileNotFoundError):
        return None


def test_sigterm_to_ui_stops_the_mlflow_server_and_frees_its_port(mlflow_root: Path) -> None:
    port = _free_port()
    ui = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "repair_dist.cli",
            "ui",
            "--root",
            str(mlflow_root),
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    family: list[int] = []
    try:
        deadline = time.monotonic() + 240
        while not _listening(port):
            assert ui.poll() is None and time.monotonic() < deadline, "the UI did not start"
            time.sleep(0.5)
        family = _descendants(ui.pid)
        assert family, "the MLflow server should run as a child of repair-dist ui"
        envs = [env for env in map(_environ, family) if env is not None]
        assert envs, "every MLflow process vanished before its environment could be read"
        assert all(b"MLFLOW_DISABLE_TELEMETRY=true" in env for env in envs)

        ui.send_signal(signal.SIGTERM)
        ui.wait(timeout=60)
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in family) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in family if _alive(p)], "an MLflow process outlived the UI"
        assert not _listening(port)
    finally:
        for pid in [ui.pid, *family]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


# ---- progress under retries ----------------------------------------------------------------


def test_progress_counts_a_retried_trial_once(
    ray_ready, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def _fails_once(config: dict) -> None:  # local: Ray ships it by value to the workers
        marker = Path(config["marker"])
        if not marker.exists():
            marker.touch()
            raise RuntimeError("first attempt fails (a lost node, say)")
        tune.report({"ok": 1})

    configs = [str(tmp_path / "retried"), str(tmp_path / "fine")]
    (tmp_path / "fine").touch()  # this one succeeds at once
    progress = Progress("t", len(configs))
    tuner = tune.Tuner(
        tune.with_resources(_fails_once, {"cpu": 1}),
        param_space={"marker": tune.grid_search(configs)},
        run_config=tune.RunConfig(
            storage_path=str(tmp_path / "tune"),
            callbacks=[progress],
            failure_config=tune.FailureConfig(max_failures=1),
            verbose=0,
        ),
    )
    results = tuner.fit()
    assert not results.errors and (tmp_path / "retried").exists()  # it did fail, then pass
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("[t]")]
    assert lines[-1].startswith("[t] 2/2 done, 0 running, 0 failed"), lines


def test_progress_counts_batched_units_once_and_keeps_no_key_of_an_ended_trial(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Batches report their units as they finish, a retried batch reports them again; once a
    Tune trial ends only its count is kept (the driver's memory follows Tune trials)."""
    progress = Progress("b", 6, every=0.0)
    first, second, plain = (SimpleNamespace(trial_id=i) for i in ("t1", "t2", "t3"))
    progress.on_trial_start(0, [], first)
    progress.on_trial_result(0, [], first, {"units": ["a", "b"]})
    progress.on_trial_recover(0, [], first)  # its node died: Tune starts it again
    progress.on_trial_start(0, [], first)
    progress.on_trial_result(0, [], first, {"units": ["a", "b"]})  # reported again
    progress.on_trial_result(0, [], first, {"units": ["c"]})
    assert (progress.done, progress.running) == (3, 1)
    progress.on_trial_complete(0, [], first)
    progress.on_trial_start(0, [], second)
    progress.on_trial_result(0, [], second, {"units": ["d"]})
    progress.on_trial_error(0, [], second)  # failed for good after finishing one unit
    progress.on_trial_start(0, [], plain)
    progress.on_trial_complete(0, [], plain)  # a trial without units counts once
    progress.on_trial_complete(0, [], plain)  # reported twice: still once
    assert (progress.done, progress.running, progress.failed) == (5, 0, 1)
    assert progress._units == {}  # no unit key outlives its Tune trial
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("[b] 5/6 done, 0 running, 1 failed"), last


def test_tune_saves_its_experiment_state_when_a_fit_starts_and_ends_only(
    ray_ready, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tune's default saves every trial's state every 10 s into ever longer strings, which
    fragmented the driver's heap; sweeps resume by content, so Tune saves at the ends only."""
    from ray.tune.execution.tune_controller import TuneController

    saves: list[float] = []
    save = TuneController.save_to_dir

    def counted(self: TuneController) -> None:
        saves.append(time.monotonic())
        save(self)

    monkeypatch.setattr(TuneController, "save_to_dir", counted)

    def _reports_for_12_s(config: dict) -> None:
        for _ in range(24):
            time.sleep(0.5)
            tune.report({"step": 1})

    tuner = tune.Tuner(
        tune.with_resources(_reports_for_12_s, {"cpu": 1}),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), verbose=0),
    )
    started = time.monotonic()
    assert not tuner.fit().errors
    assert time.monotonic() - started > 12  # Tune's own period (10 s) has passed
    assert len(saves) == 2, saves  # its first step and the end of the fit


# ---- MLflow outage: warned once ------------------------------------------------------------


def _row(table: str, **given: object) -> dict[str, object]:
    plain = {pa.string(): "x", pa.float64(): 0.5, pa.int64(): 1}
    return {f.name: given.get(f.name, plain[f.type]) for f in FILE_SCHEMAS[table]}


def test_an_mlflow_outage_is_warned_about_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = Sweep(
        name="s",
        dataset="digits",
        archs=(ArchGrid("mlp", widths=(8,)),),
        seeds=(0, 1, 2, 3),
        alphas=3,
    )
    specs = sweep.trials()
    root = str(tmp_path)
    for spec in specs:
        ids = {"trial_key": spec.key(), "variant": "full"}
        write_rows(root, "trials", "s", spec.key(), pd.DataFrame([_row("trials", **ids)]))
        curves = [_row("curves", **ids, alpha=a, split="test") for a in (0.0, 1.0)]
        write_rows(root, "curves", "s", spec.key(), pd.DataFrame(curves))
    publisher = TrialPublisher(Tracker("http://127.0.0.1:9", "s", timeout=2), root)
    with caplog.at_level(logging.WARNING):
        for spec in specs:
            publisher.publish(spec)
    assert len(publisher.problems) == len(specs) > 2  # every failure is recorded...
    warned = [r for r in caplog.records if "MLflow unavailable" in r.getMessage()]
    assert len(warned) == 1  # ...and warned about once

    outcome = SweepOutcome("s", root, None, 0, 0, 0, 0, 1.0, mlflow_problems=publisher.problems)
    _print_outcome(outcome)
    printed = [ln for ln in capsys.readouterr().out.splitlines() if "MLflow" in ln]
    assert len(printed) == 1 and f"{len(specs) - 1} more failures" in printed[0], printed


# ---- Tune's restore hint -------------------------------------------------------------------


def test_tunes_restore_hint_is_dropped_and_other_warnings_are_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tune_logger = importlib.import_module("ray.tune.tune").logger
    assert tune_logger.name == TUNE_LOGGER  # the logger Tune really prints the hint through
    with caplog.at_level(logging.WARNING, logger=TUNE_LOGGER):
        tune_logger.warning(
            "Experiment has been interrupted, but the most recent state was saved.\n"
            'Resume experiment with: Tuner.restore(path="/r/tune/s-trials", trainable=...)'
        )
        tune_logger.warning("some other Tune warning")
    assert [r.getMessage() for r in caplog.records] == ["some other Tune warning"]


# ---- file permissions ----------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_the_weights_file_gets_the_umask_mode_like_meta_json(tmp_path: Path, umask: int) -> None:
    net = build_model("mlp", in_shape=(1, 8, 8), num_classes=10, width=4, depth=2)
    previous = os.umask(umask)
    try:
        save_checkpoint(net, tmp_path / "ck", {"seed": 0})
    finally:
        os.umask(previous)
    modes = {
        name: (tmp_path / "ck" / name).stat().st_mode & 0o777 for name in (WEIGHTS_FILE, META_FILE)
    }
    assert modes == {WEIGHTS_FILE: 0o666 & ~umask, META_FILE: 0o666 & ~umask}
