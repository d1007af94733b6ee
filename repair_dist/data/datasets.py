"""Datasets by name, loaded offline and deterministically into torch Datasets.

Every loader returns ``(train, test)``. Small and medium sets (digits, Fashion-MNIST, CIFAR-10,
synthetic) come back as normalised in-memory :class:`~torch.utils.data.TensorDataset`s, so
passes slice tensors directly (``BatchPlan``'s fast path) instead of going through a
DataLoader; ImageNet is an ``ImageFolder`` because it does not fit in memory. Nothing here ever
downloads: a missing dataset raises ``FileNotFoundError`` saying where it was looked for and
how to get it.

Each dataset is one :class:`DatasetEntry` in :data:`REGISTRY` (loader, info, availability
check, and how a sweep's ``data_limit`` applies to it). What needs no loading (names, shapes,
class counts, whether the files are here) lives in the torch-free :mod:`.catalog`, which
sweep planning reads; adding a dataset means adding its catalog entry there and its loader
to :data:`_LOADERS` here.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from .catalog import (
    CATALOG,
    DATASETS,
    FASHION_MNIST_ROOT,
    catalog_entry,
    check_dataset,
    cifar_location,
    dataset_info,
    fashion_paths,
    imagenet_splits,
)

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Split = tuple[Dataset, Dataset]


def _standardise(train_x: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Subtract the TRAIN mean and divide by the TRAIN std (one scalar each): no test leakage."""
    mean, std = train_x.mean(), train_x.std()
    return [(t - mean) / std for t in (train_x, *others)]


