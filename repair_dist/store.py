"""Checkpoints: one directory per trained net, and a content-addressed store of them.

A checkpoint directory (DESIGN.md §4) holds

* the weights: ``weights.safetensors`` (what :func:`save_checkpoint` writes), or a torch
  ``state_dict`` file (``*.pt`` / ``*.pth``, loaded with ``weights_only=True``) that
  ``meta.json`` names under ``"weights"`` (e.g. a torchvision ResNet50 checkpoint);
* ``meta.json``: the caller's metadata (dataset, seed, metrics, ...) plus ``"model"`` (the
  net's ``config``: ``build_model(**config)`` rebuilds the architecture), ``"weights"`` (the
  weights file name), ``"sha256"`` (of the weights file) and ``"format": 1``.

A directory is *intact* when ``meta.json`` parses and the weights file hashes to its sha256.
Writes go to a temporary sibling (a name starting with ``.``) and are renamed into place, so a
killed writer leaves at most a stray temporary directory, never a half checkpoint under the
final name. Every problem on loading is one :class:`CheckpointError` naming the path.

:class:`CheckpointStore` keys checkpoints by the hash of what produced them
(:meth:`CheckpointStore.endpoint_key`) on any pyarrow filesystem: a local path (fast path:
plain file operations), or ``s3://``, ``gs://`` ... URIs (written locally, then uploaded with
``pyarrow.fs.copy_files``; the weights go up first and ``meta.json`` last, and object stores
publish each object whole, so an interrupted upload is never intact either).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pyarrow import fs as pafs
from torch import nn

from .models import build_model

#: Bump whenever training changes what an endpoint config produces: it is part of every
#: endpoint key, so old checkpoints are then simply not found (and retrained) instead of reused.
CODE_VERSION = "1"
#: Layout version written into ``meta.json``.
FORMAT = 1
WEIGHTS_FILE = "weights.safetensors"
META_FILE = "meta.json"
_TORCH_SUFFIXES = (".pt", ".pth")
_CHUNK = 1 << 20


class CheckpointError(ValueError):
    """A checkpoint cannot be used: the message names the path and what is wrong."""


# --------------------------------------------------------------------------------------------
# one checkpoint directory
# --------------------------------------------------------------------------------------------


def _sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _cpu_state_dict(net: nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, none sharing memory (safetensors refuses shared storage)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for name, t in net.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        if ptr is not None and ptr in seen:
            t = t.clone()
        elif ptr is not None:
            seen.add(ptr)
        out[name] = t
    return out


def _model_config(net: nn.Module) -> dict[str, Any]:
    config = getattr(net, "config", None)
    if not isinstance(config, Mapping) or "name" not in config:
        raise ValueError(
            "save_checkpoint needs a net built by repair_dist.build_model (it has no .config); "
            "build the model with build_model(name, **cfg)"
        )
    return dict(config)


def _write_json(path: str | os.PathLike, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=_json_default)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (tuple, set)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _publish_dir(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``, replacing an existing ``final`` (rerun replaces)."""
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(final, old)
        try:
            os.rename(tmp, final)
        except BaseException:
            os.rename(old, final)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)


def _build_meta(net: nn.Module, meta: Mapping[str, Any], weights: str, sha: str) -> dict:
    reserved = {"model", "sha256", "format", "weights"} & set(meta)
    out = {k: v for k, v in meta.items() if k not in reserved}
    out.update({"model": _model_config(net), "weights": weights, "sha256": sha, "format": FORMAT})
    return out


def save_checkpoint(net: nn.Module, directory: str | os.PathLike, meta: Mapping[str, Any]) -> dict:
    """Write ``net`` to ``directory`` (weights.safetensors + meta.json), atomically.

    Returns the meta written (``meta`` plus ``model``, ``weights``, ``sha256``, ``format``).
    An existing checkpoint at ``directory`` is replaced.
    """
    from safetensors.torch import save_file

    final = Path(directory).absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    state = _cpu_state_dict(net)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        weights = tmp / WEIGHTS_FILE
        save_file(state, str(weights), metadata={"format": "pt"})
        _fsync_file(weights)
        written = _build_meta(net, meta, WEIGHTS_FILE, _sha256_file(weights))
        _write_json(tmp / META_FILE, written)  # meta last: the directory is complete now
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        _publish_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return written


