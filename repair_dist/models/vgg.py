"""VGG (11/13/16/19) for small images: the plain conv net where REPAIR's gains are largest."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..perm.spec import PermutationSpec, SpecBuilder
from .norms import kaiming_init, layer_bias, make_norm, norm_kind

# Channel plans of Simonyan & Zisserman; "M" = 2x2 max-pool.
#: Channel plans of the VGG paper ("M" = max-pool), written as strings so they stay one line.
_PLANS = {
    11: "64 M 128 M 256 256 M 512 512 M 512 512 M",
    13: "64 64 M 128 128 M 256 256 M 512 512 M 512 512 M",
    16: "64 64 M 128 128 M 256 256 256 M 512 512 512 M 512 512 512 M",
    19: "64 64 M 128 128 M 256 256 256 256 M 512 512 512 512 M 512 512 512 512 M",
}
VGG_CONFIGS: dict[int, tuple[int | str, ...]] = {
    depth: tuple(x if x == "M" else int(x) for x in plan.split()) for depth, plan in _PLANS.items()
}


class VGGBlock(nn.Module):
    """conv3x3 -> norm -> ReLU [-> max-pool] (names fixed: specs refer to them).

    The pool is ``MaxPool2d(2, ceil_mode=True)``, which maps a 1x1 map to 1x1, so the five
    pools of VGG never fail on small inputs such as 8x8 digits. The conv has a bias whenever no
    BatchNorm follows it: REPAIR folds its per-channel correction into weight *and* bias.
    """

    def __init__(self, c_in: int, c_out: int, norm: str, pool: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=layer_bias(norm))
        self.norm = make_norm(norm, c_out, conv=True) or nn.Identity()
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2, ceil_mode=True) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.norm(self.conv(x))))


class VGG(nn.Module):
    """VGG-``depth`` with channels scaled by ``width``, global average pool, linear classifier."""

    def __init__(
        self,
        depth: int = 11,
        width: float = 1,
        norm: str = "bn",
        in_shape: Sequence[int] = (3, 32, 32),
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if depth not in VGG_CONFIGS:
            raise ValueError(
                f"VGG depth must be one of {', '.join(map(str, VGG_CONFIGS))} (got {depth!r})"
            )
        if not width > 0:
            raise ValueError(f"VGG width multiplier must be > 0 (got {width!r})")
        norm_kind(norm)  # one readable error for an unknown norm
        self.norm_kind = norm
        plan = VGG_CONFIGS[depth]
        blocks: list[VGGBlock] = []
        c_in = int(in_shape[0])
        for i, entry in enumerate(plan):
            if entry == "M":
                continue
            c_out = max(1, round(int(entry) * width))
            pool = i + 1 < len(plan) and plan[i + 1] == "M"
            blocks.append(VGGBlock(c_in, c_out, norm, pool))
            c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c_in, num_classes)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(self.avgpool(x).flatten(1))

    def permutation_spec(self) -> PermutationSpec:
        """One group per conv."""
        b = SpecBuilder()
        has_bias = layer_bias(self.norm_kind)
        prev: str | None = None
        for i, block in enumerate(self.blocks):
            g = f"P{i}"
            b.layer_with_norm(
                f"blocks.{i}.conv",
                g,
                prev,
                bias=has_bias,
                ndim=4,
                norm_name=f"blocks.{i}.norm",
                norm=block.norm,
            )
            b.probe(g, f"blocks.{i}.act")
            prev = g
        b.layer("head", None, prev, bias=True, ndim=2)
        return b.build()
