"""Offline validation of Ray cluster launcher configs (``repair-dist check-cluster``).

A broken ``cluster.yaml`` costs a paid head node, minutes of ``ray up`` and an SSH session to
find out; this module finds the same mistakes on a laptop in about a second, with no network.

Ray's own rules, applied offline
--------------------------------
``ray up`` resolves a config in ``ray.autoscaler._private.commands._bootstrap_config``:

1. ``prepare_config`` - merges the provider's ``defaults.yaml`` (shipped inside the Ray wheel),
   rewrites ``provider: local`` configs into their single implicit node type, checks the docker
   section and fills per-type ``min_workers``/``max_workers``. Pure: files and dicts only.
2. ``provider_cls.fillout_available_node_types_resources`` - for AWS, asks EC2
   (``DescribeInstanceTypes`` through boto3) for the CPUs/GPUs/memory of each instance type.
   **Network.**
3. ``validate_config`` - ``ray-schema.json`` through jsonschema, plus Ray's cross-field rules
   (``head_node_type`` is one of ``available_node_types``, sum of ``min_workers`` <= global
   ``max_workers``, defaults present). Pure.
4. ``provider_cls.bootstrap_config`` - IAM roles, key pairs, subnets, security groups, AMIs.
   **Network.**

We run steps 1 and 3 exactly as Ray does and never import a node-provider class, so steps 2 and
4 (and boto3) cannot run: nothing is monkeypatched, the network steps are simply not called.
Schema violations are listed all at once and pointed at their line in the file; when
``prepare_config`` itself crashes on a malformed file (e.g. a bare ``KeyError``), the schema run
on the raw file explains why. The price of skipping step 2 is that we cannot ask EC2 what an
instance type holds, so ``requires_gpu`` reads explicit ``resources: {GPU: n}`` first and falls
back to a small table of GPU instance families; the shipped ``cluster.yaml`` declares resources
explicitly for that reason.

repair-dist rules on top: GPU workers when asked for, no trials on the head (warning), a shared
store for multi-node clusters, setup that installs the project, no secrets, and placeholders
still to fill in (warning).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

__all__ = ["GPU_INSTANCE_FAMILIES", "check_cluster", "format_report", "has_errors", "is_warning"]

#: AWS instance families with NVIDIA GPUs (family = instance type before the dot). Used only when
#: a node type does not declare ``resources: {GPU: n}`` (EC2 is never asked; see module doc).
GPU_INSTANCE_FAMILIES: frozenset[str] = frozenset(
    {
        "g4dn",  # T4
        "g5",  # A10G
        "g5g",  # T4G (Arm)
        "g6",  # L4
        "g6e",  # L40S
        "gr6",  # L4
        "p3",  # V100
        "p3dn",  # V100 32 GB
        "p4d",  # A100 40 GB
        "p4de",  # A100 80 GB
        "p5",  # H100
        "p5e",  # H200
        "p5en",  # H200
    }
)

#: GCP machine families that come with GPUs attached (a2: A100, a3: H100, g2: L4).
_GCP_GPU_MACHINE_PREFIXES = ("a2-", "a3-", "g2-")

_COMMAND_KEYS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)
_SETUP_KEYS = ("setup_commands", "head_setup_commands", "worker_setup_commands")

# Mapping keys whose (non-empty) value is a credential.
_SECRET_KEY = re.compile(
    r"^(aws_secret_access_key|aws_access_key_id|aws_session_token|secret_access_key|"
    r"password|passwd|api_?key|access_token|auth_token|credentials)$",
    re.IGNORECASE,
)
# A credential assigned literally inside a command (`export AWS_SECRET_ACCESS_KEY=...`); a
# reference to the user's own environment (`=$VAR`) is fine.
_SECRET_ASSIGN = re.compile(
    r"\b(AWS_SECRET_ACCESS_KEY|AWS_ACCESS_KEY_ID|AWS_SESSION_TOKEN|[A-Z0-9_]*PASSWORD|"
    r"[A-Z0-9_]*API_KEY|[A-Z0-9_]*_TOKEN)\s*=\s*(?![\"']?\$)[\"']?[^\s\"';]+",
    re.IGNORECASE,
)
# Text-level patterns: real key material, wherever it sits (comments included).
_SECRET_TEXT = (
    (re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"), "an AWS access key id"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "private key material"),
    (re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:[^/\s@'\"]+@"), "a password inside a URL"),
)
_PLACEHOLDER = re.compile(r"[\w./:~-]*(?:YOUR[-_]|REPLACE[-_]|CHANGE[-_]?ME)[\w./:~-]*")
_STORE_ASSIGN = re.compile(r"\bREPAIR_DIST_STORE\s*=\s*[\"']?([^\s\"';&|)]*)")
_REMOTE_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "az", "hdfs", "viewfs")
_INSTALLS = re.compile(r"\b(pip3?\s+install|uv\s+pip\s+install|uv\s+sync)\b")
_INSTALLS_US = re.compile(r"repair[-_]dist|\s(-e|--editable)(\s|=|$)")
_WARNING = re.compile(r"^.*?:(\d+:)? warning: ")

Path_ = tuple[Any, ...]


def is_warning(problem: str) -> bool:
    """True for advice (``<file>[:<line>]: warning: ...``); the CLI exits 1 only on errors."""
    return _WARNING.match(problem) is not None


def has_errors(problems: list[str]) -> bool:
    """True when any problem is an error, i.e. ``ray up`` should not be attempted."""
    return any(not is_warning(p) for p in problems)


def format_report(path: str | os.PathLike[str], problems: list[str]) -> str:
    """Human-readable report: every problem on its own line, then a one-line verdict."""
    name = str(path)
    if not problems:
        return f"{name}: OK (Ray {_ray_version()} schema and repair-dist rules, checked offline)"
    n_warn = sum(is_warning(p) for p in problems)
    n_err = len(problems) - n_warn
    if n_err:
        verdict = f"{name}: {n_err} error(s), {n_warn} warning(s); fix the errors before `ray up`"
    else:
        verdict = f"{name}: OK with {n_warn} warning(s)"
    return "\n".join([*problems, verdict])


def check_cluster(path: str | os.PathLike[str], *, requires_gpu: bool = False) -> list[str]:
    """Problems with the cluster config at ``path``; an empty list means it is valid.

    Each problem is one readable line prefixed by the file name (and line when known);
    advice is prefixed ``warning:`` (see :func:`is_warning`). Never touches the network.
    ``requires_gpu``: the sweep asks for GPUs, so some worker type must have them (a GPU
    trial on a CPU-only cluster waits forever instead of failing).
    """
    name = str(path)
    file = Path(path)
    if not file.exists():
        return [f"{name}: no such file"]
    if not file.is_file():
        return [f"{name}: not a file"]
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [f"{name}: cannot read: {exc}"]

    report = _Report(name)
    try:
        raw = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        return [_yaml_error(name, exc)]
    if not isinstance(raw, dict):
        kind = "empty" if raw is None else f"a {type(raw).__name__}, not a mapping"
        return [f"{name}: the config is {kind}; expected keys such as cluster_name and provider"]
    lines = _LineIndex(root)

    _check_secrets(raw, text, lines, report)
    prepared = _ray_rules(raw, lines, report)
    if prepared is not None:
        _check_head(prepared, report, lines)
        if requires_gpu:
            _check_gpu(prepared, report, lines)
        _check_store(raw, prepared, report, lines)
        _check_install(raw, report, lines)
    _check_placeholders(raw, lines, report)
    # Errors first: they decide the exit code and are what to fix before the advice.
    return sorted(report.problems, key=is_warning)


# ----------------------------------------------------------------------------- plumbing


class _Report:
    """Collects problems with a consistent ``<file>[:<line>]: [warning: ]text`` shape."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.problems: list[str] = []

    def error(self, text: str, line: int | None = None) -> None:
        self.problems.append(f"{self._where(line)} {text}")

    def warn(self, text: str, line: int | None = None) -> None:
        self.problems.append(f"{self._where(line)} warning: {text}")

    def _where(self, line: int | None) -> str:
        return f"{self.name}:{line}:" if line else f"{self.name}:"


