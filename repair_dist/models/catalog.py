"""Every registered model's name and constructor arguments, without importing torch.

Why: planning a sweep (its endpoints' keys, default depths, integer widths) needs only the
arguments of each constructor, and importing the constructors means importing torch (over a
second), which a finished sweep's rerun never uses. The registry
(:mod:`repair_dist.models.registry`) stays the authority: ``tests/test_models.py`` checks that
this catalog equals ``inspect.signature`` of every registered constructor, so the two cannot
drift apart.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

_ARG = inspect.Parameter.POSITIONAL_OR_KEYWORD


def _signature(*args: tuple[str, str, object]) -> inspect.Signature:
    """A constructor's signature from ``(name, annotation, default)`` triples, in order."""
    return inspect.Signature(
        [inspect.Parameter(name, _ARG, default=default, annotation=a) for name, a, default in args]
    )


#: name -> the signature ``build_model(name, ...)`` binds (annotations as the source spells
#: them: the model modules use ``from __future__ import annotations``).
SIGNATURES: dict[str, inspect.Signature] = {
    "mlp": _signature(
        ("depth", "int", 6),
        ("width", "int", 128),
        ("norm", "str", "none"),
        ("in_shape", "tuple[int, ...]", (1, 8, 8)),
        ("num_classes", "int", 10),
    ),
    "vgg": _signature(
        ("depth", "int", 11),
        ("width", "float", 1),
        ("norm", "str", "bn"),
        ("in_shape", "Sequence[int]", (3, 32, 32)),
        ("num_classes", "int", 10),
    ),
    "resnet20": _signature(
        ("width", "int", 1),
        ("norm", "str", "bn"),
        ("in_shape", "Sequence[int]", (3, 32, 32)),
        ("num_classes", "int", 10),
        ("depth", "int", 20),
    ),
    **{
        name: _signature(
            ("width", "float", 1),
            ("norm", "str", "bn"),
            ("num_classes", "int", 1000),
            ("in_shape", "Sequence[int]", (3, 224, 224)),
        )
        for name in ("resnet18", "resnet50")
    },
}
MODEL_NAMES: tuple[str, ...] = tuple(SIGNATURES)


def model_parameters(name: str) -> Mapping[str, inspect.Parameter]:
    """The constructor arguments of a registered model (what ``build_model`` binds)."""
    return SIGNATURES[name].parameters


__all__ = ["MODEL_NAMES", "SIGNATURES", "model_parameters"]
