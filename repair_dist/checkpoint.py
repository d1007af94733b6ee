"""One checkpoint directory: save, register, verify and load one trained net.

A checkpoint directory (DESIGN.md §4) holds

* the weights: ``weights.safetensors`` (what :func:`save_checkpoint` writes), or a torch
  ``state_dict`` file (``*.pt`` / ``*.pth``, loaded with ``weights_only=True``) that
  ``meta.json`` names under ``"weights"`` (e.g. a torchvision ResNet50 checkpoint);
* ``meta.json``: the caller's metadata (dataset, seed, metrics, ...) plus ``"model"`` (the
  net's ``config``: ``build_model(**config)`` rebuilds the architecture), ``"weights"`` (the
  weights file name), ``"sha256"`` (of the weights file) and ``"format": 1``.

A directory is *intact* when ``meta.json`` parses and the weights file hashes to its sha256.
Every problem on loading is one :class:`CheckpointError` naming the path.

The directory may live on any pyarrow filesystem (a path, ``file://``, ``s3://`` ...: see
:class:`~repair_dist.location.Location`); every read goes through that filesystem, so local
and remote directories share one implementation. Only publishing differs, because only a
local filesystem renames a directory atomically: locally the files are written into a
temporary sibling (a name starting with ``.``) that is then renamed into place; on object
stores the old ``meta.json`` is removed first, the weights go up and ``meta.json`` last, and
object stores publish each object whole. Either way a killed writer never leaves an intact
looking half checkpoint under the final name.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import uuid
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyarrow import fs as pafs

from .location import Location
from .storage import writing

if TYPE_CHECKING:  # torch is imported where weights are touched: planning needs none
    import torch
    from torch import nn

#: Layout version written into ``meta.json``.
FORMAT = 1
WEIGHTS_FILE = "weights.safetensors"
META_FILE = "meta.json"
_TORCH_SUFFIXES = (".pt", ".pth")
_CHUNK = 1 << 20
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

Where = str | os.PathLike | Location


class CheckpointError(ValueError):
    """A checkpoint cannot be used: the message names the path and what is wrong."""


# --------------------------------------------------------------------------------------------
# serialising
# --------------------------------------------------------------------------------------------


def json_default(obj: Any) -> Any:
    """JSON for tuples, sets, paths and numpy/torch scalars (configs and metrics hold them)."""
    if isinstance(obj, (tuple, set)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


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


def _build_meta(net: nn.Module, meta: Mapping[str, Any], weights: str, sha: str) -> dict:
    reserved = {"model", "sha256", "format", "weights"} & set(meta)
    out = {k: v for k, v in meta.items() if k not in reserved}
    out.update({"model": _model_config(net), "weights": weights, "sha256": sha, "format": FORMAT})
    return out


def _meta_bytes(meta: Mapping[str, Any]) -> bytes:
    return (json.dumps(meta, indent=2, sort_keys=True, default=json_default) + "\n").encode()


# --------------------------------------------------------------------------------------------
# publishing (the only place local and remote differ: see the module docstring)
# --------------------------------------------------------------------------------------------


def _write_local(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _publish_local(final: Path, files: Mapping[str, bytes]) -> None:
    """Write ``files`` (meta.json last) into a temporary sibling, then rename it into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    # The writer's pid in the name: a store cleaning stale temporaries skips live writers.
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        for name, data in files.items():
            _write_local(tmp / name, data)
        if final.exists():  # rerun replaces: move the old one aside, put the new one in
            old = final.parent / f".{final.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
            try:
                os.rename(tmp, final)
            except BaseException:
                os.rename(old, final)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish_remote(loc: Location, files: Mapping[str, bytes]) -> None:
    """Drop the old meta.json, upload the weights, then meta.json (the completion mark)."""
    loc.fs.create_dir(loc.path, recursive=True)
    meta_path = loc.join(META_FILE)
    if loc.is_file(META_FILE):  # from now on the directory reads as absent until the new meta
        loc.fs.delete_file(meta_path)
    for name, data in sorted(files.items(), key=lambda item: item[0] == META_FILE):
        with loc.fs.open_output_stream(loc.join(name)) as out:
            out.write(data)


