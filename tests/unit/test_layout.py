"""The package's import rules, checked on the source (an ast walk: nothing is imported, no MPI).

The rules (docs/ARCHITECTURE.md draws them):
- ``ftmpi.core`` is pure: no MPI, no files, no processes or threads, no clock; it may import numpy, the
  kernels, ``ftmpi.errors``, ``ftmpi.config`` and itself.
- Only the MPI boundary (``ftmpi.comm``, ``ftmpi.job``) imports ``mpi4py``.
- The coordinator and the worker never import each other.
- Storage, model, launch, observe and the kernels import neither the coordinator, the worker, the MPI
  boundary nor the command line.
- No import cycle between modules, counting the imports inside functions (only ``if TYPE_CHECKING:`` imports,
  which never run, are left out).
- At most ten modules at the top of ``ftmpi/``; each subpackage's ``__init__`` is a docstring that says what it
  owns and may import, and imports nothing (importing a package costs nothing).
"""
from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

BOUNDARY = {"ftmpi.comm", "ftmpi.job"}
CORE_MAY_IMPORT = ("ftmpi.core", "ftmpi.kernels", "ftmpi.errors", "ftmpi.config")
# what core must not reach: MPI, files and processes, threads and signals, the clock
CORE_FORBIDDEN_STDLIB = {"mpi4py", "h5py", "os", "io", "pathlib", "shutil", "tempfile", "mmap", "socket",
                         "subprocess", "threading", "multiprocessing", "signal", "time", "datetime"}
LEAVES = ("ftmpi.storage", "ftmpi.model", "ftmpi.launch", "ftmpi.observe", "ftmpi.kernels")
RUNTIME = ("ftmpi.coordinator", "ftmpi.worker", "ftmpi.comm", "ftmpi.job", "ftmpi.cli")


def module_files() -> dict[str, tuple[Path, bool]]:
    """Every module of the installed package by its dotted name (``kernels/`` installs as ``ftmpi.kernels``),
    with its file and whether it is a package."""
    out = {}
    for p in [*ROOT.glob("ftmpi/**/*.py"), *ROOT.glob("kernels/*.py")]:
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[0] == "kernels":
            parts = ["ftmpi", *parts]
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for b in node.body for n in ast.walk(b)}
    return skip


def imports_of(source: str, name: str, is_pkg: bool, known: Iterable[str]) -> set[str]:
    """The modules ``source`` (module ``name``) imports anywhere in its body, relative imports resolved and
    ``from package import module`` taken as the module."""
    known = set(known)
    tree = ast.parse(source)
    skip = _type_checking_nodes(tree)
    package = name if is_pkg else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            for a in node.names:
                out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    return out


def graph() -> dict[str, set[str]]:
    files = module_files()
    return {n: imports_of(p.read_text(), n, pkg, files) for n, (p, pkg) in files.items()}


def _under(mod: str, prefixes: Iterable[str]) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in prefixes)


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in g:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def violations(g: dict[str, set[str]]) -> list[str]:
    """Every broken rule, one line each ("importer -> imported: rule")."""
    bad = []
    for mod, deps in sorted(g.items()):
        for dep in sorted(deps):
            top = dep.split(".")[0]
            if top == "mpi4py" and mod not in BOUNDARY:
                bad.append(f"{mod} -> {dep}: only {sorted(BOUNDARY)} import mpi4py")
            if _under(mod, ["ftmpi.core"]):
                if top in CORE_FORBIDDEN_STDLIB:
                    bad.append(f"{mod} -> {dep}: ftmpi.core does no I/O, no MPI and reads no clock")
                elif top == "ftmpi" and not _under(dep, CORE_MAY_IMPORT):
                    bad.append(f"{mod} -> {dep}: ftmpi.core imports only {', '.join(CORE_MAY_IMPORT)}")
            if _under(mod, ["ftmpi.worker"]) and _under(dep, ["ftmpi.coordinator"]) or \
                    _under(mod, ["ftmpi.coordinator"]) and _under(dep, ["ftmpi.worker"]):
                bad.append(f"{mod} -> {dep}: the coordinator and the worker never import each other")
            if _under(mod, LEAVES) and _under(dep, RUNTIME):
                bad.append(f"{mod} -> {dep}: {mod.split('.')[1]} is below the runtime ({', '.join(RUNTIME)})")
    for comp in cycles({m: {d for d in deps if d.startswith("ftmpi")} for m, deps in g.items()}):
        bad.append("import cycle: " + " <-> ".join(comp))
    return bad


def test_the_package_keeps_its_import_rules():
    assert violations(graph()) == []


def test_the_rules_catch_each_kind_of_break():
    """The checker itself: a graph with one break of each rule gives one line for each."""
    g = {
        "ftmpi.core.cluster": {"time", "ftmpi.core.protocol"},
        "ftmpi.core.protocol": {"ftmpi.storage.shards"},
        "ftmpi.storage.shards": {"h5py", "ftmpi.coordinator.driver"},
        "ftmpi.coordinator.driver": {"ftmpi.comm", "ftmpi.worker.loop"},
        "ftmpi.worker.loop": {"ftmpi.comm", "mpi4py"},
        "ftmpi.comm": {"mpi4py"},
        "ftmpi.cli": {"ftmpi.launch.launcher"},
        "ftmpi.launch.launcher": {"ftmpi.cli"},
    }
    bad = violations(g)
    assert any(b.startswith("ftmpi.core.cluster -> time") for b in bad)
    assert any(b.startswith("ftmpi.core.protocol -> ftmpi.storage.shards") for b in bad)
    assert any(b.startswith("ftmpi.storage.shards -> ftmpi.coordinator.driver") for b in bad)
    assert any(b.startswith("ftmpi.coordinator.driver -> ftmpi.worker.loop") for b in bad)
    assert any(b.startswith("ftmpi.worker.loop -> mpi4py") for b in bad)
    assert "import cycle: ftmpi.cli <-> ftmpi.launch.launcher" in bad
    assert not any(b.startswith("ftmpi.comm") for b in bad)


def test_imports_are_resolved_as_python_resolves_them():
    known = {"ftmpi.core.protocol", "ftmpi.kernels", "ftmpi.core.cluster"}
    src = ("from . import protocol as P\nfrom ftmpi import kernels as K\nfrom .cluster import X\n"
           "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import mpi4py\n"
           "def f():\n    import h5py\n")
    assert imports_of(src, "ftmpi.core.events", False, known) == \
        {"ftmpi.core.protocol", "ftmpi.kernels", "ftmpi.core.cluster", "typing", "h5py"}


def test_the_top_level_is_small_and_every_subpackage_says_what_it_owns():
    top = sorted(p.name for p in (ROOT / "ftmpi").glob("*.py"))
    assert len(top) <= 10, top
    for init in sorted((ROOT / "ftmpi").glob("*/__init__.py")):
        tree = ast.parse(init.read_text())
        doc = ast.get_docstring(tree)
        assert doc and "import" in doc.lower(), f"{init}: the docstring says what it owns and may import"
        assert not [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))], \
            f"{init} imports something; a subpackage's __init__ is its docstring only"
