"""Normalisation factory: ``bn`` | ``ln`` | ``none`` | ``psbn`` for 1-d (MLP) and 2-d (conv) nets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis at every spatial position (as in the REPAIR code).

    Normalising over channels only (not over H, W) keeps the layer permutation-equivariant in
    channels and its affine parameters per channel, so specs permute it like a BatchNorm.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return super().forward(x)


class PostShiftedBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose collapsed filters are revived (Zhou et al. 2020, post-shifted BN).

    With BN + ReLU at large learning rates, a filter whose scale falls to ~0 (or whose shifted
    output is negative everywhere) never recovers. ``revive_collapsed`` resets those channels'
    scale to the layer's median scale and their shift to zero, so training can use them again;
    the training loop calls it at the end of every epoch. Otherwise identical to BatchNorm.
    """

    def __init__(self, num_features: int, threshold: float = 1e-2) -> None:
        super().__init__(num_features)
        self.threshold = threshold

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 4):
            raise ValueError(f"expected 2D or 4D input (got {x.dim()}D input)")

    @torch.no_grad()
    def revive_collapsed(self) -> int:
        collapsed = self.weight.abs() < self.threshold
        n = int(collapsed.sum())
        if n and n < self.num_features:
            self.weight[collapsed] = self.weight[~collapsed].abs().median()
            self.bias[collapsed] = 0.0
        return n


@dataclass(frozen=True)
class NormKind:
    """One normalisation kind: how to build it, and whether it normalises by batch statistics.

    ``batch_statistics`` kinds (BatchNorm and psBN) make the bias of the layer before them
    redundant, so models build that layer without one. Everything downstream (specs, REPAIR)
    dispatches on the built module's type instead of on this name.
    """

    make: Callable[[int, bool], nn.Module | None]
    batch_statistics: bool


NORM_KINDS: dict[str, NormKind] = {
    "bn": NormKind(lambda c, conv: nn.BatchNorm2d(c) if conv else nn.BatchNorm1d(c), True),
    "ln": NormKind(lambda c, conv: ChannelLayerNorm(c), False),
    "none": NormKind(lambda c, conv: None, False),
    "psbn": NormKind(lambda c, conv: PostShiftedBatchNorm(c), True),
}
NORMS: tuple[str, ...] = tuple(NORM_KINDS)


def norm_kind(kind: str) -> NormKind:
    """The registry entry of ``kind``; one readable error for an unknown name."""
    if kind not in NORM_KINDS:
        raise ValueError(f"unknown norm {kind!r}; choose one of {', '.join(NORMS)}")
    return NORM_KINDS[kind]


def make_norm(kind: str, channels: int, *, conv: bool) -> nn.Module | None:
    """The normalisation module for ``kind`` (``None`` for ``none``)."""
    return norm_kind(kind).make(channels, conv)


def layer_bias(kind: str) -> bool:
    """Whether a conv/linear layer followed by a norm of ``kind`` needs its own bias."""
    return not norm_kind(kind).batch_statistics


def kaiming_init(net: nn.Module) -> None:
    """He init (fan-in, ReLU gain) for every conv/linear, zero biases: deep plain nets train."""
    for m in net.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
