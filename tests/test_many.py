"""N-model alignment (weight / activation / MergeMany), merge_many, the ensemble and STE matching.

Invariants: permuted copies of one net align back and merge to that net's function; MergeMany
only ever raises its objective and stops at a point no single-net matching can improve; two
nets take exactly the pair path; sharded equals in process; bad input fails in one line first.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

import repair_dist as rd
from repair_dist.passes import CoMoments, StatsDict, alignment_stats_pass
from repair_dist.perm import (
    apply_permutation,
    compose_permutations,
    invert_permutation,
    match_weights,
    merge_many_objective,
    permutation_spec,
    random_permutation,
)
from repair_dist.perm.weight import _parameters

METHODS = ("weight", "activation", "merge_many")
MLP = dict(depth=4, width=24, in_shape=(1, 8, 8))
ARCHS = {"mlp": ("mlp", MLP), "vgg-bn": ("vgg", dict(depth=11, width=0.125, in_shape=(1, 8, 8)))}


def _woken_net(data: TensorDataset, seed: int, name: str = "mlp", **cfg) -> torch.nn.Module:
    """A random net whose every pre-activation has mean 0.5 and std 1 on ``data`` (LSUV-like),
    so almost every ReLU unit fires: dead units are ties no data-driven matcher can break."""
    torch.manual_seed(seed)
    net = rd.build_model(name, **(cfg or MLP)).eval()
    spec = permutation_spec(net)
    stats = rd.endpoint_statistics([net], data, spec=spec)
    goal = StatsDict(
        {
            k: CoMoments(v.n, torch.full_like(v.mean, 0.5), torch.full_like(v.cm, v.n))
            for k, v in stats.items()
        }
    )
    return rd.repair(net, [net], [1.0], data, "full", spec=spec, goal_stats=goal)


def _shuffled_copies(net: torch.nn.Module, count: int, seed: int = 1):
    spec = permutation_spec(net)
    shuffles = [random_permutation(spec.group_sizes(net), seed=seed + k) for k in range(count)]
    return [apply_permutation(net, s, spec) for s in shuffles], shuffles, spec


def _alive_units(net, spec, data) -> dict[str, torch.Tensor]:
    probes = [p for ps in spec.match_probes.values() for p in ps]
    stats = alignment_stats_pass(net, net, batches=[data.tensors], probes=probes)
    return {
        g: torch.stack([stats[p].m2_a > 0 for p in ps]).all(0)
        for g, ps in spec.match_probes.items()
    }


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module, **tol) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], msg=k, **(tol or dict(rtol=0, atol=0)))


def _assert_same_function(a, b, x, rel: float = 1e-4) -> None:
    with torch.no_grad():
        ya, yb = a(x), b(x)
    torch.testing.assert_close(yb, ya, atol=rel * max(1.0, float(ya.abs().max())), rtol=1e-4)


@pytest.fixture(scope="module")
def net(gaussian_images):
    return _woken_net(gaussian_images, seed=0)


@pytest.fixture(scope="module", params=list(ARCHS))
def any_net(request, gaussian_images):
    """A plain MLP and a BN conv net (BN weights and running statistics must follow)."""
    name, cfg = ARCHS[request.param]
    return _woken_net(gaussian_images, 0, name, **cfg)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("reference", [None, 2])
def test_align_many_recovers_every_shuffle(method, reference, any_net, gaussian_images):
    """Copy k = shuffle_k(net): the permutation of copy k onto the reference copy r is
    shuffle_k^-1 o shuffle_r, on every unit the data can identify."""
    copies, shuffles, spec = _shuffled_copies(any_net, 3)
    perms = rd.align_many(copies, gaussian_images, method=method, reference=reference)
    ref = reference or 0
    alive = _alive_units(copies[ref], spec, gaussian_images)
    assert sum(int(m.sum()) for m in alive.values()) >= 0.9 * sum(m.numel() for m in alive.values())
    assert all(torch.equal(p, torch.arange(len(p))) for p in perms[ref].values())
    for k, perm in enumerate(perms):
        truth = compose_permutations(invert_permutation(shuffles[k]), shuffles[ref])
        for g, mask in alive.items():
            assert perm[g][mask].tolist() == truth[g][mask].tolist(), (k, g)
        aligned = apply_permutation(copies[k], perm, spec)
        _assert_same_function(copies[ref], aligned, gaussian_images.tensors[0])
        if method != "activation":  # weights identify every unit, dead or alive
            _assert_same_state(copies[ref], aligned)


@pytest.mark.parametrize("method", METHODS)
def test_merge_many_of_shuffled_copies_is_the_net(method, any_net, gaussian_images):
    """Aligned copies are one net; their interpolation is it, and REPAIR (one full batch, so
    the goal is hit exactly; a BN reset to the statistics the net was woken with) leaves it
    alone up to the normalisation epsilon."""
    copies, _, _ = _shuffled_copies(any_net, 3, seed=7)
    merged = rd.merge_many(copies, gaussian_images, method=method, batch_size=384)
    _assert_same_function(copies[0], merged, gaussian_images.tensors[0])
    plain = rd.merge_many(copies, gaussian_images, method=method, variant=None)
    _assert_same_state(copies[0], plain, rtol=1e-6, atol=1e-6)


def test_merge_many_objective_never_decreases_and_stops_at_a_fixed_point():
    torch.manual_seed(0)
    nets = [rd.build_model("mlp", depth=4, width=24, in_shape=(1, 8, 8)) for _ in range(4)]
    history: list[float] = []
    perms = rd.align_many(nets, method="merge_many", seed=3, history=history)
    assert len(history) > 1 + len(nets)  # independent nets: more than one round of real work
    assert all(b >= a - 1e-9 * abs(a) for a, b in zip(history, history[1:], strict=False))
    assert history[-1] > history[0]
    spec = permutation_spec(nets[0])
    params = [
        _parameters(apply_permutation(n, p, spec), spec) for n, p in zip(nets, perms, strict=True)
    ]
    # the relabelling onto net 0 changes no inner product: the final objective is the history's
    assert merge_many_objective(params) == pytest.approx(history[-1], rel=1e-12)
    sizes = spec.group_sizes(nets[0])
    for i, own in enumerate(params):
        others = {k: sum(p[k] for j, p in enumerate(params) if j != i) / 3 for k in own}
        step = match_weights(others, own, spec, sizes, seed=11)
        assert all(torch.equal(p, torch.arange(len(p))) for p in step.values()), i


@pytest.mark.parametrize("method", ["weight", "activation"])
def test_two_nets_take_exactly_the_pair_path(method, gaussian_images):
    a, b = _woken_net(gaussian_images, 1), _woken_net(gaussian_images, 2)
    if method == "weight":
        perm = rd.weight_matching(a, b, seed=5)
    else:
        perm = rd.activation_matching(a, b, gaussian_images)
    [ident, got] = rd.align_many([a, b], gaussian_images, method=method, seed=5)
    assert {g: p.tolist() for g, p in got.items()} == {g: p.tolist() for g, p in perm.items()}
    assert all(torch.equal(p, torch.arange(len(p))) for p in ident.values())
    c = rd.apply_permutation(b, perm)
    for weights in ([0.5, 0.5], [0.3, 0.7]):
        expected = rd.repair(rd.interpolate([a, c], weights), [a, c], weights, gaussian_images)
        merged = rd.merge_many([a, b], gaussian_images, method=method, weights=weights, seed=5)
        _assert_same_state(expected, merged)


def test_merge_many_of_two_is_a_weight_matching_fixed_point(gaussian_images):
    """For N = 2 the mean of the others is the other net, so MergeMany stops where pair
    weight matching (any seed) finds nothing to improve."""
    a, b = _woken_net(gaussian_images, 1), _woken_net(gaussian_images, 2)
    pa, pb = rd.align_many([a, b], method="merge_many")
    for seed in range(3):
        step = rd.weight_matching(
            rd.apply_permutation(a, pa), rd.apply_permutation(b, pb), seed=seed
        )
        assert all(torch.equal(p, torch.arange(len(p))) for p in step.values())


def test_sharded_equals_in_process(ray_ready, gaussian_images):
    nets = [_woken_net(gaussian_images, s) for s in (1, 2, 3)]
    local = rd.align_many(nets, gaussian_images, method="activation", batch_size=64)
    sharded = rd.align_many(nets, gaussian_images, method="activation", batch_size=64, workers=2)
    for p, q in zip(local, sharded, strict=True):
        assert {g: t.tolist() for g, t in p.items()} == {g: t.tolist() for g, t in q.items()}
    kw = dict(method="activation", batch_size=64, weights=[0.2, 0.3, 0.5])
    merged_local = rd.merge_many(nets, gaussian_images, **kw)
    merged_sharded = rd.merge_many(nets, gaussian_images, workers=2, **kw)
    _assert_same_state(merged_local, merged_sharded, rtol=1e-5, atol=1e-6)


def test_ensemble_of_copies_is_the_net_and_averages_probabilities(net, gaussian_images):
    x = gaussian_images.tensors[0][:50]
    copies, _, _ = _shuffled_copies(net, 3)
    with torch.no_grad():
        torch.testing.assert_close(rd.ensemble(copies)(x), net(x).log_softmax(-1))
        other = _woken_net(gaussian_images, 5)
        probs = 0.25 * net(x).softmax(-1) + 0.75 * other(x).softmax(-1)
        torch.testing.assert_close(rd.ensemble([net, other], [0.25, 0.75])(x).exp(), probs)
    assert rd.evaluate(rd.ensemble(copies), gaussian_images) == pytest.approx(
        rd.evaluate(net, gaussian_images)
    )


def test_ste_with_no_epochs_is_weight_matching(gaussian_images):
    a, b = _woken_net(gaussian_images, 1), _woken_net(gaussian_images, 2)
    got = rd.ste_matching(a, b, gaussian_images, epochs=0, seed=4)
    expected = rd.weight_matching(a, b, seed=4)
    assert {g: p.tolist() for g, p in got.items()} == {g: p.tolist() for g, p in expected.items()}


def test_ste_recovers_a_shuffle_and_records_every_step(net, gaussian_images):
    """B = shuffled A: the midpoint of A and the exact unshuffle is A itself, a low-loss point,
    so training the free copy must not pull the projection away from the truth."""
    [shuffled], [shuffle], spec = _shuffled_copies(net, 1, seed=9)
    history: list[float] = []
    perm = rd.ste_matching(net, shuffled, gaussian_images, epochs=2, batch_size=64, history=history)
    assert len(history) == 2 * (384 // 64)
    assert all(torch.isfinite(torch.tensor(history)))
    _assert_same_state(net, apply_permutation(shuffled, perm, spec))


def test_ste_lowers_the_midpoint_loss_it_trains_on(gaussian_images):
    """Independent nets: the STE's training loss (the midpoint's) goes down."""
    a, b = _woken_net(gaussian_images, 1), _woken_net(gaussian_images, 2)
    history: list[float] = []
    rd.ste_matching(a, b, gaussian_images, epochs=6, lr=0.05, batch_size=64, history=history)
    first, last = sum(history[:6]) / 6, sum(history[-6:]) / 6
    assert last < first


class _Untouchable(Dataset):
    """A dataset that fails if anything reads it: bad input must be refused before compute."""

    def __len__(self) -> int:
        return 384

    def __getitem__(self, i):
        raise AssertionError("data was read before the input was checked")


def _bad_inputs(net):
    other = rd.build_model("mlp", depth=4, width=16, in_shape=(1, 8, 8))
    two = [net, net]
    return [
        (lambda d: rd.align_many([net], d), "at least 2 nets.*got 1"),
        (lambda d: rd.merge_many([net], d), "at least 2 nets.*got 1"),
        (lambda d: rd.merge_many([net, other], d), "architectures differ between net 0 and net 1"),
        (lambda d: rd.align_many([net, other], d), "architectures differ between net 0 and net 1"),
        (lambda d: rd.merge_many(two, d, weights=[0.6, 0.6]), "weights must sum to 1"),
        (lambda d: rd.merge_many(two, d, weights=[1.0]), "one weight per net: got 1 weights for 2"),
        (lambda d: rd.align_many(two, d, reference=2), "reference 2 is out of range for 2 nets"),
        (lambda d: rd.merge_many(two, d, reference=-1), "reference -1 is out of range"),
        (lambda d: rd.align_many(two, d, method="sinkhorn"), "unknown alignment method 'sinkhorn'"),
        (lambda d: rd.merge_many(two, d, method="ste"), "unknown alignment method 'ste'"),
        (lambda d: rd.merge_many(two, d, variant="fancy"), "unknown REPAIR variant 'fancy'"),
        (lambda d: rd.align_many(two, None, method="activation"), "needs train data"),
        (lambda d: rd.merge_many(two, None, method="weight"), "needs train data"),
        (lambda d: rd.align_many(two, d, workers=0), "workers must be a positive int"),
        (lambda d: rd.merge_many(two, d, workers=-2), "workers must be a positive int"),
        (lambda d: rd.ste_matching(net, other, d), "architectures differ"),
        (lambda d: rd.ste_matching(net, net, d, epochs=-1), "epochs must be an int >= 0"),
        (lambda d: rd.ste_matching(net, net, d, lr=0.0), "lr must be a positive number"),
    ]


def test_bad_input_is_one_line_before_any_compute(net):
    for call, message in _bad_inputs(net):
        with pytest.raises((ValueError, TypeError), match=message) as err:
            call(_Untouchable())
        assert "\n" not in str(err.value), message


def test_ste_is_a_pair_method_of_the_merge_trial(gaussian_images):
    """``method="ste"`` goes through the matcher registry: the trial's permutation is exactly
    what ``ste_matching`` returns for the trial's train set and seed."""
    from repair_dist.pipeline import METHODS, merge_trial

    assert "ste" in METHODS
    a, b = _woken_net(gaussian_images, 1), _woken_net(gaussian_images, 2)
    small = TensorDataset(*gaussian_images[:128])  # 2 STE steps per epoch: seconds, not minutes
    result = merge_trial(a, b, small, small, method="ste", variants=["full"], alphas=3, seed=5)
    expected = rd.ste_matching(a, b, small, seed=5)
    assert {g: p.tolist() for g, p in result.perm.items()} == {
        g: p.tolist() for g, p in expected.items()
    }
