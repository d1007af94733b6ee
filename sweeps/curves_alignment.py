"""Mode-connectivity curves with and without neuron alignment (Tatro et al. 2020; issue 10).

Per seed pair: the straight lines (naive, aligned, REPAIR full) and a learned Bezier curve
between A and aligned B (``curve-aligned``) and between A and B as trained (``curve-naive``),
all on the same t grid. The ``trials`` table then holds, per pair, the linear barriers (the
merge trial's rows) beside the curves' (``curve-*`` rows, with the curve-fit seconds); every
pair's plot draws the five loss profiles. Rerun with ``--curve-epochs`` values to tabulate
the curve barrier against curve-training epochs (each setting is its own curve, and a finished
curve is never fitted again).
"""

from repair_dist.cli import script_main
from repair_dist.sweep.config import ArchGrid, CurveConfig, Sweep


def build_sweep(smoke: bool = False, curve_epochs: int = 10) -> Sweep:
    if smoke:
        return Sweep(
            name="curves-alignment-smoke",
            dataset="digits",
            archs=(ArchGrid("mlp", widths=(16,), depths=(3,)),),
            seeds=(0, 1),
            epochs=2,
            methods=("activation",),
            variants=("full",),
            alphas=3,
            curve=CurveConfig(epochs=1),
        )
    return Sweep(
        name=f"curves-alignment-e{curve_epochs}",
        dataset="digits",
        archs=(
            ArchGrid("mlp", widths=(64,), depths=(8,), norms=("none",)),
            ArchGrid("vgg", widths=(0.25,), depths=(11,), norms=("bn",)),
        ),
        seeds=(0, 1, 2, 3),
        epochs=25,
        methods=("activation",),
        variants=("full",),
        alphas=11,
        curve=CurveConfig(kind="bezier", epochs=curve_epochs),
    )


if __name__ == "__main__":
    raise SystemExit(script_main(build_sweep))
