"""torchvision ResNet18/50 with a width multiplier and a choice of norm, plus their specs.

A module of its own because importing torchvision's models costs seconds (it pulls in
torch._dynamo): every Ray worker imports ``repair_dist.models``, and only nets that are
torchvision ResNets need this, so :mod:`repair_dist.models` imports it on first use.
Grouping rules are those of :mod:`repair_dist.models.resnet`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock as TVBasicBlock
from torchvision.models.resnet import Bottleneck as TVBottleneck
from torchvision.models.resnet import ResNet as TVResNet

from ..perm.spec import PermutationSpec, SpecBuilder
from .norms import layer_bias, make_norm, norm_kind

# --------------------------------------------------------------------------------------------
# torchvision ResNet18 / ResNet50, keeping torchvision's state_dict key names
# --------------------------------------------------------------------------------------------

TORCHVISION_ARCHS: dict[str, tuple[type[nn.Module], tuple[int, ...]]] = {
    "resnet18": (TVBasicBlock, (2, 2, 2, 2)),
    "resnet50": (TVBottleneck, (3, 4, 6, 3)),
}


class TorchvisionResNet(TVResNet):
    """torchvision's ResNet with a channel-width multiplier and a choice of norm.

    Width: the channel plan (64, 128, 256, 512 planes; x4 for bottleneck outputs) is scaled
    explicitly by ``width`` (``max(1, round(c * width))``), because torchvision's
    ``width_per_group`` only widens a bottleneck's inside and BasicBlock refuses it. With
    ``norm="bn"`` and ``width=1`` the module tree, key names and shapes are torchvision's, so
    its checkpoints load with ``strict=True``.

    Other norms go in through torchvision's ``norm_layer`` (ChannelLayerNorm, PostShiftedBN or
    Identity), and then every conv gets a zero bias: REPAIR folds its correction into it.
    Every ReLU is made non-inplace: hooks that observe a norm's output (``Probe(relu=True)``)
    then see a tensor that the block's shared ReLU does not overwrite afterwards.
    Initialisation is torchvision's (Kaiming fan-out for convs, norms at 1/0).
    """

    def __init__(
        self,
        name: str = "resnet18",
        width: float = 1,
        norm: str = "bn",
        num_classes: int = 1000,
        in_shape: Sequence[int] = (3, 224, 224),
    ) -> None:
        if name not in TORCHVISION_ARCHS:
            raise ValueError(
                f"unknown torchvision resnet {name!r}; choose one of {', '.join(TORCHVISION_ARCHS)}"
            )
        if not width > 0:
            raise ValueError(f"resnet width multiplier must be > 0 (got {width!r})")
        norm_kind(norm)  # one readable error for an unknown norm
        # Not ResNet.__init__: it hard-codes the channel plan. We rebuild the same module tree
        # (same attribute names, same registration order) and reuse its _make_layer/forward.
        nn.Module.__init__(self)
        block, layers = TORCHVISION_ARCHS[name]
        self.arch = name
        self.norm_kind = norm

        def norm_layer(channels: int) -> nn.Module:
            return make_norm(norm, channels, conv=True) or nn.Identity()

        self._norm_layer: Callable[[int], nn.Module] = norm_layer
        self.groups = 1
        self.base_width = 64
        self.dilation = 1
        planes = [max(1, round(c * width)) for c in (64, 128, 256, 512)]
        self.inplanes = planes[0]
        self.conv1 = nn.Conv2d(
            int(in_shape[0]), self.inplanes, kernel_size=7, stride=2, padding=3, bias=False
        )
        self.bn1 = norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, planes[0], layers[0])
        self.layer2 = self._make_layer(block, planes[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, planes[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, planes[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(planes[3] * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.ReLU):
                m.inplace = False
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if layer_bias(norm):
                    m.bias = nn.Parameter(torch.zeros(m.out_channels))
            elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def permutation_spec(self) -> PermutationSpec:
        """Spec over torchvision key names.

        Probes: the top-level ``relu`` (used once, by the stem) and each block's own output for
        stream groups; ``bnK`` with ``relu=True`` inside blocks, whose ``relu`` module is shared.
        With norm="none" ``bnK`` is an Identity, still called exactly once, so it stays a
        unique hook point (and sees any correction applied to the conv before it).
        """
        bias = layer_bias(self.norm_kind)
        b = SpecBuilder()

        def conv(name: str, norm: str, out: str, inp: str | None, module: nn.Module) -> None:
            b.layer_with_norm(name, out, inp, bias=bias, ndim=4, norm_name=norm, norm=module)

        stem_g = "P_layer1" if self.layer1[0].downsample is None else "P_stem"
        conv("conv1", "bn1", stem_g, None, self.bn1)
        b.probe(stem_g, "relu")
        prev = stem_g
        for s, stage in enumerate(self.stages, start=1):
            g = f"P_layer{s}"
            for i, block in enumerate(stage):
                p = f"layer{s}.{i}"
                n_convs = 3 if isinstance(block, TVBottleneck) else 2
                inp = prev
                for j in range(1, n_convs + 1):
                    last = j == n_convs
                    out = g if last else f"P_{p}.conv{j}"
                    conv(f"{p}.conv{j}", f"{p}.bn{j}", out, inp, getattr(block, f"bn{j}"))
                    if not last:
                        b.probe(out, f"{p}.bn{j}", relu=True)
                    inp = out
                if block.downsample is None:
                    if prev != g:
                        raise RuntimeError(f"identity shortcut in {p} joins two groups")
                else:
                    conv(f"{p}.downsample.0", f"{p}.downsample.1", g, prev, block.downsample[1])
                b.probe(g, p)
                prev = g
        b.layer("fc", None, prev, bias=True, ndim=2)
        return b.build()


__all__ = ["TORCHVISION_ARCHS", "TorchvisionResNet"]
