"""``repair-dist``: the command line (DESIGN.md §4).

Every failure a user can cause (a wrong path, an invalid sweep, a corrupt checkpoint,
mismatched architectures) ends as one readable line on stderr and exit status 2, not a
traceback; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .allocator import prefer_arrow_allocator

prefer_arrow_allocator()  # before pyarrow is imported: flat driver memory (see .allocator)

from .location import TABLES  # noqa: E402

#: Results root: ``$REPAIR_DIST_STORE`` (set on cluster nodes by cluster.yaml) or ./results.
DEFAULT_ROOT = os.environ.get("REPAIR_DIST_STORE", "results")
#: MLflow: ``$MLFLOW_TRACKING_URI`` (the head's store on clusters) or sqlite under the root.
DEFAULT_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


class UsageError(Exception):
    """A problem with what the user asked for: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (no usage block) and exit status 2."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low} (got {value})")
        return value

    parse.__name__ = f"int >= {low}"
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 (got {text})")
    return value


# ---- helpers -------------------------------------------------------------------------------


def _load_sweep_script(path: str, smoke: bool) -> Any:
    """Import a ``sweeps/X.py`` file and call its ``build_sweep(smoke=...)``."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"sweep script {path!r} not found")
    spec = importlib.util.spec_from_file_location(f"_sweep_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except SyntaxError as err:
        raise UsageError(f"{path}, line {err.lineno}: syntax error: {err.msg}") from err
    build = getattr(module, "build_sweep", None)
    if build is None:
        raise UsageError(f"{path}: defines no build_sweep(smoke: bool) -> Sweep")
    return build(smoke=smoke)


#: How a sweep's summary shows the ``merges`` table: per net, N, method and variant ...
MERGES_GROUP = ("model", "width", "depth", "norm", "n_models", "method", "variant")
#: ... the merged net's test accuracy, its barrier and its gap to the ensemble of the N.
MERGES_SHOWN = ("acc", "barrier_acc", "barrier_loss", "ensemble_gap_acc", "ensemble_gap_loss")


def _print_outcome(outcome: Any) -> None:
    from .sweep import results

    root = outcome.root
    endpoints = results.read_table(root, "endpoints", outcome.sweep)
    if not endpoints.empty:
        cols = ["model", "width", "depth", "norm", "seed", "train_acc", "test_acc"]
        print("\nEndpoints (test accuracy):")
        print(results.format_table(endpoints[cols].sort_values(["model", "seed"])))
    if not outcome.summary.empty:
        print(
            f"\nBarriers at the midpoint (test split), mean ± std over seed pairs "
            f"({outcome.sweep}):"
        )
        keep = [c for c in outcome.summary.columns if c not in ("sweep", "dataset")]
        print(results.format_table(outcome.summary[keep]))
    pruning = results.read_table(root, "pruning", outcome.sweep)
    if not pruning.empty:
        group = ["model", "width", "depth", "norm", "kind", "sparsity", "variant"]
        stats = results.describe(pruning[[*group, "test_acc", "measured_sparsity"]], group)
        print(f"\nPruning (test accuracy, mean ± std over endpoints) ({outcome.sweep}):")
        print(results.format_table(stats))
    merges = results.read_table(root, "merges", outcome.sweep)
    if not merges.empty:
        keep = [*MERGES_GROUP, *MERGES_SHOWN]
        stats = results.describe(merges[keep], list(MERGES_GROUP))
        print(f"\nMerged nets of N (test split, mean ± std over N-tuples) ({outcome.sweep}):")
        print(results.format_table(stats))
    studies = ""
    if outcome.studies_run or outcome.studies_reused:
        studies = (
            f"{outcome.studies_run} study units (curves, pruning, merges) run, "
            f"{outcome.studies_reused} already done; "
        )
    print(
        f"\n{outcome.trials_run} trials run, {outcome.trials_reused} already done; {studies}"
        f"{outcome.endpoints_trained} endpoints trained, {outcome.endpoints_reused} reused; "
        f"{outcome.seconds:.0f} s."
    )
    if outcome.mlflow_problems:  # one line, however many trials it hit
        more = len(outcome.mlflow_problems) - 1
        print(
            f"warning: MLflow: {outcome.mlflow_problems[0]}"
            + (f" (and {more} more failure{'s' * (more > 1)})" if more else "")
            + " (Parquet is complete; run `repair-dist sync-mlflow`)"
        )
    tables = ",".join(TABLES)
    print(f"\nParquet tables: {root}/{{{tables}}}/sweep={outcome.sweep}/")
    if "://" not in str(root) and Path(root, "figures", f"sweep={outcome.sweep}").is_dir():
        print(f"Figures: {root}/figures/sweep={outcome.sweep}/")
    if outcome.tracking_uri:
        print(f"MLflow: {outcome.tracking_uri}  (browse: repair-dist ui --root {root})")
    print(f"Query:  repair-dist results {outcome.sweep} --root {root} --group-by model method")
    print(f"Per-trial plots: repair-dist plot {outcome.sweep} --root {root} --units")


def _run(sweep: Any, args: argparse.Namespace) -> int:
    from .sweep.runner import run_sweep

    outcome = run_sweep(
        sweep,
        root=args.root,
        store=getattr(args, "store", None),
        tracking_uri=getattr(args, "tracking_uri", None),
        address=getattr(args, "address", None),
        verbose=getattr(args, "verbose", 0),
        retrain_corrupt=getattr(args, "retrain_corrupt", False),
    )
    _print_outcome(outcome)
    return 0


# ---- commands ------------------------------------------------------------------------------


def cmd_quickstart(args: argparse.Namespace) -> int:
    from .sweep.presets import quickstart_sweep

    return _run(quickstart_sweep(smoke=args.smoke), args)


def cmd_sweep(args: argparse.Namespace) -> int:
    return _run(_load_sweep_script(args.script, args.smoke), args)


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import save_checkpoint
    from .data import check_dataset, dataset_info, load_dataset
    from .metrics import evaluate
    from .models import build_model
    from .train import train_model

    check_dataset(args.dataset, args.data_root)
    info = dataset_info(args.dataset, args.data_root)
    width = int(args.width) if float(args.width).is_integer() else args.width  # mlp: units
    kwargs: dict[str, Any] = {"width": width, "norm": args.norm}
    if args.depth is not None:
        kwargs["depth"] = args.depth
    torch.manual_seed(args.seed)
    net = build_model(  # before the data is read: a bad depth or width fails at once
        args.model, in_shape=info["in_shape"], num_classes=info["num_classes"], **kwargs
    )
    train, test = load_dataset(args.dataset, root=args.data_root)
    net = train_model(net, train, epochs=args.epochs, seed=args.seed)
    metrics = {f"test_{k}": v for k, v in evaluate(net, test).items()}
    meta = {"dataset": args.dataset, "seed": args.seed, "epochs": args.epochs, **metrics}
    save_checkpoint(net.cpu(), args.out, meta)
    print(json.dumps({"out": str(args.out), **metrics}))
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    from .location import Location
    from .store import CheckpointStore
    from .sweep.trainables import register_endpoint

    sweep = _load_sweep_script(args.sweep_script, args.smoke)
    wanted = {"model": args.model, "seed": args.seed, "width": args.width, "norm": args.norm}
    if args.depth is not None:
        wanted["depth"] = args.depth
    matches = [
        ep
        for ep in sweep.endpoints()
        if all(
            getattr(ep, k) == (float(v) if k == "width" else v)
            for k, v in wanted.items()
            if v is not None
        )
    ]
    if len(matches) != 1:
        listed = ", ".join(
            f"{e.model} w{e.width:g} d{e.depth} {e.norm} seed {e.seed}" for e in sweep.endpoints()
        )
        raise UsageError(
            f"{len(matches)} endpoints of sweep {sweep.name!r} match {wanted}; its endpoints: {listed}"
        )
    store = CheckpointStore(args.store or Location.of(args.root).checkpoints)
    metrics = register_endpoint(matches[0], args.weights, store, sweep.data_root)
    print(json.dumps({"endpoint_key": matches[0].key(), "store": store.uri, **metrics}))
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint
    from .data import load_dataset
    from .perm import check_same_architecture
    from .pipeline import merge_trial

    net_a, meta_a = load_checkpoint(args.dir_a)
    net_b, meta_b = load_checkpoint(args.dir_b)
    try:
        check_same_architecture(net_a, net_b)
    except ValueError as err:
        raise UsageError(f"{args.dir_a} and {args.dir_b}: {err}") from err
    dataset = args.dataset or meta_a.get("dataset")
    if not dataset:
        raise UsageError(f"{args.dir_a}/meta.json names no dataset: pass --dataset")
    train, test = load_dataset(dataset, root=args.data_root)
    outcome = merge_trial(
        net_a,
        net_b,
        train,
        test,
        method=args.method,
        variants=args.variants,
        alphas=args.alphas,
        workers=args.workers,
    )
    table = outcome.barriers
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        for name, frame in (("barriers", table), ("curves", outcome.curves)):
            frame.to_parquet(os.path.join(args.out, f"{name}.parquet"), index=False)
    from .sweep.results import format_table

    print(format_table(table))
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from .sweep import results

    if args.duckdb:
        print(results.DUCKDB_EXAMPLE)
        return 0
    if args.table != "trials":
        return _show_table(args)
    trials = results.read_table(args.root, "trials", args.sweep)
    if trials.empty:
        raise UsageError(
            f"no trials under {args.root!r}" + (f" for sweep {args.sweep!r}" if args.sweep else "")
        )
    if args.raw:
        print(results.format_table(trials, args.format))
        return 0
    print(results.format_table(results.summarize(trials, args.group_by), args.format))
    return 0


def _show_table(args: argparse.Namespace) -> int:
    """``results --table pruning|filters|curves|...``: rows, or a mean/std summary.

    ``pruning`` is summarised by default (mean and std over endpoints per net, kind,
    sparsity and variant), ``merges`` likewise (over N-tuples per net, N, method and
    variant); ``--group-by`` summarises any table by the given columns;
    ``--raw`` (and every other table by default) prints the rows.
    """
    from .sweep import results

    frame = results.read_table(args.root, args.table, args.sweep)
    if frame.empty:
        where = f" for sweep {args.sweep!r}" if args.sweep else ""
        raise UsageError(f"no {args.table} rows under {args.root!r}{where}")
    group = args.group_by
    if group is None and args.table == "pruning" and not args.raw:
        group = [*results.DEFAULT_GROUP_BY, "kind", "sparsity", "variant"]
    if group is None and args.table == "merges" and not args.raw:
        group = [*results.DEFAULT_GROUP_BY, "n_models", "method", "variant"]
    if group is None or args.raw:
        print(results.format_table(frame, args.format))
        return 0
    bad = [c for c in group if c not in frame.columns]
    if bad:
        raise UsageError(f"{args.table} has no column(s) {', '.join(bad)}")
    print(results.format_table(results.describe(frame, group), args.format))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Sweep-level barrier figures; with ``--units``, each trial's or study unit's figure."""
    from .sweep import results
    from .sweep.figures import sweep_figures, unit_figures

    if results.read_table(args.root, "trials", args.sweep, columns=["trial_key"]).empty:
        raise UsageError(f"no trials for sweep {args.sweep!r} under {args.root!r}")
    try:
        paths = sweep_figures(args.root, args.sweep, args.out)
        if args.units is not None:
            out = None if args.out is None else Path(args.out, "units")
            paths += unit_figures(args.root, args.sweep, out, args.units or None)
    except ValueError as err:  # a remote root without --out, an unknown unit key
        raise UsageError(str(err)) from None
    for path in paths:
        print(path)
    return 0


