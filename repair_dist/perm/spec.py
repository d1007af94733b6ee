"""Permutation specs: which weight axes move together, and where to observe a net.

A spec is *data* (as in Git Re-Basin): ``axes[name]`` gives, for every parameter or buffer of
the net, the permutation group acting on each of its axes (``None`` = not permuted). Matching,
applying a permutation, REPAIR and the tests all read the same spec, so an architecture only
declares its spec once and every algorithm works on it without branching on model names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..passes.probes import Probe


def is_batch_norm(module: nn.Module | None) -> bool:
    """A norm that keeps running statistics: REPAIR resets it instead of folding a correction."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats


@dataclass(frozen=True)
class RepairPoint:
    """A conv/linear layer whose output channels REPAIR renormalises.

    ``group`` permutes those channels. ``norm`` names a BatchNorm that directly consumes the
    output: then REPAIR acts on that BatchNorm's statistics (a reset), otherwise a correction
    is folded into the layer's own weight and bias.
    """

    module: str
    group: str
    norm: str | None = None


@dataclass(frozen=True)
class PermutationSpec:
    """Permutation groups of a net, the tensors they act on, and probes for matching/REPAIR.

    ``match_probes[group]`` lists the post-ReLU probes of a group in forward order. For a plain
    layer there is one; for a residual stream there is one per block of the stage, and
    activation matching either uses the last (stage output, REPAIR code) or sums all
    correlations (Tatro et al.).
    """

    axes: dict[str, tuple[str | None, ...]]
    match_probes: dict[str, tuple[Probe, ...]]
    repair_points: tuple[RepairPoint, ...] = field(default_factory=tuple)

    @property
    def groups(self) -> list[str]:
        """Group names in first-appearance order (deterministic)."""
        seen: dict[str, None] = {}
        for per_axis in self.axes.values():
            for g in per_axis:
                if g is not None:
                    seen.setdefault(g, None)
        return list(seen)

    def group_sizes(self, net: nn.Module) -> dict[str, int]:
        """Size of every group, read off the net's tensors (and checked to be consistent)."""
        tensors = dict(net.state_dict())
        sizes: dict[str, int] = {}
        for name, per_axis in self.axes.items():
            t = tensors[name]
            for axis, g in enumerate(per_axis):
                if g is None:
                    continue
                n = t.shape[axis]
                if sizes.setdefault(g, n) != n:
                    raise ValueError(
                        f"spec inconsistent: group {g!r} has size {sizes[g]} but {name} axis "
                        f"{axis} has {n}"
                    )
        return sizes

    def validate(self, net: nn.Module) -> None:
        """Fail loudly if the spec names tensors or modules the net does not have."""
        tensors = dict(net.state_dict())
        modules = dict(net.named_modules())
        for name, per_axis in self.axes.items():
            if name not in tensors:
                raise ValueError(f"spec names tensor {name!r} that the net does not have")
            if len(per_axis) != tensors[name].dim():
                raise ValueError(
                    f"spec gives {len(per_axis)} axes for {name!r} of shape {tuple(tensors[name].shape)}"
                )
        groups = set(self.groups)
        for g, probes in self.match_probes.items():
            if g not in groups:
                raise ValueError(f"probe group {g!r} is not a permutation group")
            for p in probes:
                if p.module not in modules:
                    raise ValueError(f"probe module {p.module!r} not in net")
        for rp in self.repair_points:
            if rp.module not in modules:
                raise ValueError(f"repair point {rp.module!r} not in net")
            if rp.norm is not None and rp.norm not in modules:
                raise ValueError(f"repair norm {rp.norm!r} not in net")
        self.group_sizes(net)


class SpecBuilder:
    """Small helper that architectures use to declare their spec layer by layer."""

    def __init__(self) -> None:
        self.axes: dict[str, tuple[str | None, ...]] = {}
        self.match_probes: dict[str, list[Probe]] = {}
        self.repair_points: list[RepairPoint] = []

    def layer(
        self, module: str, out: str | None, inp: str | None, *, bias: bool, ndim: int
    ) -> None:
        """A linear (ndim=2) or conv (ndim=4) layer mapping group ``inp`` to group ``out``."""
        self.axes[f"{module}.weight"] = (out, inp) + (None,) * (ndim - 2)
        if bias:
            self.axes[f"{module}.bias"] = (out,)

    def norm(self, name: str, module: nn.Module, group: str) -> None:
        """A normalisation layer acting per channel of ``group``.

        Its permuted tensors are read off the module itself (affine weight/bias, BatchNorm
        running statistics), so a new norm kind needs no change here. Identity: nothing.
        """
        for tensor in ("weight", "bias", "running_mean", "running_var"):
            if getattr(module, tensor, None) is not None:
                self.axes[f"{name}.{tensor}"] = (group,)

    def probe(self, group: str, module: str, *, relu: bool = False) -> None:
        self.match_probes.setdefault(group, []).append(Probe(module, relu))

    def repair(self, module: str, group: str, norm: str | None = None) -> None:
        """A REPAIR point; ``norm`` names the BatchNorm that consumes the output, if any."""
        self.repair_points.append(RepairPoint(module, group, norm))

    def layer_with_norm(
        self,
        layer: str,
        group: str,
        inp: str | None,
        *,
        bias: bool,
        ndim: int,
        norm_name: str,
        norm: nn.Module,
    ) -> None:
        """A conv/linear layer and the norm that directly consumes its output (both on
        ``group``), plus its REPAIR point: a BN reset if the norm keeps running statistics,
        a folded correction otherwise."""
        self.layer(layer, group, inp, bias=bias, ndim=ndim)
        self.norm(norm_name, norm, group)
        self.repair(layer, group, norm_name if is_batch_norm(norm) else None)

    def build(self) -> PermutationSpec:
        return PermutationSpec(
            axes=dict(self.axes),
            match_probes={g: tuple(p) for g, p in self.match_probes.items()},
            repair_points=tuple(self.repair_points),
        )


def permutation_spec(net: nn.Module) -> PermutationSpec:
    """The spec of a net from this package (every model implements ``permutation_spec()``)."""
    builder = getattr(net, "permutation_spec", None)
    if builder is None:
        raise TypeError(
            f"{type(net).__name__} declares no permutation spec; build it with "
            "repair_dist.build_model or give it a permutation_spec() method"
        )
    spec = builder()
    spec.validate(net)
    return spec
