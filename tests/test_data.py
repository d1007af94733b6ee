"""Datasets load offline, deterministically, and in the shapes the models expect."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from repair_dist.data import DATASETS, BatchPlan, as_plan, dataset_info, load_dataset, read_idx
from repair_dist.data.datasets import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    FASHION_MNIST_ROOT,
    _digits_arrays,
    stratified_split,
)

# ------------------------------------------------------------------------------------- digits


def test_digits_shapes_dtypes_and_train_statistics():
    train, test = load_dataset("digits")
    assert isinstance(train, TensorDataset) and isinstance(test, TensorDataset)
    x, y = train.tensors
    assert x.shape == (1438, 1, 8, 8) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and set(y.tolist()) == set(range(10))
    assert test.tensors[0].shape == (359, 1, 8, 8)
    assert len(train) + len(test) == 1797
    # standardised with the TRAIN statistics (one scalar), so train is exactly 0 / 1
    assert abs(x.mean().item()) < 1e-5 and abs(x.std().item() - 1) < 1e-5
    assert dataset_info("digits") == {"in_shape": (1, 8, 8), "num_classes": 10}


def test_digits_split_is_deterministic_and_stratified():
    a_train, a_test = load_dataset("digits")
    b_train, b_test = load_dataset("digits", split_seed=0)
    for a, b in zip(
        a_train.tensors + a_test.tensors, b_train.tensors + b_test.tensors, strict=True
    ):
        assert torch.equal(a, b)
    c_train, _ = load_dataset("digits", split_seed=1)
    assert not torch.equal(a_train.tensors[1], c_train.tensors[1])
    counts = torch.bincount(a_test.tensors[1], minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # ~20% of every class


def test_digits_train_and_test_do_not_overlap():
    images, labels = _digits_arrays()
    tr_idx, te_idx = stratified_split(labels, 0.2, seed=0)
    assert len(np.intersect1d(tr_idx, te_idx)) == 0
    assert len(tr_idx) + len(te_idx) == len(labels)
    # the datasets hold exactly those rows (same standardisation for both splits)
    train, test = load_dataset("digits")
    raw = torch.from_numpy(images / 16.0).unsqueeze(1)
    mean, std = raw[tr_idx].mean(), raw[tr_idx].std()
    torch.testing.assert_close(train.tensors[0], (raw[tr_idx] - mean) / std)
    torch.testing.assert_close(test.tensors[0], (raw[te_idx] - mean) / std)
    assert torch.equal(test.tensors[1], torch.from_numpy(labels[te_idx]))


def test_digits_plan_uses_tensor_fast_path():
    train, _ = load_dataset("digits")
    plan = as_plan(train, batch_size=500)
    assert isinstance(plan, BatchPlan) and len(plan) == 3
    x, y = next(iter(plan))
    assert x.shape == (500, 1, 8, 8) and y.shape == (500,)


# ---------------------------------------------------------------------------------- synthetic


def _nearest_mean_accuracy(train: TensorDataset, test: TensorDataset, classes: int) -> float:
    x, y = (t.flatten(1) if t.dim() > 1 else t for t in train.tensors)
    means = torch.stack([x[y == c].mean(0) for c in range(classes)])
    xt, yt = test.tensors[0].flatten(1), test.tensors[1]
    pred = torch.cdist(xt, means).argmin(1)
    return (pred == yt).float().mean().item()


def test_synthetic_is_deterministic_and_learnable():
    train, test = load_dataset("synthetic", n_train=600, n_test=300, seed=3)
    again, _ = load_dataset("synthetic", n_train=600, n_test=300, seed=3)
    other, _ = load_dataset("synthetic", n_train=600, n_test=300, seed=4)
    assert torch.equal(train.tensors[0], again.tensors[0])
    assert torch.equal(train.tensors[1], again.tensors[1])
    assert not torch.equal(train.tensors[0], other.tensors[0])
    assert train.tensors[0].shape == (600, 3, 16, 16) and train.tensors[1].dtype == torch.int64
    assert torch.bincount(train.tensors[1]).tolist() == [60] * 10
    # class-dependent means: a nearest-class-mean classifier fitted on train generalises
    assert _nearest_mean_accuracy(train, test, 10) > 0.9


def test_synthetic_options_and_info():
    train, test = load_dataset("synthetic", n_train=40, n_test=8, shape=(1, 4, 4), num_classes=4)
    assert train.tensors[0].shape == (40, 1, 4, 4) and len(test) == 8
    assert set(train.tensors[1].tolist()) == {0, 1, 2, 3}
    info = dataset_info("synthetic", shape=(1, 4, 4), num_classes=4, n_train=40)
    assert info == {"in_shape": (1, 4, 4), "num_classes": 4}


# ------------------------------------------------------------------------------ fashion-mnist


def _idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_fashion(folder: Path, n_train: int, n_test: int, gz: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) * 3) % 10,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        data = _idx_bytes(array)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "plain"])
def test_fashion_mnist_reads_idx_files(tmp_path, gz):
    arrays = _write_fashion(tmp_path, n_train=12, n_test=5, gz=gz)
    train, test = load_dataset("fashion-mnist", root=tmp_path)
    assert isinstance(train, TensorDataset)
    assert train.tensors[0].shape == (12, 1, 28, 28) and test.tensors[0].shape == (5, 1, 28, 28)
    assert train.tensors[0].dtype == torch.float32 and test.tensors[1].dtype == torch.int64
    assert train.tensors[1].tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert test.tensors[1].tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    # normalised with the train statistics; order of pixels is preserved
    raw = torch.from_numpy(arrays["train-images-idx3-ubyte"].astype(np.float32) / 255)
    expected = (raw - raw.mean()) / raw.std()
    torch.testing.assert_close(train.tensors[0][:, 0], expected)
    assert dataset_info("fashion-mnist") == {"in_shape": (1, 28, 28), "num_classes": 10}


def test_fashion_mnist_limits_and_torchvision_layout(tmp_path):
    _write_fashion(tmp_path / "FashionMNIST" / "raw", n_train=12, n_test=5, gz=False)
    full, _ = load_dataset("fashion_mnist", root=tmp_path)
    train, test = load_dataset("fashion-mnist", root=tmp_path, limit_train=4, limit_test=2)
    assert len(train) == 4 and len(test) == 2
    assert torch.equal(train.tensors[0], full.tensors[0][:4])  # limits keep normalisation


def test_fashion_mnist_missing_names_the_package(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("fashion-mnist", root=missing)
    msg = str(err.value)
    assert "dataset-fashion-mnist" in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert str(missing) in msg


def test_read_idx_rejects_other_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x89PNG\r\n")
    with pytest.raises(ValueError, match="idx"):
        read_idx(bad)


@pytest.mark.skipif(
    not (FASHION_MNIST_ROOT / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_fashion_mnist_debian_package():
    train, test = load_dataset("fashion-mnist", limit_test=100)
    assert train.tensors[0].shape == (60000, 1, 28, 28) and len(test) == 100
    assert train.tensors[1][:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]


# ------------------------------------------------------------------------------------ cifar10


def _write_cifar(root: Path, per_batch: int = 2, n_test: int = 3) -> np.ndarray:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    first = None
    for i in range(1, 6):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        first = data if first is None else first
        entry = {b"batch_label": b"x", b"labels": [i % 10] * per_batch, b"data": data}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(entry, protocol=2))
    test = {
        "labels": list(range(n_test)),
        "data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
    }
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    (folder / "batches.meta").write_bytes(
        pickle.dumps({"label_names": [str(c) for c in range(10)]})
    )
    return first


def test_cifar10_reads_torchvision_pickles(tmp_path):
    first = _write_cifar(tmp_path)
    train, test = load_dataset("cifar10", root=tmp_path)
    assert isinstance(train, TensorDataset)
    assert train.tensors[0].shape == (10, 3, 32, 32) and test.tensors[0].shape == (3, 3, 32, 32)
    assert train.tensors[1].tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert test.tensors[1].tolist() == [0, 1, 2]
    # row-major CHW layout and per-channel normalisation
    pixel = first[0].reshape(3, 32, 32)[2, 5, 7] / 255
    expected = (pixel - CIFAR10_MEAN[2]) / CIFAR10_STD[2]
    assert train.tensors[0][0, 2, 5, 7].item() == pytest.approx(expected, abs=1e-5)
    # root may also be the batches folder itself; limits apply
    small, _ = load_dataset("cifar10", root=tmp_path / "cifar-10-batches-py", limit_train=4)
    assert torch.equal(small.tensors[0], train.tensors[0][:4])
    assert dataset_info("cifar10") == {"in_shape": (3, 32, 32), "num_classes": 10}


def test_cifar10_missing_names_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_dataset("cifar10", root=tmp_path)


# ----------------------------------------------------------------------------------- imagenet


def _write_image_folder(root: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("n01", "n02"):
            (root / split / cls).mkdir(parents=True)
            for i in range(3):
                pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")


def test_imagenet_folder_with_tiny_images(tmp_path):
    _write_image_folder(tmp_path)
    train, test = load_dataset("imagenet", root=tmp_path, image_size=16)
    assert len(train) == 6 and len(test) == 6
    x, y = train[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y == 0
    assert train.class_to_idx == {"n01": 0, "n02": 1}
    # without augmentation the train transform is deterministic (fit for passes)
    assert torch.equal(train[4][0], train[4][0])
    xb, yb = next(iter(BatchPlan(test, batch_size=4)))
    assert xb.shape == (4, 3, 16, 16) and yb.dtype == torch.int64
    aug, _ = load_dataset("imagenet", root=tmp_path, image_size=16, augment=True)
    assert aug[0][0].shape == (3, 16, 16)
    info = dataset_info("imagenet", root=tmp_path, image_size=16)
    assert info == {"in_shape": (3, 16, 16), "num_classes": 2}


def test_imagenet_missing_or_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match="ImageFolder"):
        load_dataset("imagenet", root=tmp_path / "none")
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        load_dataset("imagenet", root=tmp_path)


# -------------------------------------------------------------------------------------- names


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError) as err:
        load_dataset("mnist")
    for name in DATASETS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="digits"):
        dataset_info("svhn")


# ------------------------------------------------------------------------------- data_limit


def _dataset_root(name: str, tmp_path: Path) -> Path | None:
    """A tiny on-disk copy of ``name`` (None for data that needs no files)."""
    if name == "fashion-mnist":
        _write_fashion(tmp_path, n_train=12, n_test=5, gz=True)
    elif name == "cifar10":
        _write_cifar(tmp_path)
    elif name == "imagenet":
        _write_image_folder(tmp_path)
    else:
        return None
    return tmp_path


def _examples(dataset) -> list[tuple[torch.Tensor, int]]:
    return [(x, int(y)) for x, y in (dataset[i] for i in range(len(dataset)))]


@pytest.mark.parametrize("name", DATASETS)
def test_data_limit_is_honoured_for_every_dataset(name, tmp_path):
    """A sweep's data_limit caps train at n and test at n // 5 (>= 1) whatever the dataset,
    deterministically, with examples taken from the full splits."""
    root = _dataset_root(name, tmp_path)
    opts = {"image_size": 8} if name == "imagenet" else {}
    full_train, full_test = load_dataset(name, root, **opts)
    limit = 5
    train, test = load_dataset(name, root, limit=limit, **opts)
    assert len(train) == limit < len(full_train)
    assert len(test) == max(1, limit // 5) < len(full_test)
    again, _ = load_dataset(name, root, limit=limit, **opts)
    assert all(
        torch.equal(a, b) and la == lb
        for (a, la), (b, lb) in zip(_examples(train), _examples(again), strict=True)
    )
    if name != "synthetic":  # synthetic draws a smaller set instead of taking a subset
        for part, whole in ((train, full_train), (test, full_test)):
            pool = _examples(whole)
            for x, y in _examples(part):
                assert any(torch.equal(x, fx) and y == fy for fx, fy in pool)
    if name == "imagenet":  # class-sorted folders: the limit must not keep one class only
        assert len({y for _, y in _examples(train)}) == 2
    with pytest.raises(ValueError, match="data limit must be an integer >= 1"):
        load_dataset(name, root, limit=0, **opts)


def test_every_dataset_has_one_registry_entry_with_its_aliases():
    from repair_dist.data.datasets import REGISTRY, dataset_entry

    assert tuple(REGISTRY) == DATASETS
    assert dataset_entry("FMNIST") is dataset_entry("fashion_mnist") is REGISTRY["fashion-mnist"]
    assert dataset_entry("CIFAR-10") is REGISTRY["cifar10"]


def test_the_torch_free_catalog_and_the_loaders_describe_the_same_datasets():
    # Sweep planning reads the catalog (no torch); loading reads the registry built on it.
    from repair_dist.data import catalog, datasets

    assert set(datasets._LOADERS) == set(catalog.CATALOG) and DATASETS == catalog.DATASETS
    for name, entry in datasets.REGISTRY.items():
        known = catalog.CATALOG[name]
        assert (entry.info, entry.check, entry.aliases) == (known.info, known.check, known.aliases)
        for alias in (name, *entry.aliases):
            assert datasets.dataset_entry(alias.upper()).name == catalog.catalog_entry(alias).name
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; choose one of digits"):
        datasets.dataset_entry("mnist")
