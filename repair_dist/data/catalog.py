"""What the package knows about each dataset without loading it: names, aliases, input shape
and class count, where the files live and whether they are on this machine.

Why apart from :mod:`~repair_dist.data.datasets` (the loaders): planning and validating a
sweep needs only this, and the loaders import torch (over a second), which a finished sweep's
rerun never uses. Nothing here imports torch; nothing here reads more than a directory listing.
Adding a dataset means adding its :class:`CatalogEntry` here and its loader there (a test
keeps the two registries equal).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` installs the original (gzip'ed) idx files."""


def data_root(name: str, root: str | os.PathLike[str] | None) -> Path:
    """``root`` if given, else ``$REPAIR_DIST_DATA/<name>`` (default ``~/data/<name>``)."""
    if root is not None:
        return Path(root).expanduser()
    if name == "fashion-mnist":
        return FASHION_MNIST_ROOT
    base = os.environ.get("REPAIR_DIST_DATA", "~/data")
    return Path(base).expanduser() / name


# --------------------------------------------------------------------------------------------
# where the files are

_FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _find_idx(root: Path, stem: str) -> Path | None:
    # Debian's layout first, then torchvision's (root/FashionMNIST/raw).
    for folder in (root, root / "FashionMNIST" / "raw"):
        for name in (stem + ".gz", stem):
            if (folder / name).is_file():
                return folder / name
    return None


def fashion_paths(root: str | os.PathLike[str] | None) -> tuple[Path, dict[str, Path]]:
    """(folder, idx file per part), or FileNotFoundError naming the package to install."""
    folder = data_root("fashion-mnist", root)
    found = {key: _find_idx(folder, stem) for key, stem in _FASHION_FILES.items()}
    missing = [_FASHION_FILES[k] for k, p in found.items() if p is None]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {folder} (missing {', '.join(missing)}[.gz]). "
            "Install Debian's package dataset-fashion-mnist "
            f"(`apt-get install dataset-fashion-mnist`, installs under {FASHION_MNIST_ROOT}) "
            "or pass root= a directory holding the four idx files."
        )
    return folder, {k: p for k, p in found.items() if p is not None}


_CIFAR_LAYOUT = "cifar-10-batches-py/{data_batch_1..data_batch_5, test_batch}"


def _cifar_folder(root: Path) -> Path | None:
    for folder in (root / "cifar-10-batches-py", root):
        if (folder / "test_batch").is_file() and (folder / "data_batch_1").is_file():
            return folder
    return None


def cifar_location(root: str | os.PathLike[str] | None) -> Path:
    """The folder holding CIFAR-10's pickles, or FileNotFoundError describing the layout."""
    base = data_root("cifar10", root)
    folder = _cifar_folder(base)
    if folder is None:
        raise FileNotFoundError(
            f"CIFAR-10 not found under {base}: expected torchvision's layout "
            f"{base}/{_CIFAR_LAYOUT} (the python version of the dataset). "
            "Pass root= the directory that holds cifar-10-batches-py."
        )
    return folder


def _has_class_dirs(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_dir() for p in folder.iterdir())


def imagenet_splits(root: str | os.PathLike[str] | None) -> tuple[Path, dict[str, Path]]:
    """(root, {"train": ..., "val": ...}) or FileNotFoundError describing the ImageFolder layout.

    Looks only for class folders (no image scan), so it is cheap even for the full ImageNet.
    """
    base = data_root("imagenet", root)
    splits = {s: base / s for s in ("train", "val")}
    bad = [str(p) for p in splits.values() if not _has_class_dirs(p)]
    if bad:
        raise FileNotFoundError(
            f"ImageNet not found under {base}: missing or empty {', '.join(bad)}. Expected an "
            "ImageFolder layout: <root>/train/<class>/<image> and <root>/val/<class>/<image>."
        )
    return base, splits


# --------------------------------------------------------------------------------------------
# the catalog: one entry per dataset


@dataclass(frozen=True)
class CatalogEntry:
    """What is known of one dataset before loading it.

    ``info(root, **opts)`` gives ``{"in_shape", "num_classes"}`` without loading;
    ``check(root)`` raises FileNotFoundError (where it looked, how to get the data) when the
    files are not on this machine, and is ``None`` for data that is always there.
    """

    name: str
    info: Callable[..., dict]
    check: Callable[[Any], Any] | None = None
    aliases: tuple[str, ...] = ()


def _fixed_info(in_shape: tuple[int, ...], num_classes: int = 10) -> Callable[..., dict]:
    def info(root: Any = None, **opts: Any) -> dict:
        return {"in_shape": in_shape, "num_classes": num_classes}

    return info


def _synthetic_info(root: Any = None, **opts: Any) -> dict:
    shape = tuple(int(s) for s in opts.get("shape", (3, 16, 16)))
    return {"in_shape": shape, "num_classes": int(opts.get("num_classes", 10))}


def _imagenet_info(root: Any = None, **opts: Any) -> dict:
    size = int(opts.get("image_size", 224))
    train_dir = data_root("imagenet", root) / "train"
    classes = (
        sum(1 for p in train_dir.iterdir() if p.is_dir()) if train_dir.is_dir() else 0
    ) or 1000
    return {"in_shape": (3, size, size), "num_classes": classes}


CATALOG: dict[str, CatalogEntry] = {
    e.name: e
    for e in (
        CatalogEntry("digits", info=_fixed_info((1, 8, 8))),
        CatalogEntry(
            "fashion-mnist",
            info=_fixed_info((1, 28, 28)),
            check=fashion_paths,
            aliases=("fashionmnist", "fmnist"),
        ),
        CatalogEntry(
            "cifar10", info=_fixed_info((3, 32, 32)), check=cifar_location, aliases=("cifar-10",)
        ),
        CatalogEntry("imagenet", info=_imagenet_info, check=imagenet_splits),
        CatalogEntry("synthetic", info=_synthetic_info),
    )
}
DATASETS: tuple[str, ...] = tuple(CATALOG)


def catalog_entry(name: str) -> CatalogEntry:
    """The catalog entry of ``name`` (case, ``_`` for ``-`` and aliases forgiven)."""
    key = name.strip().lower().replace("_", "-") if isinstance(name, str) else name
    for entry in CATALOG.values():
        if key == entry.name or key in entry.aliases:
            return entry
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def check_dataset(name: str, root: str | os.PathLike[str] | None = None) -> None:
    """Raise what :func:`load_dataset` would raise if ``name`` is unknown or not on this machine.

    ValueError for an unknown name, FileNotFoundError (the loader's own message: where it
    looked and how to get the data) for missing files. Existence checks only, nothing is read,
    so sweep validation can call it before anything is scheduled.
    """
    entry = catalog_entry(name)
    if entry.check is not None:
        entry.check(root)


def dataset_info(name: str, root: str | os.PathLike[str] | None = None, **opts: Any) -> dict:
    """``{"in_shape": ..., "num_classes": ...}`` for building a model, without loading data.

    Accepts (and ignores) the loader options that do not change the answer, so a sweep can
    pass the same options to both functions.
    """
    return catalog_entry(name).info(root, **opts)


__all__ = [
    "CATALOG",
    "DATASETS",
    "FASHION_MNIST_ROOT",
    "CatalogEntry",
    "catalog_entry",
    "check_dataset",
    "cifar_location",
    "data_root",
    "dataset_info",
    "fashion_paths",
    "imagenet_splits",
]