def _local_results(root: str, what: str) -> Any:
    """The Location of a results root that ``what`` needs on this machine (UsageError else)."""
    from .location import Location

    loc = Location.of(root)
    if not loc.local:
        raise UsageError(
            f"{what} needs a local results root for its default MLflow store; {loc.uri} is "
            "not local: pass --tracking-uri"
        )
    return loc


def _serve(cmd: list[str], env: dict[str, str]) -> int:
    """Run a server until it exits, or until SIGTERM/SIGINT/SIGHUP here, which stop it.

    Why: the server runs in its own process group, its workers with it, and every signal
    that ends us is passed to that whole group and awaited; before, SIGTERM killed this
    process only and left the MLflow server listening on its port.
    """
    child = subprocess.Popen(cmd, env=env, start_new_session=True)
    asked: list[int] = []

    def stop(signum: int, _frame: Any) -> None:
        asked.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGTERM)

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {s: signal.signal(s, stop) for s in handled}
    try:
        code = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _stop_group(child)
    return 0 if asked else code


def _group_alive(pgid: int) -> bool:
    """Whether process group ``pgid`` has a member that is not a zombie.

    Zombies count as gone: orphaned workers wait for init to reap them, which can take
    seconds in a container. Without /proc, any member counts.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp
                return True
    return False


def _stop_group(child: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the child's process group, wait ``grace_s`` for it to end, then SIGKILL."""
    deadline = time.monotonic() + grace_s
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGTERM)
        while time.monotonic() < deadline:
            child.poll()  # reap our own child
            if not _group_alive(child.pid):
                return
            time.sleep(0.1)
        os.killpg(child.pid, signal.SIGKILL)


