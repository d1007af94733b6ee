"""Forward hooks that observe (or correct) activations at named modules during one pass."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .probes import Probe
from .stats import Centred, centre


def snapshot(probe: Probe, out: torch.Tensor) -> torch.Tensor:
    """The activation itself, safe from later in-place ops (the default observation)."""
    # relu() makes a new tensor; otherwise detach+clone so a later in-place op cannot change it.
    return torch.relu(out) if probe.relu else out.detach().clone()


def centred(probe: Probe, out: torch.Tensor) -> Centred:
    """The batch-centred float32 copy that every statistic starts from (no extra clone)."""
    return centre(out, relu=probe.relu)


Observe = Callable[[Probe, torch.Tensor], Any]


@contextmanager
def tap(
    net: nn.Module,
    probes: Iterable[Probe],
    store: dict[Probe, Any],
    observe: Observe | Mapping[Probe, Observe] = snapshot,
):
    """While active, every forward of ``net`` writes ``observe(probe, activation)`` per probe
    into ``store``; or, with one observer per probe (a mapping), just calls it: such
    observers keep what they see themselves, and a hook then does no lookup at all.

    ``observe`` runs inside the hook, so whatever it returns is taken before any later
    in-place op can change the activation; it must not return the activation itself (the
    default copies it; :func:`centred` writes the centred data, which is the only copy the
    statistics need).
    """
    modules = dict(net.named_modules())
    handles = []
    for probe in dict.fromkeys(probes):
        if probe.module not in modules:
            raise KeyError(f"probe module {probe.module!r} is not in {type(net).__name__}")

        if isinstance(observe, Mapping):

            def hook(_m, _inp, out, probe=probe, fn=observe[probe]):
                fn(probe, out)

        else:

            def hook(_m, _inp, out, probe=probe):
                store[probe] = observe(probe, out)

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
