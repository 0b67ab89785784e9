"""Every DVC stage depends on exactly the project modules its command imports.

The closure is read from the source with `ast` (every `import`, also inside functions), so a
new module, or an import moved from one module to another, cannot leave a stage's cache
stale without this test failing."""
import ast
import re
from pathlib import Path

import pytest
import yaml

from conftest import PROJECT_ROOT

SRC = PROJECT_ROOT / "src"
DVC_YAML = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())


def module_file(name: str) -> Path | None:
    """src/ file of a dotted `vitlens...` module name (a package's __init__.py), or None."""
    base = SRC.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported(path: Path, name: str) -> set[str]:
    """Project modules `path` (module `name`) imports, the packages on the way included."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package `path` is in, up level - 1 packages
                pkg = name.split(".")[:None if path.name == "__init__.py" else -1]
                base = ".".join(pkg[:len(pkg) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from pkg import module`
    return {m for m in found if m.split(".")[0] == "vitlens" and module_file(m)}


def data_files(path: Path) -> set[Path]:
    """Files beside module `path` that it names in a string literal (explorer.js, ...): the
    stage reads them at run time, so editing one must rerun it."""
    names = {n.value for n in ast.walk(ast.parse(path.read_text()))
             if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    return {f for f in path.parent.iterdir() if f.suffix != ".py" and f.name in names}


def with_packages(module: str) -> list[str]:
    """`a.b.c` -> [a, a.b, a.b.c]: importing a module runs its packages' __init__ first."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def closure(module: str) -> set[str]:
    todo, seen = with_packages(module), set()
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += [p for i in imported(module_file(m), m) for p in with_packages(i)]
    return seen


def stage_modules(stage: dict) -> str:
    return re.search(r"python -m (\S+)", stage["cmd"]).group(1)


def rel(path: Path) -> str:
    return path.relative_to(PROJECT_ROOT).as_posix()


@pytest.mark.parametrize("name", list(DVC_YAML["stages"]))
def test_stage_deps_are_exactly_the_modules_it_imports(name):
    stage = DVC_YAML["stages"][name]
    files = [module_file(m) for m in closure(stage_modules(stage))]
    want = {rel(f) for f in files} | {rel(d) for f in files for d in data_files(f)}
    listed = {d for d in stage["deps"] if d.startswith("src/")}
    assert not want - listed, f"dvc.yaml stage {name} misses {sorted(want - listed)}"
    assert not listed - want, f"dvc.yaml stage {name} lists unused {sorted(listed - want)}"


def test_closure_follows_lazy_and_package_imports(tmp_path, monkeypatch):
    """The reader itself: an import inside a function and `from pkg import module` count."""
    pkg = tmp_path / "vitlens"
    (pkg / "stages").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "stages" / "__init__.py").write_text("")
    (pkg / "stages" / "s.py").write_text("from vitlens import a\n")
    (pkg / "a.py").write_text("def f():\n    from vitlens.b import g\n")
    (pkg / "b.py").write_text("import numpy\nfrom . import c\n")
    (pkg / "c.py").write_text("")
    (pkg / "unused.py").write_text("")
    monkeypatch.setattr(__import__(__name__), "SRC", tmp_path)
    assert closure("vitlens.stages.s") == {"vitlens", "vitlens.stages", "vitlens.stages.s",
                                           "vitlens.a", "vitlens.b", "vitlens.c"}
    (pkg / "page.js").write_text("")
    (pkg / "other.css").write_text("")
    (pkg / "a.py").write_text('JS = "page.js"\n')
    assert data_files(pkg / "a.py") == {pkg / "page.js"}


@pytest.mark.parametrize("name", list(DVC_YAML["stages"]))
def test_stage_deps_include_the_files_its_command_reads(name):
    stage = DVC_YAML["stages"][name]
    reads = re.findall(r"--(?:data|model) (\S+)", stage["cmd"])
    assert set(reads) <= set(stage["deps"]), f"{name} reads {reads}, deps {stage['deps']}"


# What training must never import: drawing, the explorer, the served model and the registry,
# the commands, the CPU preset. Their edits would otherwise re-run a finished training.
NOT_TRAINING = ("vitlens.plots", "vitlens.report", "vitlens.cli", "vitlens.model.pixels",
                "vitlens.model.trained", "vitlens.tracking.registry", "vitlens.train.preset")


def test_training_imports_no_drawing_serving_or_registry_code():
    found = sorted(m for m in closure("vitlens.stages.train") if m.startswith(NOT_TRAINING))
    assert not found, f"the train stage imports {found}: their edits would re-run training"


def test_no_file_under_plots_report_or_cli_is_a_dependency_of_train():
    """What `dvc status` reads: editing any of these files never lists train."""
    deps = set(DVC_YAML["stages"]["train"]["deps"])
    for folder in ("plots", "report", "cli"):
        files = {rel(f) for f in (SRC / "vitlens" / folder).rglob("*") if f.is_file()}
        assert files and not files & deps, f"train depends on {sorted(files & deps)}"