def cmd_ui(args: argparse.Namespace) -> int:
    from .sweep.tracking import default_tracking_uri, ensure_sqlite_store

    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.expose:
        raise UsageError(f"refusing to serve MLflow on {args.host}: add --expose if you mean it")
    uri, artifacts = args.tracking_uri, []
    if uri is None:  # the default sqlite store under a local root, and its artifacts
        loc = _local_results(args.root, "ui")
        uri = default_tracking_uri(loc)
        artifacts = ["--default-artifact-root", str(loc.mlflow_artifacts)]
    ensure_sqlite_store(uri)  # built atomically here, not in place by the server
    cmd = [
        *(sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri),
        *("--host", args.host, "--port", str(args.port), *artifacts),
    ]
    print(f"MLflow UI on http://{args.host}:{args.port} over {uri}", file=sys.stderr)
    return _serve(cmd, {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})


def cmd_sync_mlflow(args: argparse.Namespace) -> int:
    from .sweep.tracking import default_tracking_uri, sync_from_parquet

    uri = args.tracking_uri or default_tracking_uri(_local_results(args.root, "sync-mlflow"))
    created = sync_from_parquet(args.root, uri, args.sweep)
    print(f"created {created} MLflow runs in {uri}")
    return 0


def cmd_check_cluster(args: argparse.Namespace) -> int:
    from .distributed.cluster_check import check_cluster, format_report, has_errors

    problems = check_cluster(args.file, requires_gpu=args.requires_gpu)
    print(format_report(args.file, problems))
    return 1 if has_errors(problems) else 0


