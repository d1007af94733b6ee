"""ResNet20 on CIFAR-10, widths x1..x16 and norms bn/ln/none (REPAIR paper, Fig. 5/6).

Needs CIFAR-10 under $REPAIR_DIST_DATA/cifar10 (or data_root); resources per trial: 2 GPU
workers for the sharded passes. `--smoke` runs a tiny version on synthetic images.
"""

from repair_dist.cli import script_main
from repair_dist.sweep.config import ArchGrid, Sweep


def build_sweep(smoke: bool = False) -> Sweep:
    if smoke:
        return Sweep(
            name="resnet20-width-smoke",
            dataset="synthetic",
            archs=(ArchGrid("resnet20", widths=(1,), norms=("bn", "none")),),
            seeds=(0, 1),
            epochs=1,
            methods=("activation",),
            variants=("reset", "full"),
            alphas=3,
            data_limit=256,
            lr=0.01,
        )
    return Sweep(
        name="resnet20-width",
        dataset="cifar10",
        archs=(ArchGrid("resnet20", widths=(1, 2, 4, 8, 16), norms=("bn", "ln", "none")),),
        seeds=(0, 1, 2, 3),
        epochs=100,
        batch_size=500,
        methods=("activation",),
        variants=("reset", "full", "rescale", "reshift"),
        workers_per_trial=2,
        gpus_per_worker=1,
    )


if __name__ == "__main__":
    raise SystemExit(script_main(build_sweep))