def _publish(loc: Location, weights_name: str, weights: bytes, meta: Mapping[str, Any]) -> None:
    files = {weights_name: weights, META_FILE: _meta_bytes(meta)}  # insertion order: meta last
    with writing("checkpoint", loc.uri):  # a full disk is one line naming the directory
        if loc.local:
            _publish_local(Path(loc.path), files)
        else:
            _publish_remote(loc, files)


def save_checkpoint(net: nn.Module, directory: Where, meta: Mapping[str, Any]) -> dict:
    """Write ``net`` to ``directory`` (weights.safetensors + meta.json), atomically.

    Returns the meta written (``meta`` plus ``model``, ``weights``, ``sha256``, ``format``).
    An existing checkpoint at ``directory`` is replaced.
    """
    from safetensors.torch import save

    loc = Location.of(directory)
    data = save(_cpu_state_dict(net), metadata={"format": "pt"})
    written = _build_meta(net, meta, WEIGHTS_FILE, hashlib.sha256(data).hexdigest())
    _publish(loc, WEIGHTS_FILE, data, written)
    return written


def register_checkpoint(
    directory: Where,
    source: str | os.PathLike | nn.Module,
    model_config: Mapping[str, Any],
    meta: Mapping[str, Any] | None = None,
) -> dict:
    """Make a checkpoint directory from an existing state_dict file (or a net), atomically.

    A ``*.pt``/``*.pth`` file is copied as is (loaded later with ``weights_only=True``); a
    ``*.safetensors`` file is copied too. Before anything is written the weights are loaded
    into ``build_model(**model_config)``, so a mismatch fails here, not in a later trial.
    """
    from torch import nn

    from .models import build_model

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
    data = src.read_bytes()
    load_into(net, _parse_state_dict(data, src.suffix, src), src)
    weights_name = WEIGHTS_FILE if src.suffix == ".safetensors" else "weights" + src.suffix
    written = _build_meta(net, meta, weights_name, hashlib.sha256(data).hexdigest())
    written["source"] = str(src.absolute())
    _publish(Location.of(directory), weights_name, data, written)
    return written


# --------------------------------------------------------------------------------------------
# reading (one implementation for every filesystem)
# --------------------------------------------------------------------------------------------


def _display(loc: Location, name: str | None = None) -> str:
    return loc.uri if name is None else f"{loc.uri.rstrip('/')}/{name}"


def read_meta(directory: Where) -> dict:
    """``meta.json`` of a checkpoint directory (no weight checks); CheckpointError if absent."""
    loc = Location.of(directory)
    if not loc.is_dir():
        raise CheckpointError(f"checkpoint {loc.uri}: no such directory")
    try:
        with loc.fs.open_input_stream(loc.join(META_FILE)) as f:
            raw = f.read()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {loc.uri}: missing {META_FILE}") from None
    where = _display(loc, META_FILE)
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {where}: unreadable {META_FILE} ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise CheckpointError(f"checkpoint {where}: {META_FILE} has no 'model' config object")
    return meta


def _weights_name(loc: Location, meta: Mapping[str, Any]) -> str:
    name = meta.get("weights", WEIGHTS_FILE)
    if not isinstance(name, str) or not name or Path(name).name != name:
        raise CheckpointError(
            f"checkpoint {loc.uri}: {META_FILE} names weights {name!r}; "
            "expected a file name inside the checkpoint directory"
        )
    if not loc.is_file(name):
        raise CheckpointError(
            f"checkpoint {loc.uri}: weights file {_display(loc, name)} is missing"
        )
    return name


def _check_sha(where: str, got: str, meta: Mapping[str, Any]) -> None:
    want = meta.get("sha256")
    if want is not None and got != want:
        raise CheckpointError(
            f"checkpoint {where}: corrupt or truncated weights "
            f"(sha256 {got[:16]}... does not match meta.json's {str(want)[:16]}...)"
        )


