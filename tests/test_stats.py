"""Streaming statistics: shards of whole batches add up to the whole; float32 batch-centred
moments agree with float64 textbook estimators to ~1e-6."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from repair_dist.passes import (
    CoMoments,
    CrossMoments,
    Probe,
    StatsDict,
    centred,
    flatten_channels,
    tap,
)


def _chunks(x: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    return list(torch.split(x, sizes))


def _assert_moments_close(x, y, rtol: float) -> None:
    assert x.n == y.n
    for field in ("mean_a", "mean_b", "m2_a", "m2_b", "c_ab"):
        ex, ey = getattr(x, field), getattr(y, field)
        torch.testing.assert_close(ex, ey, rtol=rtol, atol=rtol * float(ey.abs().max()))


@pytest.mark.parametrize("shape", [(257, 7), (37, 5, 3, 4)])
def test_shards_of_whole_batches_merge_to_the_whole(shape):
    """The contract of every sharded pass: batches are fixed, a shard is a set of whole
    batches, and any grouping and merge order of them gives the same float64 statistics up to
    float64 rounding. Re-splitting one batch into other chunks changes its float32 part (about
    1e-7 relative), which the last check bounds."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(*shape, generator=gen) * 3 + 1
    b = torch.randn(*shape, generator=gen) + a * 0.5
    sizes = [shape[0] // 3, shape[0] // 2, shape[0] - shape[0] // 3 - shape[0] // 2]
    batches = [
        CrossMoments.from_batch(x, y)
        for x, y in zip(_chunks(a, sizes), _chunks(b, sizes), strict=True)
    ]
    in_order = batches[0].merge(batches[1]).merge(batches[2])
    for order in ([2, 0, 1], [1, 2, 0]):
        merged = batches[order[0]].merge(batches[order[1]].merge(batches[order[2]]))
        _assert_moments_close(merged, in_order, rtol=1e-12)
    resplit = CrossMoments.from_batch(a, b)
    _assert_moments_close(resplit, in_order, rtol=1e-5)
    torch.testing.assert_close(resplit.corr(), in_order.corr(), rtol=0, atol=2e-6)


def test_correlation_equals_float64_pearson_even_far_from_zero():
    """Batch centring keeps float32 statistics within 2e-6 of float64, also when the
    activations sit far from zero (where raw float32 sums of squares would cancel)."""
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(2000, 4, generator=gen) + 30
    b = torch.randn(2000, 3, generator=gen) + a[:, :3] * 0.5 + 60
    ref = np.corrcoef(a.double().numpy().T, b.double().numpy().T)[:4, 4:]
    parts = [CrossMoments.from_batch(x, y) for x, y in zip(a.split(500), b.split(500), strict=True)]
    merged = parts[0].merge(parts[1]).merge(parts[2]).merge(parts[3])
    np.testing.assert_allclose(merged.corr().numpy(), ref, rtol=0, atol=2e-6)
    var = a.double().var(0, unbiased=False)
    torch.testing.assert_close(merged.m2_a / merged.n, var, rtol=1e-5, atol=0)


def test_dead_and_constant_units_correlate_exactly_zero():
    """A dead (all-zero) or constant unit correlates exactly 0 whatever the float noise of its
    centring; a unit that is constant within each batch but not overall is a live unit."""
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(100, 4, generator=gen)
    a[:, 1] = 0.0
    a[:, 2] = 0.1  # not exactly representable: its float32 batch mean is noisy
    a[:, 3] = torch.arange(100).div(50).floor()  # 0 in the first batch, 1 in the second
    b = torch.randn(100, 3, generator=gen) + a[:, 3:] * 2
    merged = CrossMoments.from_batch(a[:50], b[:50]).merge(CrossMoments.from_batch(a[50:], b[50:]))
    corr = merged.corr()
    assert torch.isfinite(corr).all()
    assert (corr[1] == 0).all() and (corr[2] == 0).all()
    ref = np.corrcoef(a[:, 3].double().numpy(), b.double().numpy().T)[0, 1:]
    np.testing.assert_allclose(corr[3].numpy(), ref, rtol=0, atol=2e-6)


def test_comoments_shards_and_joint_statistics():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(90, 6, 2, 2, generator=gen)
    y = 2 * x + torch.randn(90, 6, 2, 2, generator=gen)
    parts = [CoMoments.from_batch(x[i : i + 30], y[i : i + 30]) for i in (0, 30, 60)]
    merged = parts[0].merge(parts[1]).merge(parts[2])
    other_order = parts[2].merge(parts[0].merge(parts[1]))
    torch.testing.assert_close(other_order.cm, merged.cm, rtol=1e-12, atol=0)
    torch.testing.assert_close(other_order.mean, merged.mean, rtol=1e-12, atol=1e-15)
    fx, fy = flatten_channels(x).double(), flatten_channels(y).double()
    torch.testing.assert_close(merged.std(0), fx.std(0, unbiased=False), rtol=1e-6, atol=0)
    ref = torch.tensor([np.corrcoef(fx[:, c], fy[:, c])[0, 1] for c in range(6)])
    torch.testing.assert_close(merged.corr(0, 1), ref.double(), rtol=0, atol=2e-6)


def test_observing_inside_the_hook_is_safe_from_later_in_place_ops():
    """The centred copy is taken in the hook: an in-place ReLU after the probe cannot change
    it (no defensive clone is made, the centred data is the only copy)."""
    torch.manual_seed(4)
    net = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.ReLU(inplace=True))
    x = torch.randn(64, 5)
    store: dict = {}
    with torch.no_grad(), tap(net, [Probe("0")], store, centred):
        net(x)
        pre = net[0](x)
    got = CoMoments.from_centred(store[Probe("0")])
    torch.testing.assert_close(got.mean[0], pre.double().mean(0), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got.var(0), pre.double().var(0, unbiased=False), rtol=1e-5, atol=0)
    assert (pre < 0).any()  # the in-place ReLU would have changed an uncopied observation


