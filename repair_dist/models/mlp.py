"""Deep plain MLP: the model where variance collapse is easiest to see."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..perm.spec import PermutationSpec, SpecBuilder
from .norms import kaiming_init, make_norm


class MLPBlock(nn.Module):
    """linear -> norm -> ReLU (names fixed: specs refer to them)."""

    def __init__(self, d_in: int, d_out: int, norm: str) -> None:
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)
        self.norm = make_norm(norm, d_out, conv=False) or nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.linear(x)))


class MLP(nn.Module):
    """``depth`` hidden layers of ``width`` units, then a linear classifier."""

    def __init__(
        self,
        depth: int = 6,
        width: int = 128,
        norm: str = "none",
        in_shape: tuple[int, ...] = (1, 8, 8),
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(
                f"MLP needs depth >= 1 and width >= 1 (got depth={depth}, width={width})"
            )
        self.norm_kind = norm
        d_in = math.prod(in_shape)
        self.blocks = nn.ModuleList(
            MLPBlock(d_in if i == 0 else width, width, norm) for i in range(depth)
        )
        self.head = nn.Linear(width, num_classes)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def permutation_spec(self) -> PermutationSpec:
        b = SpecBuilder()
        prev: str | None = None
        for i, block in enumerate(self.blocks):
            g = f"P{i}"
            b.layer_with_norm(
                f"blocks.{i}.linear",
                g,
                prev,
                bias=True,
                ndim=2,
                norm_name=f"blocks.{i}.norm",
                norm=block.norm,
            )
            b.probe(g, f"blocks.{i}.act")
            prev = g
        b.layer("head", None, prev, bias=True, ndim=2)
        return b.build()
