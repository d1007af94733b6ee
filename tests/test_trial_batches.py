"""Merge trials batched into Tune trials (``Sweep.trial_batch``): Tune's bookkeeping per trial
cost the driver more than a tiny merge trial, so big sweeps run several per Tune trial. Every
unit must still land, be counted and be logged exactly once, and one failing unit must not
stop the others of its batch."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from ray import tune
from test_sweep_e2e import assert_each_trial_once, tiny_sweep

import repair_dist as rd
from repair_dist.location import Location
from repair_dist.store import CheckpointStore
from repair_dist.sweep import results
from repair_dist.sweep.runner import (
    MAX_BATCHES_PER_SLOT,
    MIN_BATCHES_PER_SLOT,
    PREFERRED_BATCH,
    batch_size,
    run_sweep,
    trial_batches,
)
from repair_dist.sweep.tracking import default_tracking_uri
from repair_dist.sweep.trainables import merge_trainable, trial_to_dict

pytestmark = pytest.mark.timeout(300)


def test_a_batched_sweep_lands_and_logs_every_trial_once(ray_ready, tmp_path, capsys) -> None:
    sweep = dataclasses.replace(tiny_sweep("batched", seeds=(0, 1, 2, 3)), trial_batch=3)
    assert len(sweep.trials()) == 4  # two Tune trials: 3 units and 1
    out = run_sweep(sweep, root=tmp_path)
    assert out.trials_run == 4
    assert_each_trial_once(str(tmp_path), sweep, default_tracking_uri(tmp_path))
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("[trials]")]
    assert lines[-1].startswith("[trials] 4/4 done, 0 running, 0 failed"), lines


def test_batches_and_their_automatic_size() -> None:
    sweep = tiny_sweep("sizes", seeds=tuple(range(8)))
    specs = sweep.trials()
    batches = trial_batches(specs, 3)
    assert [len(b) for b in batches.values()] == [3, 3, 2]
    assert [t for b in batches.values() for t in b] == specs  # every trial once, in order
    assert batch_size(dataclasses.replace(sweep, trial_batch=5), 1000) == 5


def test_automatic_batches_bound_the_tune_trials_of_a_fit() -> None:
    """Tune keeps every trial of a fit until it ends: past a few thousand merge trials the
    batches grow instead of multiplying, so the driver's memory is bounded by the slots."""
    sweep = tiny_sweep("sizes")
    for slots in (1, 2, 7, 64):
        for pending in (1, 5, 30, 100, 630, 1260, 2520, 10_000, 123_457):
            size = batch_size(sweep, pending, slots)
            tune_trials = -(-pending // size)  # what trial_batches makes of them
            assert tune_trials <= MAX_BATCHES_PER_SLOT * slots, (slots, pending, size)
            if size > PREFERRED_BATCH:  # grown only as far as the bound needs
                assert -(-pending // (size - 1)) > MAX_BATCHES_PER_SLOT * slots
            if pending >= MIN_BATCHES_PER_SLOT * slots:  # enough to keep every slot busy
                assert tune_trials >= MIN_BATCHES_PER_SLOT * slots, (slots, pending, size)
    assert batch_size(sweep, 30, 2) == 1  # small sweeps: one Tune trial per merge trial
    assert batch_size(sweep, 1260, 2) == PREFERRED_BATCH
    assert batch_size(sweep, 10_000, 2) == 79  # ceil(10000 / 128)


def test_a_failing_unit_does_not_stop_the_rest_of_its_batch(ray_ready, tmp_path: Path) -> None:
    sweep = tiny_sweep("partial")
    store = CheckpointStore(tmp_path / "checkpoints")
    for ep in sweep.endpoints():  # untrained nets: what runs is under test, not accuracy
        torch.manual_seed(ep.seed)
        store.save(ep.key(), rd.build_model(ep.model, **ep.model_kwargs()), ep.params())
    good = sweep.trials()[0]
    missing = dataclasses.replace(good.b, seed=99)  # never trained: loading it fails
    bad = dataclasses.replace(good, b=missing)
    fn = tune.with_parameters(
        merge_trainable,
        specs={"batch": [trial_to_dict(bad), trial_to_dict(good)]},
        store=store,
        root=Location.of(tmp_path),
        data_root=None,
        workers=1,
        cpus=1,
    )
    grid = tune.Tuner(
        tune.with_resources(fn, {"cpu": 1}),
        param_space={"trial": tune.grid_search(["batch"])},
        run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), verbose=0),
    ).fit()
    assert len(grid.errors) == 1  # the batch reports the bad unit's failure...
    done = results.unit_keys(tmp_path, "trials", sweep.name)
    assert done == {good.key()}  # ...after the unit behind it ran anyway


def test_compacting_while_trials_run_loses_and_doubles_nothing(
    ray_ready, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The publisher compacts the tables every ``COMPACT_EVERY`` units (in a child process)
    while later trials still write theirs: every row lands and is logged once, and a rerun
    finds everything done."""
    from repair_dist.sweep import compaction, publish

    monkeypatch.setattr(publish, "COMPACT_EVERY", 2)
    compacted: list[str] = []
    real = compaction.compact_sweep_apart

    def counting(root, sweep):  # noqa: ANN001
        compacted.append(sweep)
        return real(root, sweep)

    monkeypatch.setattr(compaction, "compact_sweep_apart", counting)
    sweep = tiny_sweep("compact-live", seeds=(0, 1, 2, 3))
    out = run_sweep(sweep, root=tmp_path)
    assert out.trials_run == len(sweep.trials()) == 4
    assert len(compacted) == 2  # by the publisher, during the run: every 2 of 4 units
    assert_each_trial_once(str(tmp_path), sweep, default_tracking_uri(tmp_path))
    assert results.unit_keys(tmp_path, "trials", sweep.name) == {t.key() for t in sweep.trials()}
    again = run_sweep(sweep, root=tmp_path)
    assert again.trials_run == 0
