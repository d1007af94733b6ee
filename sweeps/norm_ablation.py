"""Normalisation ablation: bn vs ln vs none vs post-shifted BN (Zhou et al.) on one conv net."""

from repair_dist.cli import script_main
from repair_dist.sweep.config import ArchGrid, Sweep


def build_sweep(smoke: bool = False) -> Sweep:
    if smoke:
        return Sweep(
            name="norm-ablation-smoke",
            dataset="digits",
            archs=(ArchGrid("vgg", widths=(0.125,), depths=(11,), norms=("bn", "ln")),),
            seeds=(0, 1),
            epochs=1,
            methods=("activation",),
            variants=("reset", "full"),
            alphas=3,
        )
    return Sweep(
        name="norm-ablation",
        dataset="digits",
        archs=(
            ArchGrid("vgg", widths=(0.25, 0.5), depths=(11,), norms=("bn", "ln", "none", "psbn")),
        ),
        seeds=(0, 1, 2, 3),
        epochs=25,
    )


if __name__ == "__main__":
    raise SystemExit(script_main(build_sweep))
