"""Barrier vs width for 6-layer plain MLPs (wider nets are more linearly connected)."""

from repair_dist.cli import script_main
from repair_dist.sweep.config import ArchGrid, Sweep
from repair_dist.sweep.presets import fashion_or_digits


def build_sweep(smoke: bool = False) -> Sweep:
    if smoke:
        return Sweep(
            name="mlp-width-smoke",
            dataset="digits",
            archs=(ArchGrid("mlp", widths=(8, 16), depths=(3,)),),
            seeds=(0, 1),
            epochs=2,
            methods=("weight",),
            variants=("full",),
            alphas=3,
        )
    return Sweep(
        name="mlp-width",
        dataset=fashion_or_digits(),
        archs=(ArchGrid("mlp", widths=(32, 64, 128, 256, 512), depths=(6,), norms=("none",)),),
        seeds=(0, 1, 2, 3, 4, 5),
        epochs=30,
    )


if __name__ == "__main__":
    raise SystemExit(script_main(build_sweep))
