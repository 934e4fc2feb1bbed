"""The package's shape (ARCHITECTURE.md): imports run one way, old public paths keep working, modules stay small.

Every ``import`` statement of ``src/demandkit`` counts, at module level, deferred inside a function, or under
``if TYPE_CHECKING:``: a deferred import hides a cycle from Python but not from a reader.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import demandkit as dk

SOURCE = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "demandkit"

# Layers from the bottom up (ARCHITECTURE.md). A module imports only from strictly lower layers, or from its own
# folder without a cycle. Sibling estimators (blp, mixed_logit) do not import each other.
LAYERS = {
    "exceptions": 0,
    # runtime helpers that every estimator uses; they may raise demandkit's exceptions
    "device": 0.5,
    "memory": 0.5,
    "persistence": 0.5,
    "distributed": 0.5,
    "multistart": 0.5,
    "settings": 0.5,
    "configurations": 1,
    "data": 1,
    "layout": 1,
    "kernels": 2,
    "construction": 3,
    "blp": 4,
    "mixed_logit": 4,
    "integrated": 4,
    "simulation": 5,
    "interfaces": 6,
    # the public surface: the compatibility paths, ``python -m demandkit`` and the package's __init__
    "__main__": 7,
    "frac": 7,
    "montecarlo": 7,
    "replications": 7,
    "": 8,
}

# Old module paths that users import (issue 11): each must still give the same objects.
COMPATIBLE_PATHS = {
    "demandkit.mixed_logit": ["MixedLogit", "MixedLogitResults", "simulate_panel"],
    "demandkit.frac": ["estimate", "FRACResults"],
    "demandkit.montecarlo": ["run", "summarize"],
    "demandkit.replications": ["nevo", "blp", "nevo_problem", "blp_problem", "REPLICATIONS"],
    "demandkit.data": ["NEVO_PRODUCTS_LOCATION", "NEVO_AGENTS_LOCATION", "BLP_PRODUCTS_LOCATION"],
    "demandkit.simulation": ["Simulation", "SimulationResults", "SimulationError"],
    "demandkit.kernels.shares": ["compute_probabilities", "share_jacobian"],
    "demandkit.exceptions": ["DemandkitError", "InvalidDataError", "SpecificationError", "ConvergenceWarning"],
}

PUBLIC_NAMES = {
    "Formulation",
    "Integration",
    "Iteration",
    "MixedLogit",
    "MixedLogitResults",
    "Optimization",
    "Problem",
    "ProblemResults",
    "data",
    "exceptions",
    "replications",
    "__version__",
    "build_ownership",
    "build_blp_instruments",
    "build_differentiation_instruments",
    "build_id_data",
    "frac",
    "montecarlo",
    "OptimalInstrumentResults",
    "Simulation",
    "SimulationResults",
}

LONG_MODULE_LINES = 500
LONG_MODULE_REASON = "Why this module is long:"


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted((SOURCE / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SOURCE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that ``name`` imports (a package counts as its ``__init__``)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            base = base + (node.module.split(".") if node.module else [])
            candidates = [".".join(base + [alias.name]) for alias in node.names]
            targets = [c for c in candidates if c in modules] or [".".join(base)]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _wing(name: str) -> str:
    """The folder (or top-level module) a module belongs to: ``demandkit.blp.problem`` -> ``blp``."""
    parts = name.split(".")[1:]
    return parts[0] if parts else ""


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycles():
    cycle = find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_deferred_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_module_belongs_to_a_layer():
    unknown = sorted({_wing(name) for name in _graph()} - set(LAYERS))
    assert not unknown, f"modules outside every layer of ARCHITECTURE.md: {unknown}; add them to LAYERS"


def test_imports_run_down_the_layers():
    upward = []
    for source, targets in _graph().items():
        for target in targets:
            a, b = _wing(source), _wing(target)
            if a != b and LAYERS[b] >= LAYERS[a]:
                upward.append(f"{source} (layer {LAYERS[a]}) imports {target} (layer {LAYERS[b]})")
    assert not upward, "imports that do not go down the layers:\n" + "\n".join(sorted(upward))


def test_long_modules_say_why():
    long = []
    for name, path in _modules().items():
        text = path.read_text()
        lines = text.count("\n")
        if lines > LONG_MODULE_LINES and LONG_MODULE_REASON not in (ast.get_docstring(ast.parse(text)) or ""):
            long.append(f"{name}: {lines} lines")
    assert not long, f"over {LONG_MODULE_LINES} lines, and the docstring lacks '{LONG_MODULE_REASON}': {long}"


def test_public_names_unchanged():
    assert PUBLIC_NAMES <= set(dk.__all__), f"names no longer exported: {PUBLIC_NAMES - set(dk.__all__)}"
    for name in PUBLIC_NAMES:
        assert getattr(dk, name) is not None


@pytest.mark.parametrize("path", sorted(COMPATIBLE_PATHS))
def test_old_module_paths_still_import(path):
    module = importlib.import_module(path)
    for name in COMPATIBLE_PATHS[path]:
        assert hasattr(module, name), f"{path}.{name} is gone"
    assert importlib.import_module("demandkit.frac").estimate is dk.frac.estimate
    assert importlib.import_module("demandkit.mixed_logit").MixedLogit is dk.MixedLogit
