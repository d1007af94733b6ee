"""Pruning with post-pruning repair (Qu & Horvath 2024; issue 11).

Every trained endpoint is pruned at each (kind, sparsity) and repaired towards the dense net's
per-channel statistics (REPAIR with one endpoint). The ``pruning`` table holds dense, pruned
and repaired-<variant> accuracies and the measured sparsity; each endpoint's plot draws
accuracy against sparsity per variant. No merge trials: ``methods`` is empty.
``repair-dist results SWEEP --table pruning`` prints the mean over seeds.
"""

from repair_dist.cli import script_main
from repair_dist.sweep.config import ArchGrid, PruningConfig, Sweep


def build_sweep(smoke: bool = False) -> Sweep:
    if smoke:
        return Sweep(
            name="prune-repair-smoke",
            dataset="digits",
            archs=(ArchGrid("mlp", widths=(16,), depths=(3,)),),
            seeds=(0, 1),
            epochs=2,
            methods=(),
            pruning=PruningConfig(kinds=("global_l1",), sparsities=(0.5, 0.9), variants=("full",)),
        )
    return Sweep(
        name="prune-repair",
        dataset="digits",
        archs=(
            ArchGrid("mlp", widths=(64,), depths=(8,), norms=("none",)),
            ArchGrid("vgg", widths=(0.25,), depths=(11,), norms=("bn",)),
        ),
        seeds=(0, 1, 2, 3),
        epochs=25,
        methods=(),
        pruning=PruningConfig(
            kinds=("global_l1", "layer_l1", "filter_l1"),
            sparsities=(0.5, 0.8, 0.9, 0.95),
        ),
    )


if __name__ == "__main__":
    raise SystemExit(script_main(build_sweep))