def read_meta(directory: str | os.PathLike) -> dict:
    """``meta.json`` of a checkpoint directory (no weight checks); CheckpointError if absent."""
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"checkpoint {d}: no such directory")
    path = d / META_FILE
    if not path.is_file():
        raise CheckpointError(f"checkpoint {d}: missing {META_FILE}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path}: unreadable {META_FILE} ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise CheckpointError(f"checkpoint {path}: {META_FILE} has no 'model' config object")
    return meta


def _weights_path(directory: Path, meta: Mapping[str, Any]) -> Path:
    name = meta.get("weights", WEIGHTS_FILE)
    if not isinstance(name, str) or not name or Path(name).name != name:
        raise CheckpointError(
            f"checkpoint {directory}: {META_FILE} names weights {name!r}; "
            "expected a file name inside the checkpoint directory"
        )
    path = directory / name
    if not path.is_file():
        raise CheckpointError(f"checkpoint {directory}: weights file {path} is missing")
    return path


def verify_checkpoint(directory: str | os.PathLike) -> dict:
    """Check meta.json and the weights' sha256; returns the meta or raises CheckpointError."""
    d = Path(directory)
    meta = read_meta(d)
    path = _weights_path(d, meta)
    want = meta.get("sha256")
    if want is not None:
        got = _sha256_file(path)
        if got != want:
            raise CheckpointError(
                f"checkpoint {path}: corrupt or truncated weights "
                f"(sha256 {got[:16]}... does not match meta.json's {str(want)[:16]}...)"
            )
    return meta


def is_intact(directory: str | os.PathLike) -> bool:
    """True when ``directory`` holds a complete checkpoint whose weights match their sha256."""
    try:
        verify_checkpoint(directory)
    except CheckpointError:
        return False
    return True


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _torch_load_problem(path: Path, error: Exception) -> str:
    """What went wrong in ``torch.load(weights_only=True)``, in one line.

    torch's own message for a truncated or garbage file talks about ``weights_only`` and how
    to switch it off, which is the wrong advice there; ``torch.save`` writes a zip archive, so
    a file that is not one is reported as damaged instead.
    """
    if not zipfile.is_zipfile(path):
        return (
            "not a torch.save archive (truncated, garbage, or the pre-1.6 legacy format; "
            "re-save it with torch.save(state_dict, path))"
        )
    first = _ANSI.sub("", str(error)).strip().splitlines()
    detail = first[0] if first else ""
    return (
        "cannot read the torch state_dict with weights_only=True "
        f"({type(error).__name__}: {detail}); only tensors and plain containers are accepted"
    )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix in _TORCH_SUFFIXES:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle errors, truncation, refused globals
            raise CheckpointError(f"checkpoint {path}: {_torch_load_problem(path, e)}") from None
        # Common wrappers: {"state_dict": {...}} / {"model": {...}}.
        for wrapper in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
                state = state[wrapper]
        if not isinstance(state, dict) or not all(
            isinstance(v, torch.Tensor) for v in state.values()
        ):
            raise CheckpointError(f"checkpoint {path}: not a state_dict of tensors")
        return state
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"checkpoint {path}: corrupt or truncated safetensors ({e})"
        ) from None


def _state_dict_mismatch(net: nn.Module, state: Mapping[str, torch.Tensor]) -> str:
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]

    def few(items: list[str]) -> str:
        more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
        return ", ".join(items[:3]) + more

    parts = []
    if missing:
        parts.append(f"missing {len(missing)} keys: {few(missing)}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} keys: {few(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches (file vs model): {few(shapes)}")
    return "; ".join(parts)