class _LineIndex:
    """1-based source line of each key/item path, so messages point into the user's file."""

    def __init__(self, root: yaml.Node | None) -> None:
        self._lines: dict[Path_, int] = {}
        if root is not None:
            self._walk(root, ())

    def _walk(self, node: yaml.Node, path: Path_) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode):
                    continue  # complex keys never occur in cluster configs
                sub = (*path, key.value)
                self._lines.setdefault(sub, key.start_mark.line + 1)
                self._walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._lines.setdefault((*path, i), item.start_mark.line + 1)
                self._walk(item, (*path, i))

    def line(self, path: Path_) -> int | None:
        """Line of ``path`` or of its nearest ancestor present in the file."""
        for n in range(len(path), 0, -1):
            if path[:n] in self._lines:
                return self._lines[path[:n]]
        return None


def _yaml_error(name: str, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{name}:{mark.line + 1}:{mark.column + 1}:" if mark is not None else f"{name}:"
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    detail = f"{problem} ({context})" if context else problem
    return f"{where} invalid YAML: {detail}"


def _ray_version() -> str:
    try:
        return metadata.version("ray")
    except metadata.PackageNotFoundError:
        return "?"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence Ray's cli_logger/logging while we call it: its findings come back as messages."""
    log = logging.getLogger("ray.autoscaler")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        log.setLevel(level)


def _short(text: str, limit: int = 240) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _dotted(path: Path_) -> str:
    return ".".join(str(p) for p in path) or "top level"


def _walk(data: Any, path: Path_ = ()) -> Iterator[tuple[Path_, Any, Any]]:
    """(path, key, value) for every mapping entry and list item, depth first."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield (*path, key), key, value
            yield from _walk(value, (*path, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield (*path, i), None, value
            yield from _walk(value, (*path, i))


def _commands(
    config: dict[str, Any], keys: tuple[str, ...] = _COMMAND_KEYS
) -> list[tuple[Path_, str]]:
    """(path, command) for every shell command under ``keys``, global and per node type.

    Read from the user's file, not the prepared config: Ray's defaults add no repair-dist
    commands, and the prepared config repeats ``setup_commands`` inside head/worker setup.
    """
    out: list[tuple[Path_, str]] = []
    scopes: list[tuple[Path_, Any]] = [((), config)]
    node_types = config.get("available_node_types")
    if isinstance(node_types, dict):
        scopes += [(("available_node_types", n), t) for n, t in node_types.items()]
    for prefix, scope in scopes:
        if not isinstance(scope, dict):
            continue
        for key in keys:
            commands = scope.get(key) or []
            if isinstance(commands, list):
                out += [((*prefix, key, i), str(c)) for i, c in enumerate(commands)]
    return out


# ----------------------------------------------------------------------------- Ray's rules


def _ray_rules(raw: dict[str, Any], lines: _LineIndex, report: _Report) -> dict[str, Any] | None:
    """Ray's ``prepare_config`` then its schema and ``validate_config``, offline, in Ray's order.

    Returns the prepared config (defaults merged, as ``ray up`` sees it) or None when Ray
    rejects the file; see the module docstring for why this never reaches a cloud API. The
    schema runs with jsonschema's ``iter_errors`` first so that every violation is reported
    with its line, not only the one ``validate_config`` would raise.
    """
    try:
        import jsonschema
        import ray.autoscaler
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError as exc:  # pragma: no cover - ray[tune] is a dependency
        report.error(f"cannot load Ray's cluster schema ({exc}); install 'ray[default]'")
        return None

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    validator = jsonschema.Draft7Validator(json.loads(schema_path.read_text()))
    try:
        with _quiet():
            prepared = prepare_config(raw)
    except Exception as exc:  # Ray reports via ValueError/ClickException/assert/KeyError
        # Ray crashes on some malformed files; the schema on the raw file usually says why.
        if not _schema_errors(validator, raw, lines, report):
            report.error(f"rejected by Ray's prepare_config: {_short(_exc_text(exc))}")
        return None
    if _schema_errors(validator, prepared, lines, report):
        return None
    try:
        with _quiet():
            validate_config(prepared)
    except Exception as exc:  # ValueError / RuntimeError with Ray's own wording
        report.error(f"rejected by Ray's validate_config: {_short(_exc_text(exc))}")
        return None
    return prepared


def _schema_errors(validator: Any, config: Any, lines: _LineIndex, report: _Report) -> int:
    """Report every violation of Ray's ``ray-schema.json`` (at most 10); return their count."""
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.path])
    for err in errors[:10]:
        path = _offending_key(err, tuple(err.absolute_path))
        report.error(f"schema: {_short(err.message)} (at {_dotted(path)})", lines.line(path))
    if len(errors) > 10:
        report.error(f"schema: {len(errors) - 10} more violation(s) not shown")
    return len(errors)


