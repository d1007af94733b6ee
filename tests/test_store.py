"""Checkpoints come back exactly as saved, or not at all: a damaged, truncated or mismatched
checkpoint is one readable CheckpointError naming its path, never a silently different net.
The content-addressed store behaves the same on a local path and on a remote filesystem."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
import torchvision
from pyarrow import fs as pafs

from repair_dist import store as store_mod
from repair_dist.checkpoint import (
    CheckpointError,
    is_intact,
    load_checkpoint,
    read_meta,
    register_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from repair_dist.models import build_model
from repair_dist.store import CheckpointStore, canonical_json

MLP_CFG = {"name": "mlp", "depth": 2, "width": 8, "norm": "bn", "in_shape": (1, 8, 8)}


def _net(seed: int = 0, **override) -> torch.nn.Module:
    """A small BN MLP with non-trivial running statistics (so buffers must round-trip too)."""
    cfg = {**MLP_CFG, **override}
    torch.manual_seed(seed)
    net = build_model(cfg.pop("name"), **cfg)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


def _x() -> torch.Tensor:
    return torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(7))


def _same_function(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    with torch.no_grad():
        return torch.equal(a.eval()(_x()), b.eval()(_x()))


# ------------------------------------------------------------------------ one checkpoint dir


def test_saved_net_loads_back_with_identical_outputs(tmp_path: Path) -> None:
    net = _net()
    written = save_checkpoint(net, tmp_path / "ck", {"seed": 3, "dataset": "digits"})
    loaded, meta = load_checkpoint(tmp_path / "ck")
    assert _same_function(net, loaded)
    assert not loaded.training
    assert meta == written == read_meta(tmp_path / "ck")
    assert meta["seed"] == 3 and meta["weights"] == "weights.safetensors"
    assert meta["model"] == json.loads(json.dumps(net.config))  # build_model(**config) rebuilds
    digest = hashlib.sha256((tmp_path / "ck" / "weights.safetensors").read_bytes()).hexdigest()
    assert meta["sha256"] == digest
    assert is_intact(tmp_path / "ck")


def test_rerun_replaces_the_checkpoint_and_leaves_no_temporaries(tmp_path: Path) -> None:
    save_checkpoint(_net(seed=0), tmp_path / "ck", {"run": 1})
    second = _net(seed=1)
    save_checkpoint(second, tmp_path / "ck", {"run": 2})
    loaded, meta = load_checkpoint(tmp_path / "ck")
    assert meta["run"] == 2 and _same_function(second, loaded)
    assert sorted(os.listdir(tmp_path)) == ["ck"]


def test_a_flipped_byte_is_caught_by_the_hash_and_names_the_file(tmp_path: Path) -> None:
    save_checkpoint(_net(), tmp_path / "ck", {})
    weights = tmp_path / "ck" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF  # inside the tensor payload: safetensors alone would load it silently
    weights.write_bytes(bytes(data))
    assert not is_intact(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="sha256") as err:
        load_checkpoint(tmp_path / "ck")
    assert str(weights) in str(err.value)


def test_truncated_weights_are_refused(tmp_path: Path) -> None:
    save_checkpoint(_net(), tmp_path / "ck", {})
    weights = tmp_path / "ck" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as err:
        verify_checkpoint(tmp_path / "ck")
    assert str(weights) in str(err.value)


def test_garbage_weights_with_a_matching_hash_are_a_readable_error(tmp_path: Path) -> None:
    """Even when meta.json vouches for the bytes, a file that is not safetensors is refused."""
    save_checkpoint(_net(), tmp_path / "ck", {})
    weights = tmp_path / "ck" / "weights.safetensors"
    weights.write_bytes(b"not a tensor file" * 8)
    meta = json.loads((tmp_path / "ck" / "meta.json").read_text())
    meta["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (tmp_path / "ck" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="safetensors") as err:
        load_checkpoint(tmp_path / "ck")
    assert str(weights) in str(err.value)


def test_missing_pieces_are_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such directory"):
        load_checkpoint(tmp_path / "absent")
    save_checkpoint(_net(), tmp_path / "ck", {})
    (tmp_path / "ck" / "weights.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(tmp_path / "ck")
    (tmp_path / "ck" / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable meta.json"):
        read_meta(tmp_path / "ck")


def test_weights_of_another_architecture_give_a_readable_message(tmp_path: Path) -> None:
    save_checkpoint(_net(), tmp_path / "ck", {})
    meta_path = tmp_path / "ck" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["model"]["width"] = 16  # the config now describes a wider net than the weights
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "ck")
    msg = str(err.value)
    assert "does not match the mlp architecture" in msg
    assert "blocks.0.linear.weight (8, 64) vs (16, 64)" in msg
    assert str(tmp_path / "ck") in msg


def test_a_state_dict_with_missing_layers_names_them(tmp_path: Path) -> None:
    torch.save(_net().state_dict(), tmp_path / "w.pt")
    deeper = {**MLP_CFG, "depth": 3}
    with pytest.raises(CheckpointError, match=r"missing \d+ keys: blocks\.2\.linear\.weight"):
        register_checkpoint(tmp_path / "ck", tmp_path / "w.pt", deeper)
    assert not (tmp_path / "ck").exists()  # nothing written for a mismatch


def test_torchvision_state_dict_registers_and_loads_with_weights_only(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=10).eval()
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    cfg = {"name": "resnet18", "num_classes": 10, "in_shape": (3, 32, 32)}
    meta = register_checkpoint(tmp_path / "ck", tmp_path / "resnet18.pth", cfg, {"seed": 0})
    assert meta["weights"] == "weights.pth" and meta["source"].endswith("resnet18.pth")
    loaded, _ = load_checkpoint(tmp_path / "ck")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(loaded(x), reference(x), atol=1e-6)


def test_wrapped_state_dicts_and_modules_register_too(tmp_path: Path) -> None:
    net = _net()
    torch.save({"state_dict": net.state_dict(), "epoch": 3}, tmp_path / "wrapped.pt")
    register_checkpoint(tmp_path / "a", tmp_path / "wrapped.pt", MLP_CFG)
    register_checkpoint(tmp_path / "b", net, MLP_CFG)
    for name in ("a", "b"):
        assert _same_function(net, load_checkpoint(tmp_path / name)[0])


class _NotATensor:
    pass


def test_pickled_objects_and_garbage_pt_files_are_refused(tmp_path: Path) -> None:
    torch.save({"w": torch.zeros(1), "obj": _NotATensor()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="weights_only=True") as err:
        register_checkpoint(tmp_path / "ck", tmp_path / "evil.pt", MLP_CFG)
    assert "\x1b[" not in str(err.value)  # torch's ANSI emphasis is stripped
    (tmp_path / "bad.pt").write_bytes(b"\x00garbage" * 16)
    with pytest.raises(CheckpointError, match="not a torch.save archive"):
        register_checkpoint(tmp_path / "ck", tmp_path / "bad.pt", MLP_CFG)
    with pytest.raises(CheckpointError, match="unknown weights format"):
        (tmp_path / "w.npz").write_bytes(b"")
        register_checkpoint(tmp_path / "ck", tmp_path / "w.npz", MLP_CFG)


def test_saving_a_net_without_config_says_how_to_build_one(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="build_model"):
        save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "ck", {})


# ------------------------------------------------------------------------------ content keys

ENDPOINT = {
    "model": "mlp",
    "width": 128.0,
    "depth": 6,
    "norm": "none",
    "dataset": "digits",
    "seed": 0,
    "epochs": 30,
}


def test_endpoint_key_is_stable_across_key_order_and_processes() -> None:
    key = CheckpointStore.endpoint_key(ENDPOINT)
    assert key == CheckpointStore.endpoint_key(dict(reversed(list(ENDPOINT.items()))))
    assert len(key) == 16 and int(key, 16) >= 0
    # The hashed text is canonical JSON: pinned, so a refactor cannot silently re-key a store.
    assert canonical_json({"b": (1, 2), "a": 0.5}) == '{"a":0.5,"b":[1,2]}'
    payload = canonical_json({"config": ENDPOINT, "code_version": store_mod.CODE_VERSION})
    assert key == hashlib.sha256(payload.encode()).hexdigest()[:16]


@pytest.mark.parametrize(
    "change", [{"seed": 1}, {"width": 64.0}, {"depth": None}, {"norm": "bn"}, {"epochs": 31}]
)
def test_endpoint_key_changes_with_the_config(change: dict) -> None:
    assert CheckpointStore.endpoint_key({**ENDPOINT, **change}) != CheckpointStore.endpoint_key(
        ENDPOINT
    )


def test_endpoint_key_changes_with_the_code_version(monkeypatch) -> None:
    before = CheckpointStore.endpoint_key(ENDPOINT)
    monkeypatch.setattr(store_mod, "CODE_VERSION", "999")
    assert CheckpointStore.endpoint_key(ENDPOINT) != before


# ------------------------------------------------------------------- the store, three backends


def _store(kind: str, tmp_path: Path) -> CheckpointStore:
    if kind == "path":
        return CheckpointStore(tmp_path / "ckpts")
    if kind == "file-uri":
        return CheckpointStore((tmp_path / "ckpts").as_uri())
    # A non-local pyarrow filesystem: exercises the upload/download code that s3:// uses.
    subtree = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    return CheckpointStore("ckpts", filesystem=subtree)


KINDS = ["path", "file-uri", "remote"]


@pytest.mark.parametrize("kind", KINDS)
def test_store_roundtrip_keys_and_delete(kind: str, tmp_path: Path) -> None:
    store = _store(kind, tmp_path)
    assert store.local == (kind != "remote")
    assert store.keys() == [] and not store.has("k1")
    net = _net()
    store.save("k1", net, {"seed": 0})
    store.save("k2", _net(seed=1), {"seed": 1})
    assert store.keys() == ["k1", "k2"] and store.has("k1")
    loaded, meta = store.load("k1")
    assert _same_function(net, loaded) and meta["key"] == "k1" and meta["seed"] == 0
    assert store.meta("k2")["seed"] == 1
    assert (tmp_path / "ckpts" / "k1" / "meta.json").is_file()  # same layout everywhere
    store.delete("k1")
    store.delete("never-there")
    assert store.keys() == ["k2"] and not store.has("k1")
    with pytest.raises(CheckpointError, match="k1"):
        store.load("k1")


@pytest.mark.parametrize("kind", KINDS)
def test_store_resave_replaces(kind: str, tmp_path: Path) -> None:
    store = _store(kind, tmp_path)
    store.save("k", _net(seed=0), {"run": 1})
    second = _net(seed=1)
    store.save("k", second, {"run": 2})
    loaded, meta = store.load("k")
    assert meta["run"] == 2 and _same_function(second, loaded)
    assert store.keys() == ["k"]


@pytest.mark.parametrize("kind", KINDS)
def test_store_detects_corruption_and_names_the_store_path(kind: str, tmp_path: Path) -> None:
    store = _store(kind, tmp_path)
    store.save("k", _net(), {})
    weights = tmp_path / "ckpts" / "k" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    assert not store.has("k")
    with pytest.raises(CheckpointError, match="truncated") as err:
        store.load("k")
    assert store.path("k") in str(err.value)
    assert "repair-dist-ckpt-" not in str(err.value)  # not the download's temporary dir


@pytest.mark.parametrize("kind", KINDS)
def test_an_upload_interrupted_before_meta_is_not_a_checkpoint(kind: str, tmp_path: Path) -> None:
    store = _store(kind, tmp_path)
    store.save("k", _net(), {})
    (tmp_path / "ckpts" / "k" / "meta.json").unlink()  # the last file to arrive never did
    assert not store.has("k") and store.keys() == []
    with pytest.raises(CheckpointError, match="meta.json"):
        store.load("k")


@pytest.mark.parametrize("kind", ["path", "remote"])
def test_store_registers_a_torch_file(kind: str, tmp_path: Path) -> None:
    store = _store(kind, tmp_path)
    net = _net()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    store.register("ext", tmp_path / "w.pt", MLP_CFG, {"origin": "elsewhere"})
    loaded, meta = store.load("ext")
    assert meta["weights"] == "weights.pt" and meta["origin"] == "elsewhere"
    assert _same_function(net, loaded)


def test_store_rejects_keys_that_are_not_plain_names(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    for bad in ("", "../up", "a/b", "a b"):
        with pytest.raises(ValueError, match="checkpoint key"):
            store.path(bad)
