"""Pruning with masks on the net, post-pruning repair and filter-collapse counts: invariants."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import repair_dist as rd
from repair_dist.collapse import FILTER_COLUMNS
from repair_dist.data import BatchPlan
from repair_dist.merge import interpolate
from repair_dist.prune import (
    PRUNE_KINDS,
    PRUNING_COLUMNS,
    prunable_points,
    pruning_rows,
    reattach_masks,
)
from repair_dist.repair import endpoint_statistics, fold_affine
from repair_dist.store import load_checkpoint, save_checkpoint

SPARSITIES = (0.5, 0.9)


@pytest.fixture(scope="module")
def digits() -> TensorDataset:
    train, _ = rd.load_dataset("digits")
    x, y = train.tensors[:2]
    return TensorDataset(x[:256], y[:256])


def one_batch(data: TensorDataset) -> BatchPlan:
    """The whole set as one batch: REPAIR's batch statistics are then the data statistics."""
    return BatchPlan(data, batch_size=len(data))


def mlp(seed: int = 0, norm: str = "none") -> nn.Module:
    torch.manual_seed(seed)
    return rd.build_model("mlp", depth=4, width=32, norm=norm, in_shape=(1, 8, 8)).eval()


def vgg(seed: int = 0, norm: str = "bn") -> nn.Module:
    torch.manual_seed(seed)
    net = rd.build_model("vgg", depth=11, width=0.125, norm=norm, in_shape=(1, 8, 8))
    with torch.no_grad():  # trained-looking BN parameters: no ties between |gamma|s
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.2, 2.0)
                m.bias.uniform_(-0.5, 0.5)
    return net.eval()


def layer_weights(net: nn.Module) -> list[torch.Tensor]:
    modules = dict(net.named_modules())
    return [modules[rp.module].weight.detach() for rp in prunable_points(net)]


def zero_pattern(net: nn.Module) -> list[torch.Tensor]:
    return [w == 0 for w in layer_weights(net)]


def removed_filters(net: nn.Module) -> list[torch.Tensor]:
    return [(w.flatten(1) == 0).all(1) for w in layer_weights(net)]


def check_exact(net: nn.Module, sparsity: float, kind: str) -> None:
    """The requested amount is removed exactly (globally or per layer, as the kind says)."""
    if kind in ("global_l1", "layer_l1"):
        zeros = [int(z.sum()) for z in zero_pattern(net)]
        sizes = [w.numel() for w in layer_weights(net)]
        if kind == "global_l1":
            assert sum(zeros) == round(sparsity * sum(sizes))
        else:
            assert zeros == [round(sparsity * n) for n in sizes]
    else:
        removed = [int(r.sum()) for r in removed_filters(net)]
        sizes = [len(r) for r in removed_filters(net)]
        if kind == "filter_bn":
            assert sum(removed) == round(sparsity * sum(sizes))
        else:
            assert removed == [round(sparsity * n) for n in sizes]


def net_for(kind: str) -> nn.Module:
    return vgg() if kind == "filter_bn" else mlp()


@pytest.mark.parametrize("kind", PRUNE_KINDS)
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_prune_removes_exactly_the_requested_amount(kind: str, sparsity: float) -> None:
    net = net_for(kind)
    pruned = rd.prune(net, sparsity, kind)
    check_exact(pruned, sparsity, kind)
    if kind == "global_l1":
        total = sum(w.numel() for w in layer_weights(net))
        assert rd.measured_sparsity(pruned) == round(sparsity * total) / total
    # the input net is untouched
    assert rd.measured_sparsity(net) == 0.0