def _offending_key(err: Any, path: Path_) -> Path_:
    """For 'additional properties' errors, point at the first unexpected key, not its parent."""
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = set(err.schema.get("properties", {}))
        patterns = list(err.schema.get("patternProperties", {}))
        for key in err.instance:
            if key not in allowed and not any(re.search(p, str(key)) for p in patterns):
                return (*path, key)
    return path


def _exc_text(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc)
    if isinstance(exc, KeyError):
        text = f"missing key {text}"
    return text or type(exc).__name__


# ----------------------------------------------------------------------------- our rules


def _check_secrets(raw: dict[str, Any], text: str, lines: _LineIndex, report: _Report) -> None:
    """Credentials never belong in a file that is committed and copied to every node."""
    advice = "use an IAM instance profile or your own shell environment instead"
    for path, key, value in _walk(raw):
        if isinstance(key, str) and _SECRET_KEY.match(key) and value not in (None, "", {}, []):
            report.error(
                f"secret: `{_dotted(path)}` holds a credential; {advice}", lines.line(path)
            )
        elif isinstance(value, str):
            match = _SECRET_ASSIGN.search(value)
            if match:
                report.error(
                    f"secret: a command assigns {match.group(1)} literally; {advice}",
                    lines.line(path),
                )
    for n, line in enumerate(text.splitlines(), start=1):
        for pattern, what in _SECRET_TEXT:
            if pattern.search(line):
                report.error(f"secret: {what} in the file; remove it and rotate it", n)