def verify_checkpoint(directory: Where) -> dict:
    """Check meta.json and the weights' sha256; returns the meta or raises CheckpointError."""
    loc = Location.of(directory)
    meta = read_meta(loc)
    name = _weights_name(loc, meta)
    h = hashlib.sha256()
    with loc.fs.open_input_stream(loc.join(name)) as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    _check_sha(_display(loc, name), h.hexdigest(), meta)
    return meta


def is_intact(directory: Where) -> bool:
    """True when ``directory`` holds a complete checkpoint whose weights match their sha256."""
    try:
        verify_checkpoint(directory)
    except CheckpointError:
        return False
    return True


def _torch_load_problem(data: bytes, error: Exception) -> str:
    """What went wrong in ``torch.load(weights_only=True)``, in one line.

    torch's own message for a truncated or garbage file talks about ``weights_only`` and how
    to switch it off, which is the wrong advice there; ``torch.save`` writes a zip archive, so
    a file that is not one is reported as damaged instead.
    """
    if not zipfile.is_zipfile(io.BytesIO(data)):
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


def _parse_state_dict(data: bytes, suffix: str, where: object) -> dict[str, torch.Tensor]:
    import torch

    if suffix in _TORCH_SUFFIXES:
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as e:  # pickle errors, truncation, refused globals
            raise CheckpointError(f"checkpoint {where}: {_torch_load_problem(data, e)}") from None
        # Common wrappers: {"state_dict": {...}} / {"model": {...}}.
        for wrapper in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
                state = state[wrapper]
        if not isinstance(state, dict) or not all(
            isinstance(v, torch.Tensor) for v in state.values()
        ):
            raise CheckpointError(f"checkpoint {where}: not a state_dict of tensors")
        return state
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(data)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"checkpoint {where}: corrupt or truncated safetensors ({e})"
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


def load_into(net: nn.Module, state: Mapping[str, torch.Tensor], where: object) -> None:
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


def _build_from_meta(meta: Mapping[str, Any], where: str) -> nn.Module:
    from .models import build_model

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
    directory: Where, *, device: str | torch.device | None = None
) -> tuple[nn.Module, dict]:
    """Rebuild the net from ``meta.json`` and load its verified weights; returns (net, meta).

    The weights are read once: hashed against ``meta.json`` and parsed from the same bytes.
    The net is in eval mode, on ``device`` (default CPU). Raises :class:`CheckpointError`.
    """
    loc = Location.of(directory)
    meta = read_meta(loc)
    name = _weights_name(loc, meta)
    where = _display(loc, name)
    try:
        with loc.fs.open_input_stream(loc.join(name)) as f:
            data = f.read()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {loc.uri}: weights file {where} is missing") from None
    _check_sha(where, hashlib.sha256(data).hexdigest(), meta)
    net = _build_from_meta(meta, _display(loc, META_FILE))
    load_into(net, _parse_state_dict(data, Path(name).suffix, where), where)
    net.eval()
    if device is not None:
        net.to(device)
    return net, meta


def delete_checkpoint(directory: Where) -> None:
    """Remove a checkpoint directory (no error when absent)."""
    loc = Location.of(directory)
    if loc.is_dir():
        loc.fs.delete_dir(loc.path)


def is_checkpoint_dir(info: pafs.FileInfo) -> bool:
    """A directory entry that can be a checkpoint (temporary siblings start with ``.``)."""
    return info.type == pafs.FileType.Directory and not info.base_name.startswith(".")


__all__ = [
    "FORMAT",
    "META_FILE",
    "WEIGHTS_FILE",
    "CheckpointError",
    "delete_checkpoint",
    "is_intact",
    "load_checkpoint",
    "load_into",
    "read_meta",
    "register_checkpoint",
    "save_checkpoint",
    "verify_checkpoint",
]
