"""A shuffled net aligns back exactly, by activations and by weights, for every family."""

from __future__ import annotations

import pytest
import torch

from repair_dist.models import build_model
from repair_dist.passes import CoMoments, StatsDict, alignment_stats_pass
from repair_dist.perm import (
    activation_matching,
    apply_permutation,
    invert_permutation,
    matching_objective,
    permutation_spec,
    random_permutation,
    weight_matching,
)
from repair_dist.perm.weight import _parameters
from repair_dist.repair import endpoint_statistics, repair

CASES = [
    ("mlp", dict(depth=4, width=24, in_shape=(1, 8, 8))),
    ("vgg", dict(depth=11, width=0.125, in_shape=(1, 8, 8))),
    ("resnet20", dict(width=1, in_shape=(1, 8, 8))),
    ("resnet18", dict(width=0.25, in_shape=(1, 8, 8), num_classes=10)),
]


def _randomise_bn(net: torch.nn.Module, seed: int) -> None:
    """Non-trivial BN statistics and affines, so BN buffers must be permuted to pass.

    Weights are also centred per unit and biases made positive: at init a deep ReLU net has
    units that never fire on a small data set (their weights point against the mean of the
    non-negative input), and dead units are rightly indistinguishable to activation matching.
    """
    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            with torch.no_grad():
                w = m.weight.flatten(1)
                w.sub_(w.mean(1, keepdim=True))
                if m.bias is not None:
                    m.bias.copy_(torch.rand(m.bias.shape, generator=gen) * 0.5 + 0.1)
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.bias.copy_(torch.rand(m.num_features, generator=gen) * 0.5 + 0.2)
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


def _wake_units(net, spec, data):
    """Data-dependent init (LSUV-like): every pre-activation channel gets mean 0.5, std 1 on
    ``data`` (BN: running stats reset to the data), so almost every ReLU unit fires. A net at
    random init has many dead units, which no data-driven matcher can tell apart."""
    stats = endpoint_statistics([net], data, spec=spec)
    goal = StatsDict(
        {
            k: CoMoments(v.n, torch.full_like(v.mean, 0.5), torch.full_like(v.cm, v.n))
            for k, v in stats.items()
        }
    )
    return repair(net, [net], [1.0], data, "full", spec=spec, goal_stats=goal)


def _shuffled_pair(name, cfg, norm, seed=0, data=None):
    torch.manual_seed(seed)
    net = build_model(name, norm=norm, **cfg).eval()
    _randomise_bn(net, seed)
    spec = permutation_spec(net)
    if data is not None:
        net = _wake_units(net, spec, data)
    shuffle = random_permutation(spec.group_sizes(net), seed=seed + 1)
    return net, apply_permutation(net, shuffle, spec), shuffle, spec


def _assert_same_function(a, b, x):
    """Same outputs up to float32 rounding (atol 5e-5 relative to the logits scale)."""
    with torch.no_grad():
        ya, yb = a(x), b(x)
    scale = max(1.0, float(ya.abs().max()))
    torch.testing.assert_close(yb, ya, atol=5e-5 * scale, rtol=1e-5)


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=0, atol=0, msg=k)


def _alive_units(net, spec, data) -> dict[str, torch.Tensor]:
    """Per group, the units that fire somewhere on ``data`` at every probe of the group."""
    probes = [p for ps in spec.match_probes.values() for p in ps]
    stats = alignment_stats_pass(net, net, batches=[data.tensors], probes=probes)
    return {
        g: torch.stack([stats[p].m2_a > 0 for p in ps]).all(0)
        for g, ps in spec.match_probes.items()
    }


