"""Tiny ImageFolder trees for smoke runs and tests (no download: images are drawn here).

Each class gets its own mean colour plus noise, so a net can learn something in one epoch and
the ImageNet code path (PIL decode, Resize, CenterCrop, Normalize) runs for real.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def write_tiny_imagefolder(
    root: str | os.PathLike[str],
    *,
    classes: int = 3,
    train_per_class: int = 8,
    val_per_class: int = 4,
    size: int = 40,
    seed: int = 0,
) -> Path:
    """Write ``root/{train,val}/class_<k>/<i>.png`` (idempotent: an existing tree is kept)."""
    from PIL import Image

    base = Path(root)
    if (base / "val" / f"class_{classes - 1}").is_dir():
        return base
    rng = np.random.default_rng(seed)
    colours = rng.uniform(40, 215, size=(classes, 3))
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for k in range(classes):
            folder = base / split / f"class_{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = colours[k] + rng.normal(0, 30, size=(size, size, 3))
                image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
                image.save(folder / f"{i}.png")
    return base
