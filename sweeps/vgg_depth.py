"""VGG11/13/16/19 on CIFAR-10 with and without BN: deeper plain VGGs collapse more."""

from repair_dist.cli import script_main
from repair_dist.sweep.config import ArchGrid, Sweep


def build_sweep(smoke: bool = False) -> Sweep:
    if smoke:
        return Sweep(
            name="vgg-depth-smoke",
            dataset="synthetic",
            archs=(ArchGrid("vgg", widths=(0.125,), depths=(11,), norms=("bn",)),),
            seeds=(0, 1),
            epochs=1,
            methods=("activation",),
            variants=("reset",),
            alphas=3,
            data_limit=256,
        )
    return Sweep(
        name="vgg-depth",
        dataset="cifar10",
        archs=(ArchGrid("vgg", widths=(1,), depths=(11, 13, 16, 19), norms=("bn", "none")),),
        seeds=(0, 1, 2, 3),
        epochs=60,
        batch_size=500,
        methods=("activation",),
        variants=("reset", "full"),
        workers_per_trial=2,
        gpus_per_worker=1,
    )


if __name__ == "__main__":
    raise SystemExit(script_main(build_sweep))