def load_into(net: nn.Module, state: Mapping[str, torch.Tensor], where: str | os.PathLike) -> None:
    """``net.load_state_dict(state, strict=True)`` with one readable CheckpointError."""
    problem = _state_dict_mismatch(net, state)
    if problem:
        name = getattr(net, "config", {}).get("name", type(net).__name__)
        raise CheckpointError(
            f"checkpoint {where}: state_dict does not match the {name} architecture ({problem})"
        )
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {where}: cannot load state_dict ({e})") from None


def _build_from_meta(meta: Mapping[str, Any], where: Path) -> nn.Module:
    config = dict(meta["model"])
    name = config.pop("name", None)
    if not isinstance(name, str):
        raise CheckpointError(f"checkpoint {where}: model config in {META_FILE} has no 'name'")
    try:
        return build_model(name, **config)
    except (ValueError, TypeError) as e:
        raise CheckpointError(
            f"checkpoint {where}: {META_FILE} names an unusable model ({e})"
        ) from None


def load_checkpoint(
    directory: str | os.PathLike, *, device: str | torch.device | None = None
) -> tuple[nn.Module, dict]:
    """Rebuild the net from ``meta.json`` and load its verified weights; returns (net, meta).

    The net is in eval mode, on ``device`` (default CPU). Raises :class:`CheckpointError`.
    """
    d = Path(directory)
    meta = verify_checkpoint(d)
    net = _build_from_meta(meta, d / META_FILE)
    path = _weights_path(d, meta)
    load_into(net, _read_state_dict(path), path)
    net.eval()
    if device is not None:
        net.to(device)
    return net, meta


def register_checkpoint(
    directory: str | os.PathLike,
    source: str | os.PathLike | nn.Module,
    model_config: Mapping[str, Any],
    meta: Mapping[str, Any] | None = None,
) -> dict:
    """Make a checkpoint directory from an existing state_dict file (or a net), atomically.

    A ``*.pt``/``*.pth`` file is copied as is (loaded later with ``weights_only=True``); a
    ``*.safetensors`` file is copied too. Before anything is written the weights are loaded
    into ``build_model(**model_config)``, so a mismatch fails here, not in a later trial.
    """
    meta = dict(meta or {})
    config = dict(model_config)
    name = config.pop("name", None)
    if name is None:
        raise ValueError("model_config needs a 'name' (as in build_model(name, **cfg))")
    net = build_model(name, **config)
    if isinstance(source, nn.Module):
        load_into(net, source.state_dict(), f"<{type(source).__name__}>")
        return save_checkpoint(net, directory, meta)
    src = Path(source)
    if not src.is_file():
        raise CheckpointError(f"checkpoint {src}: no such weights file")
    if src.suffix not in (*_TORCH_SUFFIXES, ".safetensors"):
        raise CheckpointError(
            f"checkpoint {src}: unknown weights format {src.suffix!r}; "
            "use .pt, .pth or .safetensors"
        )
    load_into(net, _read_state_dict(src), src)
    final = Path(directory).absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    weights_name = WEIGHTS_FILE if src.suffix == ".safetensors" else "weights" + src.suffix
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        shutil.copyfile(src, tmp / weights_name)
        _fsync_file(tmp / weights_name)
        written = _build_meta(net, meta, weights_name, _sha256_file(tmp / weights_name))
        written["source"] = str(src.absolute())
        _write_json(tmp / META_FILE, written)
        os.chmod(tmp, 0o755)
        _publish_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return written


# --------------------------------------------------------------------------------------------
# content-addressed store
# --------------------------------------------------------------------------------------------


