"""The paper's effect on real data (digits): variance collapse, and REPAIR undoing it."""

from __future__ import annotations

import pytest
import torch

import repair_dist as rd
from repair_dist.pipeline import merge_trial


def _endpoint(name: str, seed: int, train, epochs: int, **cfg):
    torch.manual_seed(seed)
    net = rd.build_model(name, **cfg)
    return rd.train_model(net, train, epochs=epochs, seed=seed)


@pytest.fixture(scope="module")
def digits():
    return rd.load_dataset("digits")


@pytest.fixture(scope="module")
def mlp_pairs(digits):
    train, _ = digits
    nets = [
        _endpoint("mlp", s, train, 30, depth=8, width=64, norm="none", in_shape=(1, 8, 8))
        for s in range(4)
    ]
    return [(nets[0], nets[1]), (nets[2], nets[3])]


def test_deep_mlp_repair_removes_most_of_the_aligned_loss_barrier(digits, mlp_pairs):
    train, test = digits
    results = [
        merge_trial(a, b, train, test, variants=["full"], alphas=[0.0, 0.5, 1.0]).barriers
        for a, b in mlp_pairs
    ]
    reductions = []
    for table in results:
        row = table.set_index("variant")
        assert min(row.loc["aligned", ["acc_a", "acc_b"]]) >= 0.93  # real endpoints
        assert row.loc["naive", "acc_mid"] < 0.35  # naive midpoint: near chance (10 classes)
        assert row.loc["aligned", "acc_mid"] > row.loc["naive", "acc_mid"] + 0.3
        assert row.loc["aligned", "barrier_loss_mid"] > 0.1  # collapse leaves a real barrier
        reductions.append(row.loc["full", "reduction_loss_vs_aligned"])
    assert sum(reductions) / len(reductions) >= 0.40, reductions


@pytest.mark.parametrize("norm", ["bn", "none"])
def test_small_vgg_renormalisation_beats_plain_alignment(digits, norm):
    train, test = digits
    cfg = dict(depth=11, width=0.25, norm=norm, in_shape=(1, 8, 8))
    a = _endpoint("vgg", 0, train, 12, **cfg)
    b = _endpoint("vgg", 1, train, 12, **cfg)
    variant = "reset" if norm == "bn" else "full"
    table = merge_trial(a, b, train, test, variants=[variant], alphas=[0.0, 0.5, 1.0]).barriers
    row = table.set_index("variant")
    assert min(row.loc["aligned", ["acc_a", "acc_b"]]) >= 0.9
    assert row.loc[variant, "barrier_loss_mid"] < row.loc["aligned", "barrier_loss_mid"]
    assert row.loc[variant, "acc_mid"] > row.loc["aligned", "acc_mid"]
