"""Built-in sweeps that ship with the package (the quickstart must work from an installed wheel).

The ``sweeps/`` scripts hold the studies; the quickstart lives here so that
``repair-dist quickstart`` needs no checkout.
"""

from __future__ import annotations

from .config import ArchGrid, Sweep


def quickstart_sweep(smoke: bool = False) -> Sweep:
    """DESIGN.md §6: deep narrow MLPs and a small BN conv net on digits, every method and variant.

    Four seeds (two pairs) of an 8x64 plain MLP (He init: deep enough to show variance
    collapse) and of a VGG11 at a quarter width with BatchNorm, 25 epochs each; both matching
    methods; all REPAIR variants at 11 alphas. About three minutes on 2 CPU cores.
    ``smoke``: one pair of tiny MLPs and 3 alphas, for tests (seconds).
    """
    if smoke:
        return Sweep(
            name="quickstart-smoke",
            dataset="digits",
            archs=(ArchGrid("mlp", widths=(32,), depths=(4,), norms=("none",)),),
            seeds=(0, 1),
            epochs=4,
            variants=("reset", "full", "rescale", "closed_form"),
            alphas=3,
        )
    return Sweep(
        name="quickstart",
        dataset="digits",
        archs=(
            ArchGrid("mlp", widths=(64,), depths=(8,), norms=("none",)),
            ArchGrid("vgg", widths=(0.25,), depths=(11,), norms=("bn",)),
        ),
        seeds=(0, 1, 2, 3),
        epochs=25,
        alphas=11,
    )


def fashion_or_digits() -> str:
    """Fashion-MNIST where Debian's ``dataset-fashion-mnist`` is installed, else digits."""
    from ..data import check_dataset

    try:
        check_dataset("fashion-mnist")
    except (FileNotFoundError, ValueError):
        return "digits"
    return "fashion-mnist"
