"""The registry behind :func:`repair_dist.models.build_model`: name -> constructor.

``net.config`` is a flat JSON-serialisable dict ``{"name": ..., <every constructor argument,
defaults filled in>}``, so ``build_model(**net.config)`` rebuilds the same architecture (this is
what checkpoints store in ``meta.json``). :mod:`~repair_dist.models.catalog` mirrors the
constructors' arguments without torch (a test keeps the two equal).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from torch import nn

from .catalog import MODEL_NAMES
from .mlp import MLP
from .resnet import ResNet20
from .vgg import VGG


def torchvision_resnet(
    name: str = "resnet18",
    width: float = 1,
    norm: str = "bn",
    num_classes: int = 1000,
    in_shape: Sequence[int] = (3, 224, 224),
) -> nn.Module:
    """torchvision ResNet18/50 (load-compatible with torchvision checkpoints for bn, width 1).

    Imports torchvision's models on first use only (seconds, paid by every worker otherwise).
    """
    from .tv_resnet import TorchvisionResNet

    return TorchvisionResNet(name, width, norm, num_classes, in_shape)


_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "vgg": VGG,
    "resnet20": ResNet20,
    "resnet18": partial(torchvision_resnet, "resnet18"),
    "resnet50": partial(torchvision_resnet, "resnet50"),
}


def _jsonable(v: Any) -> Any:
    # Tuples (in_shape) become lists so that the config equals its own JSON round trip.
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    return v


def _signature(name: str) -> inspect.Signature:
    # For a partial (resnet18/50), the signature already omits the bound arch name.
    return inspect.signature(_REGISTRY[name])


def build_model(name: str, **cfg: Any) -> nn.Module:
    """Build a registered model; ``model.config`` records name and all arguments."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    sig = _signature(name)
    try:
        bound = sig.bind(**cfg)
    except TypeError:
        bad = sorted(set(cfg) - set(sig.parameters))
        given = ", ".join(f"{k}={cfg[k]!r}" for k in bad) or repr(cfg)
        valid = ", ".join(sig.parameters)
        raise ValueError(f"{name} does not take {given}; its arguments are: {valid}") from None
    bound.apply_defaults()
    model = _REGISTRY[name](**bound.arguments)
    model.config = {"name": name, **{k: _jsonable(v) for k, v in bound.arguments.items()}}
    return model


__all__ = ["MODEL_NAMES", "build_model", "torchvision_resnet"]
