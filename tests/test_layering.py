"""The house rules of the import graph, checked on the source (no imports executed).

* only ``distributed/`` and ``sweep/`` import Ray; only ``sweep/`` imports MLflow; models and
  the science modules import neither;
* no import cycle, between modules or between packages, counting imports inside functions too:
  a lazy import is allowed to save start-up time (Ray, torchvision, the CLI's subcommands),
  never to hide a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "repair_dist"


def _fresh_interpreter(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a new Python (nothing imported yet), from the checkout; it must pass."""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PACKAGE.parent,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path) -> set[str]:
    """Every absolute module name imported anywhere in ``path`` (TYPE_CHECKING blocks aside)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            # ``from . import x`` may name a submodule
            found.update(f"{target}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: _imports(p) for m, p in files.items()}


GRAPH = _graph()
MODULES = set(GRAPH)


def _internal(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    return {m: {t for t in targets if t in MODULES and t != m} for m, targets in graph.items()}


def _unit(module: str) -> str:
    """A package directory counts as one unit; a top-level module is its own unit."""
    parts = module.split(".")
    return ".".join(parts[:2])


def _find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def _is_package_init(module: str) -> bool:
    return (PACKAGE.parent / module.replace(".", "/") / "__init__.py").exists()


def test_no_import_cycle_between_modules():
    # A package's __init__ re-exporting its own submodules is not a cycle of design.
    edges = {
        m: {t for t in ts if not (_is_package_init(m) and t.startswith(m + "."))}
        for m, ts in _internal(GRAPH).items()
    }
    assert _find_cycle(edges) is None, f"import cycle: {' -> '.join(_find_cycle(edges))}"


def test_no_import_cycle_between_packages():
    edges: dict[str, set[str]] = {}
    for m, targets in _internal(GRAPH).items():
        edges.setdefault(_unit(m), set()).update(_unit(t) for t in targets if _unit(t) != _unit(m))
    assert _find_cycle(edges) is None, f"package cycle: {' -> '.join(_find_cycle(edges))}"


def _importers_of(root: str) -> set[str]:
    return {m for m, ts in GRAPH.items() if any(t == root or t.startswith(root + ".") for t in ts)}


@pytest.mark.parametrize(
    ("library", "allowed"),
    [("ray", ("repair_dist.distributed", "repair_dist.sweep")), ("mlflow", ("repair_dist.sweep",))],
)
def test_only_the_outer_packages_import_ray_and_mlflow(library, allowed):
    offenders = sorted(m for m in _importers_of(library) if not m.startswith(allowed))
    assert not offenders, f"{library} imported outside {allowed}: {offenders}"


def test_models_know_nothing_of_ray_mlflow_or_the_sweep():
    forbidden = ("ray", "mlflow", "repair_dist.sweep", "repair_dist.distributed")
    for m, targets in GRAPH.items():
        if m.startswith("repair_dist.models"):
            bad = sorted(t for t in targets if t.startswith(forbidden))
            assert not bad, f"{m} imports {bad}"


def test_the_checker_sees_imports_inside_functions():
    # Guards the test itself: the executor's lazy import of the Ray pool must be visible.
    assert "repair_dist.distributed" in GRAPH["repair_dist.passes.executor"]
    assert _find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]


def test_the_public_api_loads_lazily_and_results_queries_load_no_torch(tmp_path: Path) -> None:
    """``import repair_dist`` and ``repair-dist results`` start without torch (seconds saved
    on every query); every public name still resolves to the function, not a submodule."""

    code = (
        "import sys\n"
        "import repair_dist as rd\n"
        "from repair_dist.cli import main\n"
        f"main(['results', 'nothing', '--root', {str(tmp_path)!r}])\n"
        "print('torch' in sys.modules)\n"
        "import repair_dist.prune, repair_dist.repair\n"
        "print(callable(rd.prune) and callable(rd.repair) and rd.prune.__module__)\n"
        "import repair_dist.perm as perm\n"
        "print(sorted(rd.__all__) == sorted(rd._API) and sorted(perm.__all__) == sorted(perm._API))\n"
    )
    proc = _fresh_interpreter(code)
    assert proc.stdout.split()[-3:] == ["False", "repair_dist.prune", "True"], proc.stdout


def test_planning_and_validating_a_sweep_load_no_torch(tmp_path: Path) -> None:
    """A finished sweep's rerun only plans (keys from the store and the tables) and exits: the
    command line, the sweep's model, its validation (no model builds) and the runner's planning
    read torch-free catalogs, so it starts in a fraction of a second instead of paying torch's
    import. The studies' configs are on so that their validation and specs are covered too."""

    code = (
        "import sys\n"
        "import repair_dist.cli\n"
        "from repair_dist.location import Location\n"
        "from repair_dist.store import CheckpointStore\n"
        "from repair_dist.sweep.config import ArchGrid, Sweep\n"
        "from repair_dist.sweep.preflight import local_resources\n"
        "from repair_dist.sweep.runner import plan_sweep\n"
        "from repair_dist.sweep.validation import validate_sweep\n"
        "sweep = Sweep.from_dict({'name': 'plan', 'dataset': 'digits', 'seeds': [0, 1, 2],\n"
        "    'archs': [{'model': 'mlp', 'widths': [8, 16], 'depths': [2, None]},\n"
        "              {'model': 'resnet20', 'widths': [1], 'norms': ['bn']}],\n"
        "    'curve': {'epochs': 1}, 'pruning': {'kinds': ['global_l1']},\n"
        "    'merge_many': {'n_models': [3]}, 'optimizer': 'adam', 'residual': 'sum'})\n"
        "resources = local_resources(count_gpus=False)\n"
        "validate_sweep(sweep, cluster_resources=resources, build_models=False)\n"
        f"loc = Location.of({str(tmp_path)!r})\n"
        "plan = plan_sweep(sweep, loc, CheckpointStore(loc.checkpoints))\n"
        "keys = {t.key() for t in plan.trials} | {u.key() for u in plan.units}\n"
        "print(len(plan.train), len(plan.pending), len(plan.units_pending), len(keys))\n"
        "print('torch' in sys.modules, sorted(m for m in sys.modules if m.startswith('torch')))\n"
    )
    proc = _fresh_interpreter(code)
    counts, loaded = proc.stdout.splitlines()[-2:]
    # Nothing stored yet: 5 nets (mlp 2 widths x 2 depths, resnet20) x 3 seeds to train (seed
    # 2 for the 3-net merges); 5 nets x pair (0, 1) x 2 default methods; 5 curves, 15 pruned
    # endpoints and 5 merges of 3; every key distinct.
    assert counts == "15 10 25 35", proc.stdout
    assert loaded == "False []", proc.stdout


def test_the_sweep_drivers_trainables_and_ray_layer_load_no_torch() -> None:
    """The Tune entry points live in a torch-free module (Tune pickles them by reference, so
    the driver imports it), and releasing pools that were never made imports no pool: a sweep
    whose endpoints are all stored runs its driver without torch. The compute behind them
    still answers to its old names there."""

    code = (
        "import sys\n"
        "import repair_dist.sweep.trainables as t\n"
        "from repair_dist.distributed import release_cached_pools\n"
        "release_cached_pools()\n"
        "entry = (t.endpoint_trainable, t.merge_trainable, t.study_trainable)\n"
        "print('torch' in sys.modules, {f.__module__ for f in entry} == {t.__name__})\n"
        "print(t.run_merge_trial.__module__, 'torch' in sys.modules)\n"
    )
    proc = _fresh_interpreter(code)
    assert proc.stdout.split()[-4:] == ["False", "True", "repair_dist.sweep.unit_work", "True"]
