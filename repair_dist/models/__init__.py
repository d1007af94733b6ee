"""Model registry: ``build_model(name, **cfg)``; every built net remembers its config.

``net.config`` is a flat JSON-serialisable dict ``{"name": ..., <every constructor argument,
defaults filled in>}``, so ``build_model(**net.config)`` rebuilds the same architecture (this is
what checkpoints store in ``meta.json``).

Names are imported on first use (PEP 562): :data:`MODEL_NAMES` comes from the torch-free
:mod:`~repair_dist.models.catalog`, so planning a sweep never imports torch; ``build_model``
and the model classes import it when first named.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_api
from .catalog import MODEL_NAMES

#: Public name -> (module, attribute).
_API: dict[str, tuple[str, str]] = {
    "MLP": (".mlp", "MLP"),
    "NORMS": (".norms", "NORMS"),
    "NORM_KINDS": (".norms", "NORM_KINDS"),
    "VGG": (".vgg", "VGG"),
    "ResNet20": (".resnet", "ResNet20"),
    # torchvision's models cost seconds to import, paid by every worker otherwise
    "TorchvisionResNet": (".tv_resnet", "TorchvisionResNet"),
    "build_model": (".registry", "build_model"),
    "layer_bias": (".norms", "layer_bias"),
    "make_norm": (".norms", "make_norm"),
    "norm_kind": (".norms", "norm_kind"),
    "torchvision_resnet": (".registry", "torchvision_resnet"),
}

__getattr__, __dir__ = lazy_api(__name__, globals(), _API)

__all__ = [
    "MLP",
    "MODEL_NAMES",
    "NORMS",
    "NORM_KINDS",
    "VGG",
    "ResNet20",
    "TorchvisionResNet",
    "build_model",
    "layer_bias",
    "make_norm",
    "norm_kind",
    "torchvision_resnet",
]

if TYPE_CHECKING:  # what the names are, for type checkers and IDEs
    from .mlp import MLP
    from .norms import NORM_KINDS, NORMS, layer_bias, make_norm, norm_kind
    from .registry import build_model, torchvision_resnet
    from .resnet import ResNet20
    from .tv_resnet import TorchvisionResNet
    from .vgg import VGG
