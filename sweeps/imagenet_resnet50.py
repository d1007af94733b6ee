"""ImageNet ResNet50 (and ResNet18) pairs: activation matching with statistics sharded over
every GPU worker of a trial; variants naive / aligned / reset / full (REPAIR paper, Table 1:
REPAIR removes 74% of ResNet50's barrier).

Data: an ImageFolder root (``train/``, ``val/``) in ``$REPAIR_DIST_DATA/imagenet`` or
``--data-root``-style ``REPAIR_DIST_IMAGENET``. Endpoints are trained by stage 1, or register
existing torchvision-format checkpoints first (README, "Scaling out"). ``--smoke`` writes a
tiny ImageFolder and runs tiny-width ResNets; on a cluster with GPUs its workers ask for one
GPU each (one worker per GPU node), elsewhere for half a CPU.
"""

import os
import tempfile

from repair_dist.cli import script_main
from repair_dist.data.tiny import write_tiny_imagefolder
from repair_dist.sweep.config import ArchGrid, Sweep


def _cluster_gpus() -> float:
    import ray

    return ray.cluster_resources().get("GPU", 0.0) if ray.is_initialized() else 0.0


def build_sweep(smoke: bool = False) -> Sweep:
    if smoke:
        root = os.environ.get("REPAIR_DIST_SMOKE_IMAGENET") or os.path.join(
            tempfile.gettempdir(), "repair-dist-tiny-imagenet"
        )
        write_tiny_imagefolder(root)
        gpus = 1.0 if _cluster_gpus() >= 2 else 0.0
        return Sweep(
            name="imagenet-resnet50-smoke",
            dataset="imagenet",
            data_root=root,
            archs=(
                ArchGrid("resnet18", widths=(0.0625,), norms=("bn",)),
                ArchGrid("resnet50", widths=(0.0625,), norms=("bn",)),
            ),
            seeds=(0, 1),
            epochs=1,
            batch_size=8,
            methods=("activation",),
            variants=("reset", "full"),
            alphas=3,
            workers_per_trial=2,
            cpus_per_worker=0.5,
            gpus_per_worker=gpus,
        )
    return Sweep(
        name="imagenet-resnet50",
        dataset="imagenet",
        data_root=os.environ.get("REPAIR_DIST_IMAGENET"),
        archs=(
            ArchGrid("resnet50", widths=(1.0,), norms=("bn",)),
            ArchGrid("resnet18", widths=(1.0,), norms=("bn",)),
        ),
        seeds=(0, 1),
        epochs=90,
        batch_size=256,
        methods=("activation",),
        variants=("reset", "full"),
        alphas=3,
        workers_per_trial=8,
        cpus_per_worker=8,
        gpus_per_worker=1,
    )


if __name__ == "__main__":
    raise SystemExit(script_main(build_sweep))