@pytest.mark.parametrize("kind", ["filter_l1", "filter_bn"])
def test_removed_filters_output_nothing(kind: str, digits: TensorDataset) -> None:
    net = rd.prune(vgg(), 0.5, kind)
    modules = dict(net.named_modules())
    outs: dict[str, torch.Tensor] = {}
    hooks = [
        modules[rp.norm or rp.module].register_forward_hook(
            lambda _m, _i, o, name=rp.module: outs.__setitem__(name, o)
        )
        for rp in prunable_points(net)
    ]
    with torch.no_grad():
        net(digits.tensors[0][:64])
    for h in hooks:
        h.remove()
    for rp, removed in zip(prunable_points(net), removed_filters(net), strict=True):
        assert removed.any()
        assert (outs[rp.module][:, removed] == 0).all()
        assert (outs[rp.module][:, ~removed] != 0).any()


@pytest.mark.parametrize(
    "kind, variant",
    [(kind, "full") for kind in PRUNE_KINDS]
    + [("global_l1", "rescale"), ("global_l1", "reshift"), ("filter_bn", "rescale")],
)
def test_sparsity_holds_after_repair_and_save_load(
    kind: str, variant: str, digits: TensorDataset, tmp_path
) -> None:
    dense = net_for(kind)
    pruned = rd.prune(dense, 0.9 if kind != "filter_bn" else 0.5, kind)
    repaired = rd.repair_pruned(pruned, dense, digits, variant)
    for before, after in zip(zero_pattern(pruned), zero_pattern(repaired), strict=True):
        assert torch.equal(before, after)  # the same entries, not just the same count
    save_checkpoint(repaired, tmp_path / "ck", {"pruning": kind})
    loaded, _ = load_checkpoint(tmp_path / "ck")
    for before, after in zip(zero_pattern(pruned), zero_pattern(loaded), strict=True):
        assert torch.equal(before, after)
    x = digits.tensors[0][:64]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), repaired(x))
    # a loaded net gets its masks back, and a second repair keeps them
    again = rd.repair_pruned(reattach_masks(loaded), dense, digits, variant)
    for before, after in zip(zero_pattern(pruned), zero_pattern(again), strict=True):
        assert torch.equal(before, after)


def test_no_later_step_brings_back_a_pruned_weight(digits: TensorDataset) -> None:
    dense = mlp()
    pruned = rd.prune(dense, 0.8, "global_l1")
    pattern = zero_pattern(pruned)
    # folding an affine, interpolating with the dense net and an optimiser step
    layer = dict(pruned.named_modules())[prunable_points(pruned)[0].module]
    fold_affine(layer, torch.full((32,), 2.0), torch.ones(32))
    merged = interpolate([pruned, mlp(seed=1)], [0.5, 0.5])
    copied = copy.deepcopy(pruned)
    opt = torch.optim.SGD(copied.parameters(), lr=0.5)
    x, y = digits.tensors[0][:64], digits.tensors[1][:64]
    nn.functional.cross_entropy(copied.train()(x), y).backward()
    opt.step()
    with torch.no_grad():
        copied.eval()(x)  # the pre-forward hook re-applies the mask
    for net in (pruned, merged, copied):
        for zero, now in zip(pattern, zero_pattern(net), strict=True):
            assert now[zero].all()
    # a write behind the hooks' back is still saved as zero
    with torch.no_grad():
        layer.weight.fill_(1.0)
    saved = pruned.state_dict()[prunable_points(pruned)[0].module + ".weight"]
    assert (saved[pattern[0]] == 0).all() and (saved[~pattern[0]] == 1).all()
    # the interpolated net's unpruned weights did move
    assert not torch.equal(layer_weights(merged)[1], layer_weights(pruned)[1])


@pytest.mark.parametrize("make", [mlp, lambda: vgg(norm="none")], ids=["mlp", "vgg-plain"])
@pytest.mark.parametrize("variant", ["full", "rescale", "reshift"])
def test_repair_of_an_unpruned_net_keeps_its_function(make, variant, digits) -> None:
    dense = make()
    same = rd.repair_pruned(rd.prune(dense, 0.0), dense, one_batch(digits), variant)
    x = digits.tensors[0]
    with torch.no_grad():
        torch.testing.assert_close(same(x), dense(x), rtol=1e-4, atol=1e-4)


