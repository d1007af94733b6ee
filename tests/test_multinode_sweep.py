"""The ImageNet sweep's smoke version on a 3-node Ray cluster whose worker nodes advertise a GPU.

Work runs on CPU; the GPU resource makes Ray place exactly one pass worker per "GPU" node, as
on a real GPU cluster. A worker node is killed mid-trial and a fresh one joins (as the
autoscaler would add): the sweep still completes with every trial exactly once, and its
barriers equal a single-process rerun of the same trials.
"""

from __future__ import annotations

import importlib.util
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import local_cluster

from repair_dist.store import CheckpointStore
from repair_dist.sweep import results
from repair_dist.sweep.runner import run_sweep
from repair_dist.sweep.trainables import run_merge_trial

pytestmark = pytest.mark.timeout(400)
REPO = Path(__file__).resolve().parents[1]


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "sweeps" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gpu_cluster(tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv(
        "REPAIR_DIST_SMOKE_IMAGENET", str(tmp_path_factory.mktemp("tiny-imagenet"))
    )
    with local_cluster(2, num_cpus=1, num_gpus=1) as made:
        yield made


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def _wait_for_endpoints(store_root: Path, count: int, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (
            store_root.is_dir()
            and len([p for p in store_root.iterdir() if not p.name.startswith(".")]) >= count
        ):
            return
        time.sleep(0.2)
    raise TimeoutError("stage 1 did not finish")


def test_imagenet_smoke_survives_a_lost_gpu_node_and_matches_one_worker(gpu_cluster, tmp_path):
    c, nodes = gpu_cluster
    script = _load_script("imagenet_resnet50")
    sweep = script.build_sweep(smoke=True)
    assert sweep.gpus_per_worker == 1.0 and sweep.workers_per_trial == 2  # one worker per GPU node
    # The sweep's driver runs in a thread: Ray nodes can only be added from the main thread.
    outcome: dict = {}

    def drive() -> None:
        try:
            outcome["out"] = run_sweep(sweep, root=tmp_path, address=c.address)
        except BaseException as err:  # surfaced below
            outcome["error"] = err

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    _wait_for_endpoints(tmp_path / "checkpoints", len(sweep.endpoints()))
    time.sleep(4.0)  # inside the first merge trial's passes
    c.remove_node(nodes[0], allow_graceful=False)
    c.add_node(num_cpus=1, num_gpus=1, node_ip_address="127.0.0.1")  # the autoscaler's part
    driver.join(timeout=330)
    assert not driver.is_alive(), "the sweep did not finish after losing a node"
    if "error" in outcome:
        raise outcome["error"]
    assert outcome["out"].trials_run == len(sweep.trials())

    trials = results.read_table(tmp_path, "trials", sweep.name)
    assert set(trials["trial_key"]) == {t.key() for t in sweep.trials()}
    assert not trials.duplicated(["trial_key", "variant"]).any()
    assert len(trials) == len(sweep.trials()) * (2 + len(sweep.variants))

    # The same trials in one process: identical permutations give identical barriers.
    store = CheckpointStore(tmp_path / "checkpoints")
    for spec in sweep.trials():
        single = run_merge_trial(spec, store, str(tmp_path / "single"), data_root=sweep.data_root)[
            "trials"
        ]
        sharded = trials[trials["trial_key"] == spec.key()]
        cols = ["variant", "acc_mid", "loss_mid", "barrier_loss_mid"]
        a = single[cols].sort_values("variant").reset_index(drop=True)
        b = sharded[cols].sort_values("variant").reset_index(drop=True)
        pd.testing.assert_frame_equal(b, a, check_dtype=False, rtol=1e-5, atol=1e-6)
