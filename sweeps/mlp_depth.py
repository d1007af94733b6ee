"""Barrier vs depth for plain He-init MLPs: variance collapse grows with depth, REPAIR undoes it.

Runs on Fashion-MNIST when Debian's `dataset-fashion-mnist` is installed, else on digits.
"""

from repair_dist.cli import script_main
from repair_dist.sweep.config import ArchGrid, Sweep
from repair_dist.sweep.presets import fashion_or_digits


def build_sweep(smoke: bool = False) -> Sweep:
    if smoke:
        return Sweep(
            name="mlp-depth-smoke",
            dataset="digits",
            archs=(ArchGrid("mlp", widths=(16,), depths=(2, 4)),),
            seeds=(0, 1),
            epochs=2,
            methods=("activation",),
            variants=("full",),
            alphas=3,
        )
    return Sweep(
        name="mlp-depth",
        dataset=fashion_or_digits(),
        archs=(ArchGrid("mlp", widths=(128,), depths=(2, 4, 6, 8, 10), norms=("none",)),),
        seeds=(0, 1, 2, 3, 4, 5),
        epochs=30,
    )


if __name__ == "__main__":
    raise SystemExit(script_main(build_sweep))