def bn_reset(net: nn.Module, data: TensorDataset) -> nn.Module:
    """Reference: BatchNorm statistics re-estimated by PyTorch itself on one full batch."""
    out = copy.deepcopy(net)
    for m in out.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    out.train()
    with torch.no_grad():
        out(data.tensors[0])
    return out.eval()


@pytest.mark.parametrize("kind", ["global_l1", "filter_bn"])
@pytest.mark.parametrize("make", [vgg, lambda: mlp(norm="bn")], ids=["vgg-bn", "mlp-bn"])
def test_repair_of_a_bn_net_is_a_statistics_reset(kind, make, digits) -> None:
    dense = make()
    pruned = rd.prune(dense, 0.5, kind)
    repaired = rd.repair_pruned(pruned, dense, one_batch(digits), "full")
    reference = bn_reset(pruned, digits)
    x = digits.tensors[0]
    with torch.no_grad():
        torch.testing.assert_close(repaired(x), reference(x), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(pruned(x), reference(x), atol=1e-3)


@pytest.mark.parametrize("variant", ["full", "rescale", "reshift"])
def test_repair_restores_the_statistics_it_targets(variant: str, digits: TensorDataset) -> None:
    dense = mlp()
    plan = one_batch(digits)
    pruned = rd.prune(dense, 0.5, "global_l1")
    repaired = rd.repair_pruned(pruned, dense, plan, variant)
    spec = rd.permutation_spec(dense)
    goal = endpoint_statistics([dense], plan, spec=spec)
    before = endpoint_statistics([pruned], plan, spec=spec)
    after = endpoint_statistics([repaired], plan, spec=spec)
    for rp in spec.repair_points:
        g, b, a = goal[rp.module], before[rp.module], after[rp.module]
        if variant in ("full", "reshift"):
            torch.testing.assert_close(a.mean[0], g.mean[0], rtol=1e-4, atol=1e-5)
            assert not torch.allclose(b.mean[0], g.mean[0], rtol=1e-2, atol=1e-3)
        if variant in ("full", "rescale"):
            # a unit whose whole weight row was pruned is constant: no scale can restore it
            alive = b.var(0) > 0
            assert alive.any()
            # the correction normalises like BN, by sqrt(var + eps): with eps = 1e-5 against
            # the units' variances (50% sparsity leaves none nearly constant), stds match to <1%
            torch.testing.assert_close(a.std(0)[alive], g.std(0)[alive], rtol=5e-3, atol=1e-4)
            assert not torch.allclose(b.std(0), g.std(0), rtol=1e-1)


def test_structured_repair_keeps_removed_filters_at_zero(digits: TensorDataset) -> None:
    dense = mlp()
    pruned = rd.prune(dense, 0.5, "filter_l1")
    repaired = rd.repair_pruned(pruned, dense, digits, "full")
    modules = dict(repaired.named_modules())
    for rp, removed in zip(prunable_points(pruned), removed_filters(pruned), strict=True):
        layer = modules[rp.module]
        assert (layer.bias.detach()[removed] == 0).all()
        assert (layer.weight.detach()[removed] == 0).all()


def collapsing_vgg() -> tuple[nn.Module, dict[str, tuple[int, int]]]:
    """A BN VGG with a known number of collapsed (gamma 0) and forced-dead channels per layer."""
    net = vgg(seed=3)
    expect = {}
    for i, rp in enumerate(prunable_points(net)):
        bn = dict(net.named_modules())[rp.norm]
        with torch.no_grad():
            bn.weight[: i % 3] = 0.0  # collapsed
            bn.bias[: i % 3] = -1.0  # and therefore dead: the BN output is -1 everywhere
        expect[rp.module] = (i % 3, len(bn.weight))
    return net, expect


def test_filter_collapse_counts(digits: TensorDataset) -> None:
    net, expect = collapsing_vgg()
    rows = rd.filter_collapse(net, digits, endpoint_key="ep0")
    assert list(rows.columns) == list(FILTER_COLUMNS)
    assert set(rows["endpoint_key"]) == {"ep0"}
    for row in rows.itertuples():
        collapsed, channels = expect[row.layer]
        assert (row.collapsed, row.channels) == (collapsed, channels)
        assert row.dead >= collapsed
    plain = rd.filter_collapse(mlp(), digits, endpoint_key="p")
    assert (plain["collapsed"] == 0).all() and plain["gamma_abs_median"].isna().all()


def test_filter_collapse_sharded_equals_in_process(ray_ready, digits: TensorDataset) -> None:
    net, _ = collapsing_vgg()
    plan = BatchPlan(digits, batch_size=64)
    local = rd.filter_collapse(net, plan, endpoint_key="ep0")
    sharded = rd.filter_collapse(net, plan, endpoint_key="ep0", workers=2)
    pd.testing.assert_frame_equal(local, sharded)
    assert local["dead"].sum() > 0


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: rd.prune(mlp(), 1.0), "sparsity must be in [0, 1)"),
        (lambda: rd.prune(mlp(), -0.1), "sparsity must be in [0, 1)"),
        (lambda: rd.prune(mlp(), "0.5"), "sparsity must be a number"),
        (lambda: rd.prune(mlp(), 0.5, "random"), "unknown pruning kind 'random'"),
        (lambda: rd.prune(mlp(), 0.5, "filter_bn"), "filter_bn needs a BatchNorm"),
        (lambda: rd.prune(mlp(norm="ln"), 0.5, "filter_l1"), "LayerNorm"),
        (
            lambda: rd.repair_pruned(rd.prune(mlp(), 0.5), vgg(), TensorDataset(torch.zeros(2))),
            "pruned and dense nets differ in architecture",
        ),
        (
            lambda: rd.repair_pruned(
                rd.prune(mlp(), 0.5),
                rd.build_model("mlp", depth=4, width=16, in_shape=(1, 8, 8)),
                TensorDataset(torch.zeros(2)),
            ),
            "pruned and dense nets differ in architecture",
        ),
        (
            lambda: rd.repair_pruned(mlp(), mlp(), TensorDataset(torch.zeros(2)), "reset"),
            "unknown post-pruning repair variant 'reset'",
        ),
    ],
)
def test_bad_input_gets_one_readable_line(call, message: str) -> None:
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    text = str(info.value)
    assert message in text and "\n" not in text


