"""The house rules, read from the source with `ast`: roles as packages, imports only downward,
nothing imports a stage, nothing reaches into another module's private names."""
import ast
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT

SRC = PROJECT_ROOT / "src" / "vitlens"
# Lower layers never import higher ones; a package may import itself and anything lower.
LAYERS = {"core": 0, "data": 1, "tracking": 1, "plots": 1, "model": 2, "train": 3, "explain": 4,
          "report": 5, "pipeline": 6, "cli": 7, "stages": 8}
# The measurement tools (benches, profiler, GPU check): a top-level package, not installed.
BENCHMARKS = PROJECT_ROOT / "benchmarks"
# What stays at the package root: the helpers every role uses.
CORE = {"__init__", "__main__", "errors", "io", "device"}
CORE_PACKAGES = {"config"}  # the params' schema and loading: used by every role
MAX_LINES = 300


def role(module: str) -> str:
    """`vitlens.explain.maps` -> explain; a top-level module is core."""
    if module == "vitlens.__main__":  # `python -m vitlens`: the cli's entry point
        return "cli"
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in LAYERS else "core"


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) of every vitlens import in `path`, lazy ones too."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vitlens"):
            out.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("vitlens")]
    return out


SOURCES = sorted(SRC.rglob("*.py"))


def test_ls_shows_the_roles():
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(LAYERS) - {"core"} | CORE_PACKAGES
    assert {p.stem for p in SRC.glob("*.py")} == CORE, "a module at the root: give it its role's package"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_imports_run_downward_and_never_into_a_stage_or_a_private_name(path):
    me = module_name(path)
    for module, names, line in imports(path):
        target = role(module if module.count(".") > 1 or not names else f"{module}.{names[0]}")
        if module == "vitlens" and names:  # from vitlens import tracking
            target = role(f"vitlens.{names[0]}.x") if names[0] in LAYERS else "core"
        where = f"{path.relative_to(PROJECT_ROOT)}:{line} imports {module}"
        assert role(me) == "stages" or ".stages" not in f"{module}.{'.'.join(names)}", \
            f"{where}: nothing imports a stage"
        assert LAYERS[target] <= LAYERS[role(me)], f"{where}: {role(me)} must not import {target}"
        private = [n for n in names if n.startswith("_") and n != "__version__"]
        assert not private, f"{where}: private names {private}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_no_module_reaches_into_another_modules_private_attributes(path):
    """`tracking._client()` from outside tracking: an attribute of an imported module."""
    tree = ast.parse(path.read_text())
    modules = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
               and (n.module or "").startswith("vitlens") for a in n.names}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id in modules and node.attr.startswith("_"):
            pytest.fail(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno} uses {node.value.id}.{node.attr}")


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_modules_stay_short(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES, f"{path.name}: split it"


def imported_roots(path: Path) -> set[str]:
    """The top-level names of every module `path` imports, lazy imports too."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and not node.level:
            out.add((node.module or "").split(".")[0])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
    return out


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_nothing_in_the_package_imports_the_benchmarks(path):
    """The installed package must import without benchmarks/, which is not installed."""
    assert "benchmarks" not in imported_roots(path), \
        f"{path.relative_to(PROJECT_ROOT)} imports benchmarks: move what it needs into vitlens"


def test_the_benchmarks_are_a_short_top_level_package_outside_src():
    sources = sorted(BENCHMARKS.rglob("*.py"))
    assert BENCHMARKS / "__init__.py" in sources and BENCHMARKS / "gpucheck" / "__main__.py" in sources
    assert not (SRC / "perf").exists() and not (SRC / "gpucheck").exists()
    assert "benchmarks" in imported_roots(BENCHMARKS / "bench.py")  # the check above can see one
    for path in sources:
        assert len(path.read_text().splitlines()) <= MAX_LINES, f"{path.name}: split it"
