"""Interpolation of 2..N aligned nets of one architecture."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from .perm.activation import check_same_architecture


def interpolate(nets: Sequence[nn.Module], weights: Sequence[float]) -> nn.Module:
    """A new net whose floating tensors are ``sum_k weights[k] * nets[k]``.

    Integer buffers (BatchNorm's ``num_batches_tracked``) are taken from the first net. BN
    running statistics are interpolated too; REPAIR's ``reset`` re-estimates them.
    """
    if len(nets) < 1 or len(nets) != len(weights):
        raise ValueError(f"need one weight per net (got {len(nets)} nets, {len(weights)} weights)")
    check_same_architecture(*nets)
    states = [n.state_dict() for n in nets]
    merged = {}
    for key, ref in states[0].items():
        if torch.is_floating_point(ref):
            acc = torch.zeros_like(ref, dtype=torch.float64)
            for w, s in zip(weights, states, strict=True):
                acc += float(w) * s[key].to(torch.float64)
            merged[key] = acc.to(ref.dtype)
        else:
            merged[key] = ref.clone()
    out = copy.deepcopy(nets[0])
    out.load_state_dict(merged)
    return out.eval()


def alpha_weights(alpha: float) -> list[float]:
    """Weights of (A, B) at position ``alpha`` of the segment from A (0) to B (1)."""
    return [1.0 - alpha, alpha]
