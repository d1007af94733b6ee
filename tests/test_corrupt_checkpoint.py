"""A damaged checkpoint stops the sweep with one line naming the file and the fix; never retrained
silently, registered weights never retrained at all."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from test_sweep_e2e import assert_each_trial_once, tiny_sweep

import repair_dist as rd
from repair_dist.cli import main as cli_main
from repair_dist.store import QUARANTINE, CheckpointStore, CorruptCheckpoint
from repair_dist.sweep.config import EndpointConfig
from repair_dist.sweep.runner import run_sweep
from repair_dist.sweep.trainables import train_endpoint

pytestmark = pytest.mark.timeout(300)


def _untrained(ep: EndpointConfig) -> torch.nn.Module:
    torch.manual_seed(ep.seed)
    return rd.build_model(ep.model, **ep.model_kwargs())


def _flip_byte(path: Path) -> bytes:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return bytes(data)


def _endpoint_with_checkpoint(tmp_path: Path, meta: dict | None = None):
    sweep = tiny_sweep("damaged", methods=("activation",))
    ep = sweep.endpoints()[0]
    store = CheckpointStore(tmp_path / "results" / "checkpoints")
    store.save(ep.key(), _untrained(ep), {**ep.params(), **(meta or {})})
    return sweep, ep, store


def test_check_tells_absent_from_intact_from_damaged(tmp_path):
    sweep, ep, store = _endpoint_with_checkpoint(tmp_path)
    assert store.check(ep.key()) is True
    assert store.check(sweep.endpoints()[1].key()) is False  # never written: absent
    weights = Path(store.path(ep.key())) / "weights.safetensors"
    damaged = _flip_byte(weights)
    with pytest.raises(CorruptCheckpoint) as err:
        store.check(ep.key())
    message = str(err.value)
    assert "\n" not in message and str(weights) in message and "--retrain-corrupt" in message
    assert not store.has(ep.key())

    moved = store.quarantine(ep.key())
    assert store.check(ep.key()) is False  # gone from its key ...
    assert (Path(moved) / "weights.safetensors").read_bytes() == damaged  # kept as evidence
    assert Path(moved).parent.name == QUARANTINE and (Path(moved) / "meta.json").is_file()
    assert store.keys() == []  # ... and the quarantine is not a key


def test_the_trainable_refuses_to_overwrite_a_damaged_checkpoint(tmp_path):
    _, ep, store = _endpoint_with_checkpoint(tmp_path)
    damaged = _flip_byte(Path(store.path(ep.key())) / "weights.safetensors")
    with pytest.raises(CorruptCheckpoint, match="corrupt or truncated weights"):
        train_endpoint(ep, store)
    assert (Path(store.path(ep.key())) / "weights.safetensors").read_bytes() == damaged


def test_registered_weights_are_never_retrained_even_when_asked(tmp_path, capsys):
    source = tmp_path / "mine.pt"
    sweep, ep, store = _endpoint_with_checkpoint(tmp_path, {"registered_from": str(source)})
    damaged = _flip_byte(Path(store.path(ep.key())) / "weights.safetensors")
    root = tmp_path / "results"
    for retrain in (False, True):
        with pytest.raises(CorruptCheckpoint, match=rf"registered from {source}: re-register"):
            run_sweep(sweep, root=root, mlflow=False, retrain_corrupt=retrain)
    assert (Path(store.path(ep.key())) / "weights.safetensors").read_bytes() == damaged
    assert not (root / "tune").exists()  # refused before Ray or Tune started

    script = tmp_path / "damaged.py"
    script.write_text(
        f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_sweep_e2e import tiny_sweep\n"
        "def build_sweep(smoke=False):\n"
        "    return tiny_sweep('damaged', methods=('activation',))\n"
    )
    code = cli_main(["sweep", str(script), "--root", str(root), "--retrain-corrupt"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "never retrained" in err[0], err


def _corrupt_when_written(weights: Path, stop: threading.Event) -> None:
    while not stop.is_set():
        if weights.with_name("meta.json").is_file():
            time.sleep(0.05)  # the directory was renamed into place whole
            _flip_byte(weights)
            return
        time.sleep(0.02)


def test_damage_found_mid_sweep_is_the_final_error_and_retrain_corrupt_recovers(
    ray_ready, tmp_path, capsys
):
    sweep, ep, store = _endpoint_with_checkpoint(tmp_path)  # seed 0 present, seed 1 to train
    other = sweep.endpoints()[1]
    root = tmp_path / "results"
    weights = Path(store.path(other.key())) / "weights.safetensors"
    stop = threading.Event()
    watcher = threading.Thread(target=_corrupt_when_written, args=(weights, stop), daemon=True)
    watcher.start()  # damages seed 1 right after stage 1 wrote it, before stage 2 reads it
    script = tmp_path / "damaged.py"
    script.write_text(
        f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_sweep_e2e import tiny_sweep\n"
        "def build_sweep(smoke=False):\n"
        "    return tiny_sweep('damaged', methods=('activation',))\n"
    )
    try:
        code = cli_main(["sweep", str(script), "--root", str(root)])
    finally:
        stop.set()
        watcher.join()
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2, last
    assert last.startswith("repair-dist sweep: error: checkpoint ") and str(weights) in last
    assert "--retrain-corrupt" in last

    out = run_sweep(sweep, root=root, mlflow=False, retrain_corrupt=True)
    assert (out.endpoints_trained, out.endpoints_reused) == (1, 1)
    assert store.check(other.key()) and store.check(ep.key())
    quarantined = list((root / "checkpoints" / QUARANTINE).glob(f"{other.key()}-*"))
    assert len(quarantined) == 1 and (quarantined[0] / "weights.safetensors").is_file()
    assert_each_trial_once(str(root), sweep)