def _limit(x: torch.Tensor, y: torch.Tensor, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` examples (the files are already shuffled), or all of them."""
    if n is None:
        return x, y
    if n < 1:
        raise ValueError(f"limit must be >= 1 (got {n})")
    return x[:n], y[:n]


# --------------------------------------------------------------------------------------------
# digits


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images 0..16, labels) of scikit-learn's digits, read straight from the wheel's CSV.

    Locating the file with ``find_spec`` avoids importing scikit-learn (about 1.5 s, paid in
    every worker process); falls back to ``load_digits`` if the file moves. Cached: callers
    must not modify the arrays.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.submodule_search_locations:
        for base in spec.submodule_search_locations:
            csv = Path(base) / "datasets" / "data" / "digits.csv.gz"
            if csv.is_file():
                data = np.loadtxt(csv, delimiter=",", dtype=np.float32)
                return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.asarray(bunch.images, np.float32), np.asarray(bunch.target, np.int64)


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) indices; each class gives ``round(test_fraction * n_c)`` to test.

    Plain numpy with a seeded generator, so the split never changes with library versions.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1) (got {test_fraction})")
    rng = np.random.default_rng(seed)
    test: list[np.ndarray] = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        test.append(rng.permutation(members)[: round(test_fraction * len(members))])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return train_idx, test_idx


def load_digits_data(*, split_seed: int = 0, test_fraction: float = 0.2) -> Split:
    """scikit-learn's 8x8 digits (ships inside the wheel): stratified seeded 80/20 split."""
    images, labels = _digits_arrays()
    idx_train, idx_test = stratified_split(labels, test_fraction, split_seed)
    x = torch.from_numpy(images / 16.0).unsqueeze(1)
    y = torch.from_numpy(labels.copy())
    x_train, x_test = _standardise(x[idx_train], x[idx_test])
    return (
        TensorDataset(x_train.contiguous(), y[idx_train].clone()),
        TensorDataset(x_test.contiguous(), y[idx_test].clone()),
    )


# --------------------------------------------------------------------------------------------
# Fashion-MNIST (idx files)

_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Parse one idx file (LeCun's MNIST format), gzip'ed or plain."""
    path = Path(path)
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an idx file (bad magic number)")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    count = int(np.prod(shape)) if shape else 1
    if len(raw) - offset < count * dtype.itemsize:
        raise ValueError(f"{path} is truncated: header says {shape}")
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
    return data.reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def load_fashion_mnist(
    root: str | os.PathLike[str] | None = None,
    *,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> Split:
    """Fashion-MNIST from the original idx files (Debian ``dataset-fashion-mnist``)."""
    folder, paths = fashion_paths(root)
    arrays = {key: read_idx(p) for key, p in paths.items()}
    x_train = torch.from_numpy(arrays["train_images"].astype(np.float32) / 255.0).unsqueeze(1)
    x_test = torch.from_numpy(arrays["test_images"].astype(np.float32) / 255.0).unsqueeze(1)
    y_train = torch.from_numpy(arrays["train_labels"].astype(np.int64))
    y_test = torch.from_numpy(arrays["test_labels"].astype(np.int64))
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise ValueError(f"Fashion-MNIST in {folder}: image and label counts differ")
    # Normalise with the statistics of the full train set, so limits do not shift inputs.
    x_train, x_test = _standardise(x_train, x_test)
    x_train, y_train = _limit(x_train, y_train, limit_train)
    x_test, y_test = _limit(x_test, y_test, limit_test)
    return (
        TensorDataset(x_train.contiguous(), y_train.contiguous()),
        TensorDataset(x_test.contiguous(), y_test.contiguous()),
    )


# --------------------------------------------------------------------------------------------
# CIFAR-10 (torchvision's python pickles)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="bytes")  # local files, as torchvision does
    entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
    data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    labels = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
    return data, labels


def load_cifar10(
    root: str | os.PathLike[str] | None = None,
    *,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> Split:
    """CIFAR-10 from torchvision's pickles, per-channel normalised, as TensorDatasets.

    Parsing the pickles directly (instead of ``torchvision.datasets.CIFAR10``) gives tensors
    for the fast batch path and skips torchvision's md5 checks and per-item PIL conversion.
    """
    folder = cifar_location(root)
    train_files = sorted(folder.glob("data_batch_*"), key=lambda p: p.name)
    train_parts = [_read_cifar_batch(p) for p in train_files]
    x_test_np, y_test_np = _read_cifar_batch(folder / "test_batch")
    x_train_np = np.concatenate([d for d, _ in train_parts])
    y_train_np = np.concatenate([t for _, t in train_parts])
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    x_train, y_train = _limit(
        torch.from_numpy(x_train_np), torch.from_numpy(y_train_np), limit_train
    )
    x_test, y_test = _limit(torch.from_numpy(x_test_np), torch.from_numpy(y_test_np), limit_test)
    x_train = (x_train.float() / 255.0 - mean) / std
    x_test = (x_test.float() / 255.0 - mean) / std
    return (
        TensorDataset(x_train.contiguous(), y_train.contiguous()),
        TensorDataset(x_test.contiguous(), y_test.contiguous()),
    )


# --------------------------------------------------------------------------------------------
# ImageNet (ImageFolder)


def load_imagenet(
    root: str | os.PathLike[str] | None = None,
    *,
    image_size: int = 224,
    augment: bool = False,
) -> Split:
    """ImageFolder-style ``root/train`` and ``root/val``, standard transforms.

    Without ``augment`` the train split uses the deterministic eval transform, which is what
    statistics, recalibration and evaluation passes need; ``image_size`` keeps tests tiny.
    """
    from torchvision import datasets, transforms

    base, splits = imagenet_splits(root)
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    resize = max(image_size, round(image_size * 256 / 224))
    eval_tf = transforms.Compose(
        [
            transforms.Resize(resize),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            normalize,
        ]
    )
    train_tf = eval_tf
    if augment:
        train_tf = transforms.Compose(
            [
                transforms.RandomResizedCrop(image_size),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                normalize,
            ]
        )
    train = datasets.ImageFolder(str(splits["train"]), transform=train_tf)
    test = datasets.ImageFolder(str(splits["val"]), transform=eval_tf)
    if train.class_to_idx != test.class_to_idx:
        raise ValueError(f"ImageNet under {base}: train/ and val/ hold different class folders")
    return train, test


# --------------------------------------------------------------------------------------------
# synthetic


def load_synthetic(
    *,
    n_train: int = 2048,
    n_test: int = 512,
    shape: tuple[int, ...] = (3, 16, 16),
    num_classes: int = 10,
    seed: int = 0,
    separation: float = 0.15,
) -> Split:
    """A Gaussian mixture of images: class-dependent means plus unit noise.

    Learnable (the means differ by about ``separation * sqrt(2 * prod(shape))`` noise stds)
    yet not trivially so, and generated from ``seed`` alone: tests and benchmarks that need
    data of any shape use it without touching disk.
    """
    if n_train < 1 or n_test < 1 or num_classes < 2:
        raise ValueError("synthetic data needs n_train, n_test >= 1 and num_classes >= 2")
    shape = tuple(int(s) for s in shape)
    g = torch.Generator().manual_seed(seed)
    means = torch.randn((num_classes, *shape), generator=g) * separation

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % num_classes
        y = y[torch.randperm(n, generator=g)]
        x = means[y] + torch.randn((n, *shape), generator=g)
        return x, y

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    return TensorDataset(x_train, y_train), TensorDataset(x_test, y_test)


# --------------------------------------------------------------------------------------------
# the registry: one entry per dataset


def test_size_for(limit: int) -> int:
    """Test examples kept under ``data_limit=limit``: a fifth (digits' own 80/20 ratio), >= 1."""
    return max(1, limit // 5)


def _head(split: Split, limit: int | None) -> Split:
    """The first ``limit`` train and :func:`test_size_for` test examples of in-memory tensors
    (for data whose order is already mixed: shuffled files, a stratified split)."""
    if limit is None:
        return split
    train, test = split
    return tuple(  # type: ignore[return-value]
        TensorDataset(*(t[:n] for t in part.tensors))  # type: ignore[attr-defined]
        for part, n in ((train, limit), (test, test_size_for(limit)))
    )


def _strided(split: Split, limit: int | None) -> Split:
    """``limit`` train and :func:`test_size_for` test examples spread evenly over each split.

    ImageFolder lists its images class by class, so the first ``n`` would be one class;
    evenly spaced indices keep every class (up to ``n`` of them) and need no randomness.
    """
    if limit is None:
        return split

    def spread(part: Dataset, n: int) -> Dataset:
        size = len(part)  # type: ignore[arg-type]
        if n >= size:
            return part
        return Subset(part, np.linspace(0, size - 1, n).round().astype(int).tolist())

    train, test = split
    return spread(train, limit), spread(test, test_size_for(limit))


def _limit_options(limit: int | None) -> dict[str, int]:
    return {} if limit is None else {"limit_train": limit, "limit_test": test_size_for(limit)}


@dataclass(frozen=True)
class DatasetEntry:
    """Everything the package knows about one dataset, in one place.

    ``load(root, limit, **opts)`` returns ``(train, test)`` honouring ``limit`` (a sweep's
    ``data_limit``: at most ``limit`` train and :func:`test_size_for` test examples; ``None``
    for all); ``info(root, **opts)`` gives ``{"in_shape", "num_classes"}`` without loading;
    ``check(root)`` raises FileNotFoundError (where it looked, how to get the data) when the
    files are not on this machine, and is ``None`` for data that is always there.
    """

    name: str
    load: Callable[..., Split]
    info: Callable[..., dict]
    check: Callable[[Any], Any] | None = None
    aliases: tuple[str, ...] = ()


def _load_synthetic(root: Any, limit: int | None, **opts: Any) -> Split:
    sizes = {} if limit is None else {"n_train": limit, "n_test": test_size_for(limit)}
    return load_synthetic(**{**opts, **sizes})


#: name -> ``load(root, limit, **opts)``; one per entry of :data:`~.catalog.CATALOG`.
_LOADERS: dict[str, Callable[..., Split]] = {
    "digits": lambda root, limit, **opts: _head(load_digits_data(**opts), limit),
    "fashion-mnist": lambda root, limit, **opts: load_fashion_mnist(
        root, **{**opts, **_limit_options(limit)}
    ),
    "cifar10": lambda root, limit, **opts: load_cifar10(root, **{**opts, **_limit_options(limit)}),
    "imagenet": lambda root, limit, **opts: _strided(load_imagenet(root, **opts), limit),
    "synthetic": _load_synthetic,
}

REGISTRY: dict[str, DatasetEntry] = {
    name: DatasetEntry(name, _LOADERS[name], entry.info, entry.check, entry.aliases)
    for name, entry in CATALOG.items()
}


def dataset_entry(name: str) -> DatasetEntry:
    """The registry entry of ``name`` (case, ``_`` for ``-`` and aliases forgiven)."""
    return REGISTRY[catalog_entry(name).name]


# --------------------------------------------------------------------------------------------
# public entry points


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    limit: int | None = None,
    **opts: Any,
) -> Split:
    """``(train, test)`` torch Datasets for ``name`` (one of :data:`DATASETS`), offline.

    ``limit`` (a sweep's ``data_limit``) keeps at most ``limit`` train and ``limit // 5``
    (at least 1) test examples, for every dataset. Options by dataset: digits
    ``split_seed``; fashion-mnist / cifar10 ``limit_train``, ``limit_test``; imagenet
    ``image_size``, ``augment``; synthetic ``n_train``, ``n_test``, ``shape``,
    ``num_classes``, ``seed``, ``separation``. ``root`` defaults to
    ``/usr/share/datasets/fashion-mnist`` for Fashion-MNIST and ``$REPAIR_DIST_DATA/<name>``
    (``~/data/<name>``) for CIFAR-10 and ImageNet.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"data limit must be an integer >= 1 (got {limit!r})")
    return dataset_entry(name).load(root, limit, **opts)


__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DATASETS",
    "FASHION_MNIST_ROOT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "REGISTRY",
    "DatasetEntry",
    "check_dataset",
    "dataset_entry",
    "dataset_info",
    "load_cifar10",
    "load_dataset",
    "load_digits_data",
    "load_fashion_mnist",
    "load_imagenet",
    "load_synthetic",
    "read_idx",
    "stratified_split",
    "test_size_for",
]