def test_repair_pruned_sharded_equals_in_process(ray_ready, digits: TensorDataset) -> None:
    dense = mlp()
    pruned = rd.prune(dense, 0.8, "global_l1")
    plan = BatchPlan(digits, batch_size=64)
    local = rd.repair_pruned(pruned, dense, plan, "full")
    sharded = rd.repair_pruned(pruned, dense, plan, "full", workers=2)
    for a, b in zip(local.state_dict().values(), sharded.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert rd.measured_sparsity(sharded) == rd.measured_sparsity(pruned)


def test_pruning_rows_are_the_pruning_table(digits: TensorDataset) -> None:
    dense = mlp()
    rows = pruning_rows(dense, digits, digits, sparsities=(0.5, 0.8), endpoint_key="ep")
    assert tuple(rows.columns) == PRUNING_COLUMNS
    variants = ["dense", "pruned", "repaired-full", "repaired-rescale", "repaired-reshift"]
    assert rows.groupby("sparsity")["variant"].apply(list).tolist() == [variants, variants]
    dense_rows = rows[rows["variant"] == "dense"]
    assert dense_rows["test_acc"].nunique() == 1 and (dense_rows["measured_sparsity"] == 0).all()
    pruned = rows[rows["variant"] != "dense"]
    total = sum(w.numel() for w in layer_weights(dense))
    want = pruned["sparsity"].map(lambda s: round(s * total) / total)
    assert (pruned["measured_sparsity"] == want).all()
    assert (rows["endpoint_key"] == "ep").all()