def _check_head(config: dict[str, Any], report: _Report, lines: _LineIndex) -> None:
    """The head runs the Tune driver, autoscaler and MLflow; trials there starve them."""
    why = "Tune may then schedule trials on the head, which runs the driver, autoscaler and MLflow"
    if config["provider"].get("type") == "local":
        cmds = " ".join(str(c) for c in config.get("head_start_ray_commands") or [])
        if not re.search(r"--num-cpus[= ]0\b", cmds):
            report.warn(
                f"head_start_ray_commands do not pass `--num-cpus=0`; {why}",
                lines.line(("head_start_ray_commands",)),
            )
        return
    head = config["head_node_type"]
    resources = config["available_node_types"][head].get("resources") or {}
    if resources.get("CPU") != 0:
        report.warn(
            f"head node type `{head}` does not set `resources: {{CPU: 0}}`; {why}",
            lines.line(("available_node_types", head)),
        )


def _gpus(node_type: dict[str, Any]) -> tuple[int, str]:
    """(GPU count, how we know) for a cloud node type; explicit resources win over tables."""
    resources = node_type.get("resources") or {}
    if "GPU" in resources:
        return int(resources["GPU"]), "resources.GPU"
    node_config = node_type.get("node_config") or {}
    instance = str(node_config.get("InstanceType", ""))
    if instance.split(".")[0] in GPU_INSTANCE_FAMILIES:
        return 1, f"instance type {instance}"
    if node_config.get("guestAccelerators"):
        return 1, "guestAccelerators"
    machine = str(node_config.get("machineType", ""))
    if machine.startswith(_GCP_GPU_MACHINE_PREFIXES):
        return 1, f"machine type {machine}"
    return 0, instance or "no GPU declared"


def _check_gpu(config: dict[str, Any], report: _Report, lines: _LineIndex) -> None:
    """A GPU trial on a cluster without GPU workers waits forever: refuse it up front."""
    if config["provider"].get("type") == "local":
        _check_gpu_local(config, report, lines)
        return
    head = config["head_node_type"]
    seen: list[str] = []
    for name, node_type in config["available_node_types"].items():
        if name == head:
            continue
        count, source = _gpus(node_type)
        if count > 0 and node_type.get("max_workers", 0) > 0 and config["max_workers"] > 0:
            return
        seen.append(f"{name}: {source}, max_workers {node_type.get('max_workers', 0)}")
    listed = "; ".join(seen) or "no worker node types"
    report.error(
        "the sweep needs GPUs but no worker node type can start one "
        f"({listed}); add a type with `resources: {{GPU: n}}` on a GPU instance "
        "(g4dn, g5, g6, p3, p4d, p5) and max_workers > 0",
        lines.line(("available_node_types",)),
    )


