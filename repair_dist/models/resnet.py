"""Residual nets: CIFAR ResNet-(6n+2) xW (REPAIR's width study) (torchvision ResNet18/50: tv_resnet).

Permutation groups of a residual net: every tensor written into one residual stream (stem
output if it feeds the stage unchanged, each block's last conv and norm, the stage's shortcut
conv and norm) shares ONE group per stage, because the additions tie their channels together.
Each block-internal conv (conv1, and conv2 of a bottleneck) has a group of its own.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from ..perm.spec import PermutationSpec, SpecBuilder
from .norms import kaiming_init, layer_bias, make_norm, norm_kind

# --------------------------------------------------------------------------------------------
# CIFAR-style ResNet (He et al. 2016, section 4.2), as in the REPAIR code's width study
# --------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """conv1-norm1-relu1-conv2-norm2 (+shortcut) -relu2, each ReLU its own module.

    Distinct ReLU modules give every post-ReLU activation a unique hook point. The shortcut is a
    1x1 conv + norm when the shape changes (the REPAIR code's choice), identity otherwise. Convs
    have biases whenever no BatchNorm follows them, so REPAIR can fold corrections into them.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str) -> None:
        super().__init__()
        bias = layer_bias(norm)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)
        self.norm1 = make_norm(norm, c_out, conv=True) or nn.Identity()
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=bias)
        self.norm2 = make_norm(norm, c_out, conv=True) or nn.Identity()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(c_in, c_out, 1, stride=stride, bias=bias),
                    norm=make_norm(norm, c_out, conv=True) or nn.Identity(),
                )
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR ResNet-``depth`` (6n+2; 20 by default) with stage widths 16w, 32w, 64w.

    Module names: ``stem.{conv,norm,relu}``, ``layer{1,2,3}.{i}`` blocks, ``head``.
    """

    def __init__(
        self,
        width: int = 1,
        norm: str = "bn",
        in_shape: Sequence[int] = (3, 32, 32),
        num_classes: int = 10,
        depth: int = 20,
    ) -> None:
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"ResNet20 width must be an int multiplier >= 1 (got {width!r})")
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(
                f"CIFAR ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, ...); "
                f"got {depth!r}"
            )
        norm_kind(norm)  # one readable error for an unknown norm
        self.norm_kind = norm
        n = (depth - 2) // 6
        widths = (16 * width, 32 * width, 64 * width)
        self.stem = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(int(in_shape[0]), widths[0], 3, padding=1, bias=layer_bias(norm)),
                norm=make_norm(norm, widths[0], conv=True) or nn.Identity(),
                relu=nn.ReLU(),
            )
        )
        c_in = widths[0]
        for s, c_out in enumerate(widths):
            blocks = []
            for i in range(n):
                stride = 2 if s > 0 and i == 0 else 1
                blocks.append(BasicBlock(c_in, c_out, stride, norm))
                c_in = c_out
            self.add_module(f"layer{s + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c_in, num_classes)
        kaiming_init(self)

    @property
    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(self.avgpool(x).flatten(1))

    def permutation_spec(self) -> PermutationSpec:
        """Spec with one stream group per stage."""
        bias = layer_bias(self.norm_kind)
        b = SpecBuilder()

        def conv(name: str, norm: str, out: str, inp: str | None, module: nn.Module) -> None:
            # A conv and the norm that directly consumes its output: both act on group ``out``.
            b.layer_with_norm(name, out, inp, bias=bias, ndim=4, norm_name=norm, norm=module)

        first = self.layer1[0]
        stem_g = "P_layer1" if isinstance(first.shortcut, nn.Identity) else "P_stem"
        conv("stem.conv", "stem.norm", stem_g, None, self.stem.norm)
        b.probe(stem_g, "stem.relu")
        prev = stem_g
        for s, stage in enumerate(self.stages, start=1):
            g = f"P_layer{s}"
            for i, block in enumerate(stage):
                p = f"layer{s}.{i}"
                g1 = f"P_{p}.conv1"
                conv(f"{p}.conv1", f"{p}.norm1", g1, prev, block.norm1)
                b.probe(g1, f"{p}.relu1")
                conv(f"{p}.conv2", f"{p}.norm2", g, g1, block.norm2)
                if isinstance(block.shortcut, nn.Identity):
                    if prev != g:
                        raise RuntimeError(f"identity shortcut in {p} joins two groups")
                else:
                    conv(f"{p}.shortcut.conv", f"{p}.shortcut.norm", g, prev, block.shortcut.norm)
                b.probe(g, f"{p}.relu2")
                prev = g
        b.layer("head", None, prev, bias=True, ndim=2)
        return b.build()


__all__ = ["BasicBlock", "ResNet20"]