# ---- parser --------------------------------------------------------------------------------


def _sweep_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--smoke", action="store_true", help="tiny version: seconds, for tests")
    p.add_argument("--root", default=DEFAULT_ROOT, help="results root (path or s3://, gs://)")
    p.add_argument("--store", help="checkpoint store URI (default <root>/checkpoints)")
    p.add_argument(
        "--tracking-uri",
        default=DEFAULT_TRACKING_URI,
        help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite under --root)",
    )
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or local)")
    p.add_argument("--verbose", type=int, default=0, choices=(0, 1, 2), help="Tune verbosity")
    p.add_argument(
        "--retrain-corrupt",
        action="store_true",
        help="move damaged trained checkpoints to <store>/_quarantine and train them again "
        "(registered weights are never retrained: re-register them)",
    )


class _LazyChoices(Sequence[str]):
    """argparse ``choices`` read from a registry on first use.

    The model, norm and matcher registries import torch (seconds); reading them while
    building the parser made every command pay for it, ``repair-dist results`` included.
    argparse only looks at choices when the option is given or help is printed.
    """

    def __init__(self, module: str, name: str) -> None:
        self._module, self._name = module, name
        self._values: tuple[str, ...] | None = None

    def _load(self) -> tuple[str, ...]:
        if self._values is None:
            module = importlib.import_module(self._module, __package__)
            self._values = tuple(getattr(module, self._name))
        return self._values

    def __getitem__(self, i):  # type: ignore[override]  # noqa: ANN001
        return self._load()[i]

    def __len__(self) -> int:
        return len(self._load())

    def __contains__(self, value: object) -> bool:
        return value in self._load()

    def __iter__(self):  # noqa: ANN204
        return iter(self._load())


