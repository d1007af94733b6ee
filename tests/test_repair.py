"""REPAIR restores the statistics it targets; BN REPAIR is a BN reset; folding is exact."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import TensorDataset

import repair_dist as rd
from repair_dist.data import BatchPlan
from repair_dist.merge import interpolate
from repair_dist.models import build_model
from repair_dist.passes import CoMoments, Probe, StatsDict, tap
from repair_dist.perm import permutation_spec
from repair_dist.repair import (
    Correction,
    endpoint_statistics,
    goal_statistics,
    predicted_std,
    recalibration_pass,
    repair,
)


def _pair(name="mlp", norm="none", seed=0, **cfg):
    cfg = {"depth": 6, "width": 32, "in_shape": (1, 8, 8), **cfg} if name == "mlp" else cfg
    torch.manual_seed(seed)
    a = build_model(name, norm=norm, **cfg).eval()
    b = build_model(name, norm=norm, **cfg).eval()
    return a, b


def _channel_stats(net, data, modules):
    store = {}
    out = {}
    with torch.no_grad(), tap(net, [Probe(m) for m in modules], store):
        net.eval()(data.tensors[0])
    for m in modules:
        out[m] = CoMoments.from_batch(store[Probe(m)])
    return out


@pytest.mark.parametrize("variant", ["full", "rescale", "reshift"])
def test_full_batch_repair_hits_its_goal_exactly(variant, gaussian_images):
    """One calibration batch = the whole set: every corrected channel lands on its goal."""
    a, b = _pair()
    spec = permutation_spec(a)
    mid = interpolate([a, b], [0.5, 0.5])
    plan = BatchPlan(gaussian_images, batch_size=len(gaussian_images))
    fixed = repair(mid, [a, b], [0.5, 0.5], plan, variant, spec=spec)
    goals = endpoint_statistics([a, b], plan, spec=spec)
    modules = [rp.module for rp in spec.repair_points]
    after = _channel_stats(fixed, gaussian_images, modules)
    for m in modules:
        goal_mean, goal_std = goal_statistics(goals[m], [0.5, 0.5])
        mean, std = after[m].mean[0], after[m].std(0)
        if variant in ("full", "rescale"):
            # exact up to BatchNorm's epsilon (1e-5 on the variance), which REPAIR shares
            ratio = (std / goal_std)[goal_std > 1e-3]
            torch.testing.assert_close(ratio, torch.ones_like(ratio), rtol=0, atol=2e-3)
        if variant in ("full", "reshift"):
            torch.testing.assert_close(
                mean, goal_mean, rtol=0, atol=1e-4 * float(goal_std.max()) + 1e-6
            )


def test_minibatch_repair_restores_stats_within_tolerance(gaussian_images):
    """With many calibration batches, later layers saw batch-normalised inputs while the net
    is evaluated with pooled statistics (as in the REPAIR reference); per channel the std is
    within 8% of its goal (3% on average over channels) and the mean within 0.1 goal std."""
    a, b = _pair(depth=8)
    spec = permutation_spec(a)
    mid = interpolate([a, b], [0.5, 0.5])
    fixed = repair(mid, [a, b], [0.5, 0.5], gaussian_images, "full", spec=spec, batch_size=64)
    goals = endpoint_statistics([a, b], gaussian_images, spec=spec)
    modules = [rp.module for rp in spec.repair_points]
    before, after = (
        _channel_stats(mid, gaussian_images, modules),
        _channel_stats(fixed, gaussian_images, modules),
    )
    deepest = modules[-1]
    goal_mean, goal_std = goal_statistics(goals[deepest], [0.5, 0.5])
    assert float(before[deepest].std(0).mean() / goal_std.mean()) < 0.9  # there was collapse
    for m in modules:
        goal_mean, goal_std = goal_statistics(goals[m], [0.5, 0.5])
        ratio = after[m].std(0) / goal_std
        assert (ratio - 1).abs().max() < 0.08, m
        assert (ratio - 1).abs().mean() < 0.03, m
        assert ((after[m].mean[0] - goal_mean).abs() / goal_std).max() < 0.1, m


def test_repair_folds_into_a_plain_net_of_the_same_architecture(gaussian_images):
    a, b = _pair()
    mid = interpolate([a, b], [0.3, 0.7])
    fixed = repair(mid, [a, b], [0.3, 0.7], gaussian_images, "full")
    assert type(fixed) is type(mid)
    assert [n for n, _ in fixed.named_modules()] == [n for n, _ in mid.named_modules()]
    assert {k: v.shape for k, v in fixed.state_dict().items()} == {
        k: v.shape for k, v in mid.state_dict().items()
    }


def test_folding_equals_applying_the_affine_after_the_layer(gaussian_images):
    """Folded weights compute exactly what the unfolded correction (layer then affine) does."""
    from repair_dist.passes import transform_outputs
    from repair_dist.repair import correction_affine

    a, b = _pair()
    spec = permutation_spec(a)
    mid = interpolate([a, b], [0.5, 0.5])
    goals = endpoint_statistics([a, b], gaussian_images, spec=spec)
    plan = BatchPlan(gaussian_images, batch_size=len(gaussian_images))
    corrections = []
    for rp in spec.repair_points:
        gm, gs = goal_statistics(goals[rp.module], [0.5, 0.5])
        corrections.append(Correction(rp.module, "full", gm, gs))
    measured = recalibration_pass(
        copy.deepcopy(mid),
        batches=plan.batches(),
        corrections=corrections,
        observe=[c.module for c in corrections],
    )
    affines = {}
    for c in corrections:
        s = measured[c.module]
        affines[c.module] = correction_affine("full", s.mean[0], s.var(0), c.goal_mean, c.goal_std)

    def applier(scale, shift):
        return lambda out: out * scale.float() + shift.float()

    x = gaussian_images.tensors[0]
    with torch.no_grad(), transform_outputs(mid, {m: applier(*aff) for m, aff in affines.items()}):
        unfolded = mid(x)
    folded = repair(mid, [a, b], [0.5, 0.5], plan, "full", spec=spec, goal_stats=goals)(x)
    torch.testing.assert_close(folded, unfolded, rtol=1e-4, atol=1e-4)


def test_bn_repair_is_a_bn_statistics_reset(gaussian_images):
    """`full` on a BN net == `reset` == PyTorch's own cumulative re-estimation of BN stats."""
    a, b = _pair("resnet20", "bn", width=1, in_shape=(1, 8, 8))
    mid = interpolate([a, b], [0.5, 0.5])
    plan = BatchPlan(gaussian_images, batch_size=len(gaussian_images))
    full = repair(mid, [a, b], [0.5, 0.5], plan, "full")
    reset = repair(mid, [a, b], [0.5, 0.5], plan, "reset")
    reference = copy.deepcopy(mid)
    for m in reference.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    reference.train()
    with torch.no_grad():
        reference(gaussian_images.tensors[0])
    reference.eval()
    ref_state = reference.state_dict()
    for net in (full, reset):
        state = net.state_dict()
        for k, v in ref_state.items():
            if k.endswith(("running_mean", "running_var")):
                torch.testing.assert_close(state[k], v, rtol=1e-4, atol=1e-5, msg=k)
            elif not k.endswith("num_batches_tracked"):
                torch.testing.assert_close(state[k], v, rtol=0, atol=0, msg=k)


