"""Mode-connectivity curves: invariants of the curve, its fit and its profile."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

import repair_dist as rd
from repair_dist.curves import Curve, combine, curve_weights
from repair_dist.perm import random_permutation

IN_SHAPE = (1, 8, 8)
TINY = {
    "mlp": dict(depth=3, width=24, norm="none", in_shape=IN_SHAPE),
    "mlp-bn": dict(depth=3, width=24, norm="bn", in_shape=IN_SHAPE),
    "vgg-bn": dict(depth=11, width=0.125, norm="bn", in_shape=IN_SHAPE),
}


def _build(arch: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return rd.build_model("vgg" if arch.startswith("vgg") else "mlp", **TINY[arch])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny nets: intra-op threads only add sync overhead (10x under a loaded machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    train, test = rd.load_dataset("digits")
    return Subset(train, range(512)), Subset(test, range(256))


@pytest.fixture(scope="module")
def small_train(digits) -> TensorDataset:
    """The 512 training digits as tensors (fit_curve's fast path)."""
    xs, ys = zip(*(digits[0][i] for i in range(len(digits[0]))), strict=True)
    return TensorDataset(torch.stack(xs), torch.as_tensor(ys))


@pytest.fixture(scope="module")
def endpoints(small_train):
    """Briefly trained endpoint pairs per architecture (real, different solutions)."""
    out = {}
    for arch in TINY:
        a, b = _build(arch, 0), _build(arch, 1)
        rd.train_model(a, small_train, epochs=4, seed=0)
        rd.train_model(b, small_train, epochs=4, seed=1)
        out[arch] = (a, b)
    return out


def _assert_same_state(net: torch.nn.Module, ref: torch.nn.Module) -> None:
    got, want = net.state_dict(), ref.state_dict()
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k


@pytest.mark.parametrize("kind", rd.CURVE_KINDS)
@pytest.mark.parametrize("arch", ["mlp", "vgg-bn"])
def test_curve_ends_compute_the_endpoints_exactly(endpoints, small_train, digits, kind, arch):
    a, b = endpoints[arch]
    curve = rd.fit_curve(a, b, small_train, kind=kind, epochs=1, seed=0)
    x = torch.stack([digits[1][i][0] for i in range(64)])
    for t, ref in ((0.0, a), (1.0, b)):
        # the tensors a step trains on (endpoints frozen, M with weight 0) ...
        params = {n: p.detach() for n, p in ref.named_parameters()}
        combined = combine(
            curve_weights(kind, t),
            dict(curve.net_a.named_parameters()),
            {n: curve.mid[n] for n in params},
            dict(curve.net_b.named_parameters()),
        )
        for n in params:
            assert torch.equal(combined[n], params[n]), n
        # ... and the evaluated net: exactly the endpoint's tensors and outputs
        point = curve.point(t)
        _assert_same_state(point, ref)
        with torch.no_grad():
            assert torch.equal(point(x), ref.eval()(x))
    if arch == "vgg-bn":  # at(t) re-estimates BN statistics: at the ends, a reset of A / B
        reset = rd.repair(a, [a], [1.0], digits[0], "reset")
        _assert_same_state(curve.at(0.0, digits[0]), reset)
        # without data, at(t) re-estimates on the data the curve was fitted on
        fitted_on = rd.repair(a, [a], [1.0], small_train, "reset")
        _assert_same_state(curve.at(0.0), fitted_on)
    else:
        _assert_same_state(curve.at(1.0), b)


def test_untrained_curve_at_half_is_the_linear_midpoint(endpoints):
    a, b = endpoints["mlp-bn"]
    line_mid = rd.interpolate([a, b], [0.5, 0.5])
    untrained = {k: v.clone() for k, v in line_mid.state_dict().items()}
    bezier = Curve(a, b, untrained, "bezier").point(0.5)
    for k, v in line_mid.state_dict().items():
        torch.testing.assert_close(bezier.state_dict()[k], v, rtol=1e-6, atol=1e-7)
    _assert_same_state(Curve(a, b, untrained, "polychain").point(0.5), line_mid)


def test_fit_trains_only_the_middle_point_deterministically(endpoints, small_train):
    a, b = endpoints["mlp-bn"]
    before = {k: v.clone() for k, v in a.state_dict().items()}
    c1 = rd.fit_curve(a, b, small_train, epochs=2, seed=3)
    c2 = rd.fit_curve(a, b, small_train, epochs=2, seed=3)
    c3 = rd.fit_curve(a, b, small_train, epochs=2, seed=4)
    _assert_same_state(a, c1.net_a)  # endpoints frozen, inputs untouched
    _assert_same_state(b, c1.net_b)
    assert all(torch.equal(v, before[k]) for k, v in a.state_dict().items())
    assert all(torch.equal(c1.mid[k], c2.mid[k]) for k in c1.mid)  # same seed: same M
    assert any(not torch.equal(c1.mid[k], c3.mid[k]) for k in c1.mid)
    start = rd.interpolate([a, b], [0.5, 0.5]).state_dict()
    assert any(not torch.equal(c1.mid[k], start[k]) for k in c1.mid)  # M moved
    assert len(c1.history) == 2 and c1.seconds > 0


def test_a_fitted_curve_is_lower_than_the_line(endpoints, small_train):
    """The method works at all: a few epochs of curve training beat the straight line."""
    a, b = endpoints["mlp"]
    line = rd.evaluate(rd.interpolate([a, b], [0.5, 0.5]), small_train)["loss"]
    curve = rd.fit_curve(a, b, small_train, epochs=5, seed=0)
    assert rd.evaluate(curve.at(0.5), small_train)["loss"] < line


def test_saved_middle_point_rebuilds_the_curve(endpoints, small_train, tmp_path):
    a, b = endpoints["mlp"]
    curve = rd.fit_curve(a, b, small_train, kind="polychain", epochs=1)
    torch.save(curve.mid, tmp_path / "mid.pt")
    again = Curve(a, b, torch.load(tmp_path / "mid.pt", weights_only=True), "polychain")
    _assert_same_state(again.point(0.3), curve.point(0.3))
    fresh = rd.build_model("mlp", **TINY["mlp"])
    fresh.load_state_dict(curve.mid)  # M is a plain state dict of the architecture


@pytest.mark.parametrize("arch", ["mlp-bn", "vgg-bn"])
def test_curve_to_a_permuted_copy_after_alignment_has_the_same_profile(
    endpoints, small_train, digits, arch
):
    a, b = endpoints[arch]
    train, test = digits
    # Dead units tie in the matching (any order is optimal), so the invariant needs none.
    assert sum(rd.collapsed_filters(b, train).values()) == 0
    spec = rd.permutation_spec(a)
    shuffled = rd.apply_permutation(b, random_permutation(spec.group_sizes(b), seed=7))
    profiles = []
    for other in (b, shuffled):
        aligned = rd.apply_permutation(other, rd.activation_matching(a, other, train), spec)
        curve = rd.fit_curve(a, aligned, small_train, epochs=2, seed=0)
        profiles.append(rd.curve_profile(curve, train, test, ts=5))
    assert profiles[0][["t", "split"]].equals(profiles[1][["t", "split"]])
    torch.testing.assert_close(
        torch.tensor(profiles[1][["loss", "acc"]].to_numpy()),
        torch.tensor(profiles[0][["loss", "acc"]].to_numpy()),
        rtol=1e-5,
        atol=1e-6,
    )


def test_sharded_profile_equals_in_process(endpoints, small_train, digits, ray_ready):
    a, b = endpoints["vgg-bn"]
    curve = rd.fit_curve(a, b, small_train, epochs=1)
    train, test = digits
    whole = rd.curve_profile(curve, train, test, ts=3, batch_size=100)
    sharded = rd.curve_profile(curve, train, test, ts=3, batch_size=100, workers=2)
    assert whole[["t", "split"]].equals(sharded[["t", "split"]])
    torch.testing.assert_close(
        torch.tensor(sharded[["loss", "acc"]].to_numpy()),
        torch.tensor(whole[["loss", "acc"]].to_numpy()),
        rtol=1e-5,
        atol=1e-6,
    )


def test_curve_barriers_measure_against_the_endpoint_line(endpoints, small_train, digits):
    a, b = endpoints["mlp"]
    curve = rd.fit_curve(a, b, small_train, epochs=1)
    profile = rd.curve_profile(curve, *digits, ts=[0.25, 0.75])
    assert sorted(set(profile["t"])) == [0.0, 0.25, 0.5, 0.75, 1.0]
    test = profile[profile["split"] == "test"].set_index("t")
    got = rd.curve_barriers(profile)
    lin = (1 - test.index.to_numpy()) * test["loss"].iloc[0] + test.index * test["loss"].iloc[-1]
    assert got["barrier_loss_max"] == pytest.approx(float((test["loss"] - lin).max()))
    mean_ends = (test.loc[0.0, "loss"] + test.loc[1.0, "loss"]) / 2
    assert got["barrier_loss_mid"] == pytest.approx(test.loc[0.5, "loss"] - mean_ends)
    assert got["barrier_loss_max"] >= got["barrier_loss_mid"]


class _Untouchable(Dataset):
    """A dataset that fails if any example is read: bad input must fail before compute."""

    def __len__(self) -> int:
        return 100

    def __getitem__(self, i: int):
        raise AssertionError("data was read before the input was checked")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kind="spline"), "unknown curve kind 'spline'"),
        (dict(epochs=0), "epochs must be a positive int"),
        (dict(epochs=-2), "epochs must be a positive int"),
        (dict(lr=0.0), "lr must be > 0"),
        (dict(workers=2), "workers must be 1"),
    ],
)
def test_bad_fit_arguments_are_named_in_one_line(endpoints, kwargs, message):
    a, b = endpoints["mlp"]
    with pytest.raises(ValueError, match=message) as err:
        rd.fit_curve(a, b, _Untouchable(), **kwargs)
    assert "\n" not in str(err.value)


def test_endpoints_of_different_architectures_are_refused(endpoints):
    a, _ = endpoints["mlp"]
    wider = rd.build_model("mlp", **{**TINY["mlp"], "width": 32})
    with pytest.raises(ValueError, match="architectures differ") as err:
        rd.fit_curve(a, wider, _Untouchable(), epochs=1)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("ts", [[0.0, 1.5], [-0.1, 0.5], [0.2, "x"], [float("nan")], [], 1])
def test_t_grid_outside_the_unit_interval_is_refused(endpoints, ts):
    a, b = endpoints["vgg-bn"]
    curve = Curve(a, b, rd.interpolate([a, b], [0.5, 0.5]).state_dict())
    with pytest.raises(ValueError, match="t grid") as err:
        rd.curve_profile(curve, _Untouchable(), _Untouchable(), ts=ts)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        curve.at(1.2, _Untouchable())
    with pytest.raises(ValueError, match="no fitting data: pass data"):
        curve.at(0.5)
