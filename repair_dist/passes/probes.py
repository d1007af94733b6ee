"""Probes: named places in a net where a pass observes activations.

A probe lives with the passes (not with the permutation specs) because passes are the lower
layer: specs *declare* probes, passes *read* them, and nothing in this package knows about
permutations.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Probe:
    """A place where activations are observed: the output of ``module`` (ReLU applied if asked).

    Matching probes are post-ReLU activations; ``relu=True`` lets a spec observe the output of
    a norm layer whose ReLU is applied functionally or by a shared module.
    """

    module: str
    relu: bool = False
