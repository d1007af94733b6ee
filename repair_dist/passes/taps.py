"""Forward hooks that observe (or correct) activations at named modules during one pass."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager

import torch
from torch import nn

from .probes import Probe


def _observe(probe: Probe, out: torch.Tensor) -> torch.Tensor:
    # relu() makes a new tensor; otherwise detach+clone so a later in-place op cannot change it.
    return torch.relu(out) if probe.relu else out.detach().clone()


@contextmanager
def tap(net: nn.Module, probes: Iterable[Probe], store: dict[Probe, torch.Tensor]):
    """While active, every forward of ``net`` writes each probe's activation into ``store``."""
    modules = dict(net.named_modules())
    handles = []
    for probe in dict.fromkeys(probes):
        if probe.module not in modules:
            raise KeyError(f"probe module {probe.module!r} is not in {type(net).__name__}")

        def hook(_m, _inp, out, probe=probe):
            store[probe] = _observe(probe, out)

        handles.append(modules[probe.module].register_forward_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


@contextmanager
def transform_outputs(
    net: nn.Module, transforms: dict[str, Callable[[torch.Tensor], torch.Tensor]]
):
    """While active, replace the output of each named module by ``transforms[name](output)``."""
    modules = dict(net.named_modules())
    handles = [
        modules[name].register_forward_hook(lambda _m, _i, out, f=f: f(out))
        for name, f in transforms.items()
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