@pytest.mark.parametrize("norm", ["none", "bn", "ln"])
@pytest.mark.parametrize(("name", "cfg"), CASES, ids=[c[0] for c in CASES])
def test_activation_matching_recovers_a_random_shuffle(name, cfg, norm, gaussian_images):
    """Exact on every unit the data can identify; dead units (never firing) are a tie that no
    data-driven method can break, so for them only the computed function is checked."""
    net, shuffled, shuffle, spec = _shuffled_pair(name, cfg, norm, data=gaussian_images)
    x = gaussian_images.tensors[0]
    _assert_same_function(net, shuffled, x)
    perm = activation_matching(net, shuffled, gaussian_images, spec=spec, batch_size=128)
    truth = invert_permutation(shuffle)
    alive = _alive_units(net, spec, gaussian_images)
    total = sum(int(m.numel()) for m in alive.values())
    assert sum(int(m.sum()) for m in alive.values()) >= 0.9 * total
    for g, mask in alive.items():
        assert perm[g][mask].tolist() == truth[g][mask].tolist(), g
    realigned = apply_permutation(shuffled, perm, spec)
    _assert_same_function(net, realigned, x)
    if all(bool(m.all()) for m in alive.values()):
        _assert_same_weights(net, realigned)


@pytest.mark.parametrize("norm", ["none", "bn"])
@pytest.mark.parametrize(("name", "cfg"), CASES, ids=[c[0] for c in CASES])
def test_weight_matching_recovers_a_random_shuffle(name, cfg, norm):
    net, shuffled, _, spec = _shuffled_pair(name, cfg, norm, seed=3)
    perm = weight_matching(net, shuffled, spec=spec, seed=0)
    _assert_same_weights(net, apply_permutation(shuffled, perm, spec))


def test_residual_sum_mode_also_recovers_the_shuffle(gaussian_images):
    net, shuffled, shuffle, spec = _shuffled_pair(
        "resnet20", dict(width=1, in_shape=(1, 8, 8)), "bn", data=gaussian_images
    )
    perm = activation_matching(net, shuffled, gaussian_images, spec=spec, residual="sum")
    _assert_same_weights(net, apply_permutation(shuffled, perm, spec))


def test_weight_matching_objective_never_decreases():
    torch.manual_seed(0)
    a = build_model("mlp", depth=5, width=32, in_shape=(1, 8, 8))
    b = build_model("mlp", depth=5, width=32, in_shape=(1, 8, 8))
    history: list[float] = []
    perm = weight_matching(a, b, seed=1, history=history)
    assert len(history) > 5  # independent nets: several sweeps of real work
    assert all(
        later >= earlier - 1e-9 for earlier, later in zip(history, history[1:], strict=False)
    )
    spec = permutation_spec(a)
    final = matching_objective(_parameters(a, spec), _parameters(b, spec), spec, perm)
    assert final == pytest.approx(history[-1]) and final > history[0]


def test_mismatched_architectures_are_named():
    a = build_model("mlp", depth=3, width=16, in_shape=(1, 8, 8))
    b = build_model("mlp", depth=3, width=32, in_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="architectures differ.*blocks.0.linear.weight"):
        weight_matching(a, b)


def test_ties_among_dead_units_are_broken_by_index_not_by_float_noise():
    """Dead rows/columns tie; the assignment must not move when other entries change in their
    last bits (as they do with the reduction order), and must keep the optimal total."""
    from scipy.optimize import linear_sum_assignment

    from repair_dist.perm.activation import assign

    gen = torch.Generator().manual_seed(0)
    n = 12
    corr = torch.rand(n, n, generator=gen, dtype=torch.float64) * 2 - 1
    corr[[1, 4, 7, 9]] = 0.0  # dead units of A
    corr[:, [0, 4, 5, 10, 11]] = 0.0  # dead units of B (more than A's)
    base = assign(corr)
    best = linear_sum_assignment(corr.numpy(), maximize=True)[1]
    idx = torch.arange(n)
    assert float(corr[idx, base].sum()) == pytest.approx(float(corr[idx, best].sum()), abs=1e-12)
    assert sorted(base.tolist()) == list(range(n))
    for seed in range(20):
        noise = torch.rand(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        noisy = torch.where(corr != 0, corr * (1 + 1e-13 * noise), corr)
        assert torch.equal(assign(noisy), base), seed
    # dead rows take the leftover columns in ascending order
    dead_rows = [1, 4, 7, 9]
    assert base[dead_rows].tolist() == sorted(base[dead_rows].tolist())
