"""The package's architecture, checked from its source: no import cycles, dependencies point one way.

Every ``import`` statement of every module counts, including those inside functions (an
import deferred into a method still ties the two modules together). The tiers, lowest first:

    errors, version, atomic, quiet -> masking, quiet_peft -> pooling, precision, scope, hub -> config -> files -> tokens, compat -> runtime
    -> model -> wings (training, adapters, evaluation, serving) -> cli -> the package itself

A module may import a module of a lower tier, or a module of its own wing. A wing may use
another wing only through that wing's ``__init__`` (its public names), never a module inside it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "gem_adapter"

CORE_TIERS: dict[str, int] = {
    "errors": 0,
    "version": 0,
    "atomic": 0,
    "quiet": 0,
    "quiet_peft": 1,
    "masking": 1,
    "pooling": 2,
    "scope": 2,
    "precision": 2,
    "hub": 2,
    "config": 3,
    "files": 4,
    "tokens": 5,
    "compat": 5,
    "runtime": 6,
    "model": 7,
}
WINGS = ("training", "adapters", "evaluation", "serving")
WING_TIER = 8
CLI_TIER = 9
PACKAGE_TIER = 10


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under ``root``."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join([package, *parts])] = path
    return names


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of the package that ``name`` imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from . import runtime` names a module; `from .model import GEMModel` a name in one
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    names = module_names(root, package)
    return {name: imported_modules(name, path, set(names)) for name, path in names.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def tier_of(name: str) -> tuple[int, str | None]:
    """(tier, wing or None) of a dotted module name of gem_adapter."""
    parts = name.split(".")[1:]
    if not parts:
        return PACKAGE_TIER, None
    if parts[0] in CORE_TIERS and len(parts) == 1:
        return CORE_TIERS[parts[0]], None
    if parts[0] in WINGS:
        return WING_TIER, parts[0]
    if parts[0] == "cli":
        return CLI_TIER, "cli"
    raise AssertionError(f"{name} is in no tier; add it to CORE_TIERS or put it in a wing")


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for importer, targets in sorted(graph.items()):
        importer_tier, importer_group = tier_of(importer)
        for target in sorted(targets):
            target_tier, target_group = tier_of(target)
            if importer_group is not None and importer_group == target_group:
                continue  # inside one wing (or inside cli)
            if importer_group in WINGS and target_group in WINGS:
                if target != f"gem_adapter.{target_group}":
                    problems.append(f"{importer} reaches into another wing's module {target}; import from its __init__")
            elif target_tier >= importer_tier:
                problems.append(f"{importer} (tier {importer_tier}) imports {target} (tier {target_tier})")
    return problems


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph(PACKAGE_ROOT, "gem_adapter"))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_lower_modules_never_import_higher_ones():
    assert layering_violations(import_graph(PACKAGE_ROOT, "gem_adapter")) == []


def test_every_module_has_a_tier():
    for name in module_names(PACKAGE_ROOT, "gem_adapter"):
        tier_of(name)  # raises for a module nobody placed


def test_a_wing_uses_another_wing_only_through_its_public_names():
    graph = import_graph(PACKAGE_ROOT, "gem_adapter")
    for importer, targets in graph.items():
        _, group = tier_of(importer)
        for target in targets:
            _, target_group = tier_of(target)
            if group in WINGS and target_group in WINGS and group != target_group:
                assert target == f"gem_adapter.{target_group}", f"{importer} imports {target}"


# ---- the checks themselves must be able to fail: a synthetic package with the faults


def write_package(root: Path, files: dict[str, str]) -> Path:
    package = root / "gem_adapter"
    for relative, source in files.items():
        path = package / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return package


def test_the_cycle_check_finds_a_cycle_through_a_deferred_import(tmp_path):
    package = write_package(tmp_path, {
        "__init__.py": "",
        "model.py": "def f():\n    from .adapters import merge\n",
        "adapters/__init__.py": "from .merge import merge\n",
        "adapters/merge.py": "from ..model import f\n",
    })
    cycle = find_cycle(import_graph(package, "gem_adapter"))
    assert cycle is not None and cycle[0] == cycle[-1]
    assert {"gem_adapter.model", "gem_adapter.adapters.merge"} <= set(cycle)


@pytest.mark.parametrize(("files", "expected"), [
    ({"config.py": "from . import model\n", "model.py": ""}, "gem_adapter.config (tier 3) imports gem_adapter.model"),
    ({"runtime.py": "def f():\n    from .model import GEMModel\n", "model.py": ""}, "gem_adapter.runtime (tier 6)"),
    ({"model.py": "from .training.run import train\n", "training/__init__.py": "", "training/run.py": ""},
     "gem_adapter.model (tier 7) imports gem_adapter.training.run"),
    ({"adapters/__init__.py": "", "adapters/describe.py": "from ..training.trainer import x\n",
      "training/__init__.py": "", "training/trainer.py": ""}, "reaches into another wing's module"),
    ({"training/__init__.py": "", "training/run.py": "from ..cli import main\n", "cli/__init__.py": ""},
     "gem_adapter.training.run (tier 8) imports gem_adapter.cli"),
])
def test_the_layer_check_names_an_upward_import(tmp_path, files, expected):
    package = write_package(tmp_path, {"__init__.py": "", **files})
    problems = layering_violations(import_graph(package, "gem_adapter"))
    assert any(expected in problem for problem in problems), problems


def test_imports_inside_one_wing_and_downward_are_allowed(tmp_path):
    package = write_package(tmp_path, {
        "__init__.py": "from .model import GEMModel\nfrom .training import train\n",
        "errors.py": "", "model.py": "from .errors import GEMError\n",
        "training/__init__.py": "from .run import train\n",
        "training/run.py": "from .trainer import GEMTrainer\nfrom ..model import GEMModel\n",
        "training/trainer.py": "",
        "adapters/__init__.py": "from ..training import train\n",
    })
    graph = import_graph(package, "gem_adapter")
    assert find_cycle(graph) is None
    assert layering_violations(graph) == []