def test_statsdict_merges_key_by_key():
    a = StatsDict(p=CoMoments.from_batch(torch.ones(3, 2)))
    b = StatsDict(
        p=CoMoments.from_batch(torch.zeros(5, 2)), q=CoMoments.from_batch(torch.ones(1, 2))
    )
    m = a.merge(b)
    assert set(m) == {"p", "q"} and m["p"].n == 8
    torch.testing.assert_close(m["p"].mean[0], torch.full((2,), 3 / 8, dtype=torch.float64))


def test_moments_without_cross_terms_match_the_full_ones_and_merge():
    gen = torch.Generator().manual_seed(5)
    a, b = torch.randn(300, 6, generator=gen), torch.randn(300, 4, generator=gen)
    full = CrossMoments.from_batch(a[:100], b[:100]).merge(
        CrossMoments.from_batch(a[100:], b[100:])
    )
    lean = CrossMoments.from_batch(a[:100], b[:100], cross=False).merge(
        CrossMoments.from_batch(a[100:], b[100:], cross=False)
    )
    assert full.has_cross and not lean.has_cross
    for name in ("mean_a", "mean_b", "m2_a", "m2_b"):
        torch.testing.assert_close(getattr(lean, name), getattr(full, name), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="without cross terms"):
        lean.corr()


def test_cross_moments_travel_as_one_tensor_and_arrive_equal():
    """Partials cross process boundaries (Ray): the packed pickle restores every field."""
    import pickle

    gen = torch.Generator().manual_seed(6)
    a, b = torch.randn(40, 5, 3, generator=gen), torch.randn(40, 4, 3, generator=gen)
    for cross in (True, False):
        m = CrossMoments.from_batch(a, b, cross)
        back = pickle.loads(pickle.dumps(m))
        assert back.n == m.n and back.has_cross == cross
        for x, y in zip(m._tensors(), back._tensors(), strict=True):
            assert torch.equal(x, y)


def test_alignment_pass_equals_batchwise_moments_merged():
    """The pass's streaming engine (flat float64 merges, cross GEMM in B's hook, shared
    scratch) gives the moments of :meth:`CrossMoments.from_batch` merged batch by batch, at
    linear, conv and 1x1-spatial probes, with ReLU probes, an in-place ReLU after a probe,
    moments-only probes and a dead unit (correlating exactly 0)."""
    from repair_dist.passes import alignment_stats_pass, snapshot

    def net(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        m = torch.nn.Sequential(
            torch.nn.Conv2d(2, 5, 3),
            torch.nn.ReLU(inplace=True),
            torch.nn.Conv2d(5, 4, 4),  # 4x4 -> 1x1 spatial
            torch.nn.Flatten(),
            torch.nn.Linear(4, 6),
        )
        with torch.no_grad():
            m[0].weight[1] = 0.0
            m[0].bias[1] = -1.0  # channel 1 is dead after the ReLU
        return m.eval()

    net_a, net_b = net(0), net(1)
    gen = torch.Generator().manual_seed(7)
    batches = [(torch.randn(n, 2, 6, 6, generator=gen) + 2, None) for n in (9, 4, 7)]
    probes = [Probe("0", relu=True), Probe("1"), Probe("2"), Probe("4")]
    lean = [Probe("2")]
    got = alignment_stats_pass(net_a, net_b, batches=batches, probes=probes, moments_only=lean)
    ref = StatsDict()
    acts_a: dict = {}
    acts_b: dict = {}
    with (
        torch.no_grad(),
        tap(net_a, probes, acts_a, snapshot),
        tap(net_b, probes, acts_b, snapshot),
    ):
        for x, _ in batches:
            net_a(x)
            net_b(x)
            for p in probes:
                ref.add(p, CrossMoments.from_batch(acts_a[p], acts_b[p], p not in lean))
    assert got.keys() == ref.keys()
    for p in probes:
        assert got[p].n == ref[p].n and got[p].has_cross == (p not in lean)
        for name in ("mean_a", "mean_b", "m2_a", "m2_b", "c_ab"):
            e, g = getattr(ref[p], name), getattr(got[p], name)
            assert g.dtype == torch.float64 and g.shape == e.shape
            if e.numel() == 0:  # no cross terms at a moments-only probe
                continue
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5 * max(float(e.abs().max()), 1.0))
        if p not in lean:
            torch.testing.assert_close(got[p].corr(), ref[p].corr(), rtol=0, atol=2e-6)
    for p in (Probe("0", relu=True), Probe("1")):
        assert (got[p].corr()[1] == 0).all()  # the dead unit
    # the pass runs under inference_mode, but hands back ordinary tensors
    assert not any(t.is_inference() for m in got.values() for t in m._tensors())
