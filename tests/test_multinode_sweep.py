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


def _wait_for_a_trial_worker_on(node_id: str, root: Path, sweep, timeout_s: float = 300) -> dict:
    """Block until a merge trial is running with a pass worker on ``node_id``; returns what
    was seen. Pass workers (``ShardWorker`` actors) exist only inside merge trials, so one
    alive on the node while no trial has finished yet means the first trial is mid-run."""
    from ray._private import state

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = state.actors(actor_state_name="ALIVE").values()
        workers = [
            a["ActorID"]
            for a in alive
            if a["ActorClassName"] == "ShardWorker" and a["Address"]["NodeID"] == node_id
        ]
        finished = results.read_table(root, "trials", sweep.name, columns=["trial_key"])
        if workers:
            return {"workers": workers, "trials_finished": finished["trial_key"].nunique()}
        time.sleep(0.05)
    raise TimeoutError(f"no merge trial ran a pass worker on node {node_id}")


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
    seen = _wait_for_a_trial_worker_on(nodes[0].node_id, tmp_path, sweep)
    c.remove_node(nodes[0], allow_graceful=False)
    # The kill landed inside a trial: a trial's pass worker lived on that node, no trial had
    # finished, and that worker died with the node.
    assert seen["workers"] and seen["trials_finished"] == 0, seen
    c.add_node(num_cpus=1, num_gpus=1, node_ip_address="127.0.0.1")  # the autoscaler's part
    driver.join(timeout=330)
    assert not driver.is_alive(), "the sweep did not finish after losing a node"
    if "error" in outcome:
        raise outcome["error"]
    assert outcome["out"].trials_run == len(sweep.trials())
    from ray._private import state

    assert all(state.actors(actor_id=w)["State"] == "DEAD" for w in seen["workers"])

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
