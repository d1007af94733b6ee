"""Streaming statistics: shards add up to the whole, and agree with textbook estimators."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from repair_dist.passes import CoMoments, CrossMoments, StatsDict, flatten_channels


def _chunks(x: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    return list(torch.split(x, sizes))


@pytest.mark.parametrize("shape", [(257, 7), (37, 5, 3, 4)])
def test_cross_moments_of_shards_merge_to_the_whole(shape):
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(*shape, generator=gen) * 3 + 1
    b = torch.randn(*shape, generator=gen) + a * 0.5
    whole = CrossMoments.from_batch(a, b)
    sizes = [shape[0] // 3, shape[0] // 2, shape[0] - shape[0] // 3 - shape[0] // 2]
    parts = [
        CrossMoments.from_batch(x, y)
        for x, y in zip(_chunks(a, sizes), _chunks(b, sizes), strict=True)
    ]
    for order in ([0, 1, 2], [2, 0, 1]):
        merged = parts[order[0]].merge(parts[order[1]]).merge(parts[order[2]])
        assert merged.n == whole.n
        for field in ("mean_a", "mean_b", "m2_a", "m2_b", "c_ab"):
            torch.testing.assert_close(
                getattr(merged, field), getattr(whole, field), rtol=1e-10, atol=1e-10
            )


def test_correlation_equals_numpy_pearson():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(500, 4, generator=gen)
    b = torch.randn(500, 3, generator=gen) + a[:, :3]
    ref = np.corrcoef(a.double().numpy().T, b.double().numpy().T)[:4, 4:]
    np.testing.assert_allclose(CrossMoments.from_batch(a, b).corr().numpy(), ref, rtol=1e-10)


def test_dead_units_give_finite_zero_correlation():
    a = torch.randn(100, 3)
    a[:, 1] = 0.0
    corr = CrossMoments.from_batch(a, torch.randn(100, 3)).corr()
    assert torch.isfinite(corr).all()
    assert (corr[1] == 0).all()


def test_comoments_shards_and_joint_statistics():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(90, 6, 2, 2, generator=gen)
    y = 2 * x + torch.randn(90, 6, 2, 2, generator=gen)
    whole = CoMoments.from_batch(x, y)
    merged = CoMoments.from_batch(x[:10], y[:10]).merge(CoMoments.from_batch(x[10:], y[10:]))
    torch.testing.assert_close(merged.cm, whole.cm, rtol=1e-10, atol=1e-10)
    fx, fy = flatten_channels(x).double(), flatten_channels(y).double()
    torch.testing.assert_close(whole.std(0), fx.std(0, unbiased=False), rtol=1e-10, atol=0)
    ref = torch.tensor([np.corrcoef(fx[:, c], fy[:, c])[0, 1] for c in range(6)])
    torch.testing.assert_close(whole.corr(0, 1), ref.double(), rtol=1e-10, atol=0)


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