def _check_gpu_local(config: dict[str, Any], report: _Report, lines: _LineIndex) -> None:
    """On-prem GPUs are auto-detected by `ray start`; only an explicit --num-gpus is provable."""
    has_workers = config.get("max_workers", 0) > 0
    key = "worker_start_ray_commands" if has_workers else "head_start_ray_commands"
    cmds = " ".join(str(c) for c in config.get(key) or [])
    counts = [int(n) for n in re.findall(r"--num-gpus[= ](\d+)", cmds)]
    where = lines.line((key,))
    if counts and max(counts) == 0:
        report.error(f"the sweep needs GPUs but {key} pass `--num-gpus=0`", where)
    elif not counts:
        report.warn(
            "GPUs on on-prem machines are detected by `ray start` and cannot be verified "
            f"offline; add `--num-gpus=N` to {key} to make it explicit",
            where,
        )


def _check_store(
    raw: dict[str, Any], prepared: dict[str, Any], report: _Report, lines: _LineIndex
) -> None:
    """With workers, every node must see the same checkpoint/results store."""
    max_workers = prepared.get("max_workers", 0)
    if max_workers <= 0:
        return
    places = _commands(raw)
    docker = raw.get("docker") if isinstance(raw.get("docker"), dict) else {}
    for key in ("run_options", "head_run_options", "worker_run_options"):
        places += [(("docker", key, i), str(o)) for i, o in enumerate(docker.get(key) or [])]
    found = [(path, m.group(1)) for path, s in places for m in _STORE_ASSIGN.finditer(s)]
    if not found:
        report.error(
            f"multi-node cluster (max_workers: {max_workers}) sets no shared store: each node "
            "would keep checkpoints and results on its own disk; export "
            "REPAIR_DIST_STORE=s3://BUCKET/PREFIX (or a shared filesystem path) in setup_commands",
            lines.line(("setup_commands",)) or lines.line(("max_workers",)),
        )
        return
    cloud = prepared["provider"].get("type") != "local"
    for path, value in found:
        line = lines.line(path)
        scheme = value.split("://", 1)[0].lower() if "://" in value else ""
        if not value:
            report.error("REPAIR_DIST_STORE is set to an empty value", line)
        elif scheme in _REMOTE_SCHEMES:
            continue
        elif scheme and scheme != "file":
            report.warn(f"REPAIR_DIST_STORE={value}: unknown filesystem scheme `{scheme}://`", line)
        elif not value.startswith(("/", "~", "$", "file://")):
            report.error(
                f"REPAIR_DIST_STORE={value} is a relative path, which differs between nodes; "
                "use s3://... or an absolute path on a shared filesystem",
                line,
            )
        elif cloud:
            report.warn(
                f"REPAIR_DIST_STORE={value} is a path on a cloud cluster: it must be a shared "
                "filesystem (EFS, FSx) mounted on every node; s3://... needs no mount",
                line,
            )


def _check_install(raw: dict[str, Any], report: _Report, lines: _LineIndex) -> None:
    """Trials import repair_dist on the workers: setup (or the image) must install it."""
    for _path, cmd in _commands(raw, _SETUP_KEYS):
        if _INSTALLS.search(cmd) and _INSTALLS_US.search(cmd):
            return
    docker = raw.get("docker") if isinstance(raw.get("docker"), dict) else {}
    images = [str(docker.get(k, "")) for k in ("image", "head_image", "worker_image")]
    if any(re.search(r"repair[-_]dist", image) for image in images):
        return
    report.error(
        "no setup command installs repair-dist: mount the repository (file_mounts "
        "`~/repair-dist: .`) and add `pip install -e ~/repair-dist` to setup_commands, "
        "or use a docker image that has it",
        lines.line(("setup_commands",)),
    )


def _check_placeholders(raw: dict[str, Any], lines: _LineIndex, report: _Report) -> None:
    """Template values left in place fail late (at `ray up` or on first write): list them."""
    for path, _key, value in _walk(raw):
        if isinstance(value, str):
            for token in dict.fromkeys(_PLACEHOLDER.findall(value)):
                report.warn(
                    f"placeholder `{token}` at {_dotted(path)}: fill it in before `ray up`",
                    lines.line(path),
                )
