"""The merged net of N against N (issue 12): how much is lost as more nets fold into one.

Per net config and N-tuple of seeds (N = 2..8): the N endpoints aligned into one basin by
weight matching to net 0, by activation matching to net 0, and by Git Re-Basin's MergeMany,
averaged uniformly and repaired with REPAIR ``full``; plus the unaligned average (``naive``).
Each merged net is measured against the mean of its N endpoints (``barrier_acc``,
``barrier_loss``) and against the output-averaged ensemble of the same N nets
(``ensemble_gap_*``). Rows land in the ``merges`` table; each unit's plot draws its merged
nets beside the mean-endpoint and ensemble lines. No pair merge trials: ``methods`` is empty.
``repair-dist results SWEEP --table merges`` prints the mean over N-tuples.
"""

from repair_dist.cli import script_main
from repair_dist.sweep.config import ArchGrid, MergeManyConfig, Sweep


def build_sweep(smoke: bool = False) -> Sweep:
    if smoke:
        return Sweep(
            name="merge-many-smoke",
            dataset="digits",
            archs=(ArchGrid("mlp", widths=(16,), depths=(3,)),),
            seeds=(0, 1, 2),
            epochs=2,
            methods=(),
            merge_many=MergeManyConfig(n_models=(2, 3), methods=("weight", "merge_many")),
        )
    return Sweep(
        name="merge-many",
        dataset="digits",
        archs=(
            ArchGrid("mlp", widths=(64,), depths=(8,), norms=("none",)),
            ArchGrid("vgg", widths=(0.25,), depths=(11,), norms=("bn",)),
        ),
        seeds=tuple(range(8)),
        epochs=30,
        methods=(),
        merge_many=MergeManyConfig(
            n_models=tuple(range(2, 9)),
            methods=("weight", "activation", "merge_many"),
            variants=("full",),
        ),
    )


if __name__ == "__main__":
    raise SystemExit(script_main(build_sweep))