def canonical_json(obj: Any) -> str:
    """Key-sorted, compact JSON (tuples as lists): equal configs give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def resolve_filesystem(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str, bool]:
    """(filesystem, path inside it, is_local) for a local path or any pyarrow URI."""
    text = os.fspath(uri)
    if "://" not in text:
        return pafs.LocalFileSystem(), os.path.abspath(text), True
    filesystem, path = pafs.FileSystem.from_uri(text)
    return filesystem, path, isinstance(filesystem, pafs.LocalFileSystem)


class CheckpointStore:
    """Checkpoints keyed by content (``<uri>/<key>/``) on a local path or a pyarrow URI.

    ``uri`` is a directory of its own (e.g. ``results/checkpoints`` or
    ``s3://bucket/repair/checkpoints``). ``filesystem`` overrides the filesystem that
    ``pyarrow.fs.FileSystem.from_uri`` would pick (then ``uri`` is a path inside it).
    """

    def __init__(self, uri: str | os.PathLike, *, filesystem: pafs.FileSystem | None = None):
        self.uri = os.fspath(uri)
        if filesystem is None:
            self.fs, self.root, self.local = resolve_filesystem(self.uri)
        else:
            self.fs, self.root = filesystem, self.uri.rstrip("/")
            self.local = isinstance(filesystem, pafs.LocalFileSystem)
            if self.local:
                self.root = os.path.abspath(self.root)
        self._scheme = self.uri.split("://", 1)[0] + "://" if "://" in self.uri else ""

    def __repr__(self) -> str:
        return f"CheckpointStore({self.uri!r})"

    @staticmethod
    def endpoint_key(config: Mapping[str, Any]) -> str:
        """First 16 hex of sha256(canonical JSON of the endpoint config + CODE_VERSION)."""
        payload = canonical_json({"config": dict(config), "code_version": CODE_VERSION})
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @staticmethod
    def _check_key(key: str) -> str:
        if not key or not all(c.isalnum() or c in "-_" for c in key):
            raise ValueError(f"checkpoint key {key!r} must be letters, digits, '-' or '_'")
        return key

    def _remote(self, key: str) -> str:
        return f"{self.root}/{self._check_key(key)}"

    def path(self, key: str) -> str:
        """Where ``key`` lives: a local absolute path, or the URI on a remote filesystem."""
        if self.local:
            return os.path.join(self.root, self._check_key(key))
        if self._scheme and not self.root.startswith(self._scheme):
            return f"{self._scheme}{self._remote(key)}"
        return self._remote(key)

    # -- queries ---------------------------------------------------------------------------

    def has(self, key: str) -> bool:
        """True when ``key`` is present and intact (meta.json parses, weights match sha256)."""
        if self.local:
            return is_intact(self.path(key))
        try:
            self._verify_remote(key)
        except CheckpointError:
            return False
        return True

    def meta(self, key: str) -> dict:
        """``meta.json`` of ``key`` (not verified); CheckpointError if absent."""
        if self.local:
            return read_meta(self.path(key))
        return self._read_remote_meta(key)

    def keys(self) -> list[str]:
        """Keys with a meta.json (intactness not checked), sorted."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        except OSError:
            return []
        out = []
        for info in infos:
            if info.type == pafs.FileType.Directory and not info.base_name.startswith("."):
                meta_info = self.fs.get_file_info(f"{info.path}/{META_FILE}")
                if meta_info.type == pafs.FileType.File:
                    out.append(info.base_name)
        return sorted(out)

    # -- writes ----------------------------------------------------------------------------

    def save(self, key: str, net: nn.Module, meta: Mapping[str, Any]) -> dict:
        """Write ``net`` under ``key`` (atomically; replaces). Returns the meta written."""
        meta = {**meta, "key": key}
        if self.local:
            os.makedirs(self.root, exist_ok=True)
            return save_checkpoint(net, self.path(key), meta)
        with tempfile.TemporaryDirectory(prefix="repair-dist-ckpt-") as tmp:
            written = save_checkpoint(net, Path(tmp) / key, meta)
            self._upload(Path(tmp) / key, key, written)
        return written

    def register(
        self,
        key: str,
        source: str | os.PathLike | nn.Module,
        model_config: Mapping[str, Any],
        meta: Mapping[str, Any] | None = None,
    ) -> dict:
        """Adopt an existing checkpoint (a ``.pt``/``.pth`` state_dict file or a net) as ``key``.

        The weights are checked against ``build_model(**model_config)`` before anything is
        written; torch files keep their format and are loaded with ``weights_only=True``.
        """
        meta = {**(meta or {}), "key": key}
        if self.local:
            os.makedirs(self.root, exist_ok=True)
            return register_checkpoint(self.path(key), source, model_config, meta)
        with tempfile.TemporaryDirectory(prefix="repair-dist-ckpt-") as tmp:
            written = register_checkpoint(Path(tmp) / key, source, model_config, meta)
            self._upload(Path(tmp) / key, key, written)
        return written

    def load(self, key: str, *, device: str | torch.device | None = None) -> tuple[nn.Module, dict]:
        """(net, meta) for ``key``; CheckpointError when absent or not intact."""
        if self.local:
            return load_checkpoint(self.path(key), device=device)
        with tempfile.TemporaryDirectory(prefix="repair-dist-ckpt-") as tmp:
            local = Path(tmp) / key
            self._download(key, local)
            try:
                net, meta = load_checkpoint(local, device=device)
            except CheckpointError as e:
                raise CheckpointError(str(e).replace(str(local), self.path(key))) from None
        return net, meta

    def delete(self, key: str) -> None:
        """Remove ``key`` (no error when absent)."""
        if self.local:
            shutil.rmtree(self.path(key), ignore_errors=True)
            return
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_dir(self._remote(key))

    # -- remote helpers --------------------------------------------------------------------

    def _upload(self, local: Path, key: str, meta: Mapping[str, Any]) -> None:
        local_fs = pafs.LocalFileSystem()
        dest = self._remote(key)
        self.fs.create_dir(dest, recursive=True)
        # Drop the old meta first: from now on the key reads as absent until the new one lands.
        meta_path = f"{dest}/{META_FILE}"
        if self.fs.get_file_info(meta_path).type == pafs.FileType.File:
            self.fs.delete_file(meta_path)
        weights = meta["weights"]
        pafs.copy_files(
            str(local / weights),
            f"{dest}/{weights}",
            source_filesystem=local_fs,
            destination_filesystem=self.fs,
        )
        pafs.copy_files(
            str(local / META_FILE),
            meta_path,
            source_filesystem=local_fs,
            destination_filesystem=self.fs,
        )

    def _read_remote_meta(self, key: str) -> dict:
        where = self.path(key)
        base = self._remote(key)
        info = self.fs.get_file_info(base)
        if info.type != pafs.FileType.Directory:
            raise CheckpointError(f"checkpoint {where}: no such directory")
        try:
            with self.fs.open_input_stream(f"{base}/{META_FILE}") as f:
                raw = f.read()
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {where}: missing {META_FILE}") from None
        try:
            meta = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"checkpoint {where}: unreadable {META_FILE} ({e})") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
            raise CheckpointError(f"checkpoint {where}: {META_FILE} has no 'model' config object")
        return meta

    def _verify_remote(self, key: str) -> dict:
        meta = self._read_remote_meta(key)
        name = meta.get("weights", WEIGHTS_FILE)
        where = f"{self.path(key)}/{name}"
        h = hashlib.sha256()
        try:
            with self.fs.open_input_stream(f"{self._remote(key)}/{name}") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {where}: weights file is missing") from None
        if meta.get("sha256") is not None and h.hexdigest() != meta["sha256"]:
            raise CheckpointError(f"checkpoint {where}: corrupt or truncated weights (sha256)")
        return meta

    def _download(self, key: str, local: Path) -> None:
        meta = self._read_remote_meta(key)
        local.mkdir(parents=True)
        local_fs = pafs.LocalFileSystem()
        for name in (meta.get("weights", WEIGHTS_FILE), META_FILE):
            try:
                pafs.copy_files(
                    f"{self._remote(key)}/{name}",
                    str(local / name),
                    source_filesystem=self.fs,
                    destination_filesystem=local_fs,
                )
            except FileNotFoundError:
                raise CheckpointError(f"checkpoint {self.path(key)}: {name} is missing") from None


__all__ = [
    "CODE_VERSION",
    "CheckpointError",
    "CheckpointStore",
    "canonical_json",
    "is_intact",
    "load_checkpoint",
    "read_meta",
    "register_checkpoint",
    "resolve_filesystem",
    "save_checkpoint",
    "verify_checkpoint",
]