def test_bn_rescale_and_reshift_touch_only_their_statistic(gaussian_images):
    """Each variant re-estimates only its statistic; at the first BN (no BN upstream) that
    statistic is the reset's (deeper ones differ: upstream BNs keep the other statistic)."""
    a, b = _pair("resnet20", "bn", width=1, in_shape=(1, 8, 8))
    mid = interpolate([a, b], [0.5, 0.5])
    reset = repair(mid, [a, b], [0.5, 0.5], gaussian_images, "reset").state_dict()
    for variant, changed, kept in (
        ("rescale", "running_var", "running_mean"),
        ("reshift", "running_mean", "running_var"),
    ):
        state = repair(mid, [a, b], [0.5, 0.5], gaussian_images, variant).state_dict()
        for k in state:
            if k == f"stem.norm.{changed}":
                torch.testing.assert_close(state[k], reset[k])
            if k.endswith(kept):
                torch.testing.assert_close(state[k], mid.state_dict()[k])


def test_closed_form_predicts_the_first_layer_exactly(gaussian_images):
    """The first pre-activation of the merged net is exactly (1-a) z_A + a z_B, so the
    closed-form std (from endpoint stds and their correlation) is its true std."""
    a, b = _pair()
    spec = permutation_spec(a)
    w = [0.4, 0.6]
    first = spec.repair_points[0].module
    goals = endpoint_statistics([a, b], gaussian_images, spec=spec)
    measured = _channel_stats(interpolate([a, b], w), gaussian_images, [first])[first]
    torch.testing.assert_close(
        predicted_std(goals[first], w), measured.std(0), rtol=1e-6, atol=1e-7
    )
    fixed = repair(
        interpolate([a, b], w),
        [a, b],
        w,
        gaussian_images,
        "closed_form",
        spec=spec,
        goal_stats=goals,
    )
    after = _channel_stats(fixed, gaussian_images, [first])[first]
    _, goal_std = goal_statistics(goals[first], w)
    torch.testing.assert_close(after.std(0), goal_std, rtol=1e-3, atol=1e-5)