def build_parser() -> argparse.ArgumentParser:
    from .variants import VARIANTS

    MODEL_NAMES = _LazyChoices(".models", "MODEL_NAMES")  # noqa: N806
    NORMS = _LazyChoices(".models", "NORMS")  # noqa: N806
    METHODS = _LazyChoices(".pipeline", "METHODS")  # noqa: N806

    parser = _Parser(prog="repair-dist", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("quickstart", help="the main job: a small real sweep on digits")
    _sweep_options(p)
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("sweep", help="run a sweep script from sweeps/")
    p.add_argument("script")
    _sweep_options(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("train", help="train one net into a checkpoint directory")
    p.add_argument(
        "--model", required=True, choices=MODEL_NAMES, metavar="MODEL", help="%(choices)s"
    )
    p.add_argument("--width", type=_positive_float, default=1)
    p.add_argument("--depth", type=_int_at_least(1))
    p.add_argument(
        "--norm", default="none", choices=NORMS, metavar="NORM", help="%(choices)s (default none)"
    )
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-root")
    p.add_argument("--epochs", type=_int_at_least(0), default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("register", help="adopt existing weights as an endpoint of a sweep")
    p.add_argument("weights", help=".pt/.pth state_dict (torchvision format) or .safetensors")
    p.add_argument("--sweep-script", required=True, help="the sweeps/X.py whose endpoint it is")
    p.add_argument("--model", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--width", type=float)
    p.add_argument("--depth", type=int)
    p.add_argument("--norm")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--root", default=DEFAULT_ROOT)
    p.add_argument("--store", help="checkpoint store URI (default <root>/checkpoints)")
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("merge", help="align, merge and REPAIR two checkpoints")
    p.add_argument("dir_a")
    p.add_argument("dir_b")
    p.add_argument(
        "--method",
        default="activation",
        choices=METHODS,
        metavar="METHOD",
        help="%(choices)s (default activation)",
    )
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--alphas", type=_int_at_least(2), default=11, help="points on the path")
    p.add_argument("--dataset")
    p.add_argument("--data-root")
    p.add_argument("--workers", type=_int_at_least(1), default=1)
    p.add_argument("--out")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("results", help="query the Parquet tables")
    p.add_argument("sweep", nargs="?")
    p.add_argument("--root", default=DEFAULT_ROOT)
    p.add_argument("--group-by", nargs="+")
    p.add_argument("--format", default="table", choices=("table", "csv", "json"))
    p.add_argument("--raw", action="store_true", help="every trial row, not the summary")
    p.add_argument(
        "--table",
        default="trials",
        choices=TABLES,
        help="which results table (default trials; pruning, filters, curves, ... too)",
    )
    p.add_argument("--duckdb", action="store_true", help="print an equivalent DuckDB query")
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("plot", help="a sweep's barrier figures; --units: per-trial figures")
    p.add_argument("sweep")
    p.add_argument("--root", default=DEFAULT_ROOT)
    p.add_argument("--out", help="directory of the figures (default <root>/figures/sweep=SWEEP)")
    p.add_argument(
        "--units",
        nargs="*",
        metavar="KEY",
        help="also draw each trial's and study unit's figure (or those of the given keys), "
        "into <root>/plots/sweep=SWEEP (or OUT/units)",
    )
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("ui", help="MLflow UI on 127.0.0.1 over the local store")
    p.add_argument("--root", default=DEFAULT_ROOT)
    p.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--expose", action="store_true", help="allow a non-loopback --host")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("sync-mlflow", help="backfill MLflow runs from the Parquet tables")
    p.add_argument("sweep", nargs="?")
    p.add_argument("--root", default=DEFAULT_ROOT)
    p.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI)
    p.set_defaults(func=cmd_sync_mlflow)

    p = sub.add_parser("check-cluster", help="validate a Ray cluster launcher config offline")
    p.add_argument("file")
    p.add_argument("--requires-gpu", action="store_true")
    p.set_defaults(func=cmd_check_cluster)
    return parser


#: The project's own user-facing errors, by (module, class). An exception can only be one of
#: them if its module was imported, so only loaded modules are consulted: an error of
#: ``repair-dist results`` never imports the runner (torch, Ray, Tune) just to be classified.
_USER_ERROR_CLASSES = (
    ("repair_dist.sweep.runner", "SweepIncomplete"),
    ("repair_dist.sweep.tracking", "TrackingUnavailable"),
    ("repair_dist.distributed.ray_init", "RayUnreachable"),
    ("repair_dist.sweep.lock", "SweepLocked"),
)


def _user_errors() -> tuple[type[BaseException], ...]:
    from .storage import StorageError

    loaded = tuple(
        getattr(sys.modules[module], name)
        for module, name in _USER_ERROR_CLASSES
        if module in sys.modules
    )
    # ValueError/TypeError: the library's way to reject a bad input (house rule), which
    # includes SweepConfigError and CheckpointError.
    return (UsageError, ValueError, TypeError, *loaded, StorageError, FileNotFoundError)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug or not isinstance(err, _user_errors()):
            raise
        print(f"repair-dist {args.command}: error: {err}", file=sys.stderr)
        return 2


def script_main(build_sweep: Callable[..., Any], argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python sweeps/X.py [--smoke] [--root ...]``."""
    parser = _Parser(
        description=(build_sweep.__doc__ or "").strip().splitlines()[0]
        if build_sweep.__doc__
        else None
    )
    parser.add_argument("--debug", action="store_true")
    _sweep_options(parser)
    args = parser.parse_args(argv)
    args.command = "sweep"
    try:
        return _run(build_sweep(smoke=args.smoke), args)
    except Exception as err:
        if args.debug or not isinstance(err, _user_errors()):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