def test_unknown_variant_is_named():
    a, b = _pair()
    with pytest.raises(ValueError, match="unknown REPAIR variant 'bogus'"):
        repair(
            a,
            [a, b],
            [0.5, 0.5],
            TensorDataset(torch.zeros(1, 1, 8, 8), torch.zeros(1).long()),
            "bogus",
        )


def test_closed_form_refuses_statistics_collected_without_cross_terms(gaussian_images):
    torch.manual_seed(0)
    a = rd.build_model("mlp", depth=2, width=8, norm="none", in_shape=(1, 8, 8))
    b = rd.build_model("mlp", depth=2, width=8, norm="none", in_shape=(1, 8, 8))
    spec = rd.permutation_spec(a)
    stats = rd.alignment_statistics(a, b, gaussian_images, repair_cross=False)
    perm = rd.permutation_from_stats(stats, spec)
    c = rd.apply_permutation(b, perm)
    goals = StatsDict(
        {rp.module: stats[Probe(rp.module)].aligned(perm[rp.group]) for rp in spec.repair_points}
    )
    mid = rd.interpolate([a, c], [0.5, 0.5])
    rd.repair(mid, [a, c], [0.5, 0.5], gaussian_images, variant="full", goal_stats=goals)  # fine
    with pytest.raises(ValueError, match="cross moments"):
        rd.repair(mid, [a, c], [0.5, 0.5], gaussian_images, variant="closed_form", goal_stats=goals)


def _forward_order(net: torch.nn.Module, x: torch.Tensor) -> list[str]:
    """Module names in the order a forward runs them."""
    order: list[str] = []
    handles = [
        m.register_forward_hook(lambda *_, name=name: order.append(name))
        for name, m in net.named_modules()
        if name
    ]
    with torch.no_grad():
        net.eval()(x)
    for h in handles:
        h.remove()
    return order


def _layer_by_layer_bn_repair(mid, spec, x, changes):
    """The slow reference: correct one BN at a time, in forward order, each measured on the net
    returned so far (every upstream correction active, eval mode), touching only ``changes``."""
    net = copy.deepcopy(mid).eval()
    order = _forward_order(net, x)
    points = sorted(
        (rp for rp in spec.repair_points if rp.norm), key=lambda rp: order.index(rp.norm)
    )
    for rp in points:
        stats = _channel_stats(net, TensorDataset(x), [rp.module])[rp.module]
        bn = dict(net.named_modules())[rp.norm]
        with torch.no_grad():
            if "running_mean" in changes:
                bn.running_mean.copy_(stats.mean[0])
            if "running_var" in changes:
                bn.running_var.copy_(stats.unbiased_var(0))
    return net


@pytest.mark.parametrize(
    "variant,changes",
    [
        ("rescale", ("running_var",)),
        ("reshift", ("running_mean",)),
        ("full", ("running_mean", "running_var")),
    ],
)
def test_bn_variants_measure_the_net_they_return(variant, changes, gaussian_images):
    """Each BN's statistic is measured with every upstream BN corrected *by the same variant*
    (not fully renormalised): one calibration pass equals the slow layer-by-layer loop."""
    a, b = _pair("vgg", "bn", depth=11, width=0.125, in_shape=(1, 8, 8))
    with torch.no_grad():  # spread the endpoints' BN statistics so that every variant matters
        for net, seed in ((a, 1), (b, 2)):
            gen = torch.Generator().manual_seed(seed)
            for m in net.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.normal_(0, 0.5, generator=gen)
                    m.running_var.uniform_(0.3, 3.0, generator=gen)
    spec = permutation_spec(a)
    mid = interpolate([a, b], [0.5, 0.5])
    x = gaussian_images.tensors[0]
    plan = BatchPlan(gaussian_images, batch_size=len(gaussian_images))
    fixed = repair(mid, [a, b], [0.5, 0.5], plan, variant, spec=spec).state_dict()
    ref = _layer_by_layer_bn_repair(mid, spec, x, changes).state_dict()
    untouched = mid.state_dict()
    for k, v in ref.items():
        if k.endswith(changes):
            # one pass normalises with the biased batch variance, the returned net with the
            # unbiased one: they differ by n/(n-1) (n >= 384 samples per channel here)
            torch.testing.assert_close(fixed[k], v, rtol=1e-2, atol=1e-4, msg=k)
            assert not torch.allclose(v, untouched[k], rtol=1e-2), f"{k} should have changed"
        elif not k.endswith("num_batches_tracked"):
            torch.testing.assert_close(fixed[k], untouched[k], rtol=0, atol=0, msg=k)


def test_endpoints_of_a_curve_are_evaluated_once_and_never_repaired(gaussian_images, monkeypatch):
    """At alpha 0 and 1 the merged net is an endpoint: every variant reports its evaluation,
    and no recalibration pass runs there."""
    import repair_dist.pipeline as pipeline

    a, b = _pair(depth=3, width=16)
    repaired_at: list[float] = []
    real_repair = pipeline.repair

    def spy(mid, endpoints, weights, *args, **kw):
        repaired_at.append(float(weights[1]))
        return real_repair(mid, endpoints, weights, *args, **kw)

    monkeypatch.setattr(pipeline, "repair", spy)
    variants = ["aligned", "full", "rescale"]
    curve = rd.interpolation_curve(
        a, b, gaussian_images, gaussian_images, alphas=[0.0, 0.5, 1.0], variants=variants
    )
    assert sorted(repaired_at) == [0.5, 0.5]
    for alpha in (0.0, 1.0):
        at = curve[curve["alpha"] == alpha].set_index(["variant", "split"])[["loss", "acc"]]
        for variant in variants[1:]:
            assert (at.loc[variant].to_numpy() == at.loc["aligned"].to_numpy()).all()
    mid = curve[curve["alpha"] == 0.5].set_index(["variant", "split"])["loss"]
    assert mid.loc[("full", "train")] != mid.loc[("aligned", "train")]


def test_statistics_for_weight_matching_skip_every_correlation(gaussian_images):
    """Weight matching reads no correlation: its pass keeps REPAIR probes' per-channel
    moments only, identical to those of the full pass."""
    a, b = _pair(depth=3, width=16)
    spec = permutation_spec(a)
    full = rd.alignment_statistics(a, b, gaussian_images, spec=spec)
    lean = rd.alignment_statistics(
        a, b, gaussian_images, spec=spec, matching=False, repair_cross=False
    )
    assert set(lean) == {Probe(rp.module) for rp in spec.repair_points}
    for p, m in lean.items():
        assert not m.has_cross
        for name in ("mean_a", "mean_b", "m2_a", "m2_b"):
            assert torch.equal(getattr(m, name), getattr(full[p], name)), (p, name)
    with pytest.raises(ValueError, match="matching=True or repair=True"):
        rd.alignment_statistics(a, b, gaussian_images, matching=False, repair=False)
