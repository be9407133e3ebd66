"""The layout as ARCHITECTURE.md draws it: what each package may import, no import cycle, modules of one size.

Imports are read from the source (also those inside function bodies); only `if TYPE_CHECKING:` blocks,
which never run, are left out.
"""

from __future__ import annotations

import ast
import os
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FOLDERS = {"xos": "xos", "xos.fs": "fs", "xos.checkpoint": "checkpoint", "xos._native": "native"}
CORE = ("xos", "xos.errors", "xos.units", "xos.log", "xos.sqlite", "xos.pg", "xos.leader", "xos.paths",
        "xos.allocation", "xos.systemd", "xos.lifecycle", "xos.stores")

# Package -> the packages it may import besides itself and the core. Listed from the bottom up.
ALLOWED: dict[str, set[str]] = {
    "xos._native": set(),
    "xos.wire": set(),
    "xos.kernel": {"xos._native"},
    "xos.identity": {"xos.wire", "xos.kernel"},
    "xos.vo": {"xos.wire", "xos.identity"},
    "xos.checkpoint": {"xos.wire", "xos.kernel", "xos._native"},
    "xos.fs": {"xos.wire", "xos.kernel", "xos.identity", "xos.vo", "xos._native"},
    "xos.node": {"xos.wire", "xos.kernel", "xos.identity", "xos.vo", "xos.checkpoint", "xos._native"},
    "xos.aem": {"xos.wire", "xos.identity", "xos.vo", "xos.checkpoint", "xos.fs"},
    "xos.testing": {"xos.wire", "xos.kernel", "xos.identity", "xos.vo", "xos.checkpoint", "xos.fs", "xos.node",
                    "xos.aem"},
    "xos.demo": {"xos.wire", "xos.kernel", "xos.identity", "xos.vo", "xos.checkpoint", "xos.fs", "xos.node",
                 "xos.aem", "xos.testing"},
    "xos.__main__": {"xos.cli"},
    "xos.cli": {"xos.wire", "xos.kernel", "xos.identity", "xos.vo", "xos.checkpoint", "xos.fs", "xos.node",
                "xos.aem"},
}
# Inside the file system: the three sides share only fs's top-level modules.
FS_SIDES = ("xos.fs.mrc", "xos.fs.osd", "xos.fs.client")


def modules() -> dict[str, str]:
    """Every Python module of the product: dotted name -> file."""
    out = {}
    for pkg, folder in FOLDERS.items():
        base = os.path.join(ROOT, folder)
        for dirpath, dirnames, files in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith((".", "__"))]
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(dirpath, f), base)[:-3].split(os.sep)
                    if rel[-1] == "__init__":
                        rel = rel[:-1]
                    if pkg == "xos" and rel and rel[0] in ("fs", "checkpoint", "_native"):
                        continue
                    out[".".join([pkg, *rel])] = os.path.join(dirpath, f)
    return out


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(name: str, path: str, known: dict[str, str]) -> set[str]:
    """The product modules `name` imports at run time, wherever in the file."""
    with open(path) as f:
        tree = ast.parse(f.read())
    is_pkg = path.endswith("__init__.py")
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking(node):
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("xos"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("xos"):
                for a in node.names:
                    found.add(f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in known}


def package(mod: str) -> str:
    """The package whose rules `mod` follows."""
    if mod in CORE:
        return "core"
    for pkg in sorted(ALLOWED, key=len, reverse=True):
        if mod == pkg or mod.startswith(pkg + "."):
            return pkg
    raise AssertionError(f"{mod} belongs to no package of ARCHITECTURE.md")


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports(m, p, known) - {m} for m, p in known.items()}


def test_every_module_belongs_to_a_package() -> None:
    for m in modules():
        package(m)


def upward(g: dict[str, set[str]]) -> list[str]:
    """Each import in `g` that its package may not make."""
    wrong = []
    for mod, deps in g.items():
        pkg = package(mod)
        for d in deps:
            dpkg = package(d)
            if dpkg != "core" and dpkg != pkg and (pkg == "core" or dpkg not in ALLOWED[pkg]):
                wrong.append(f"{mod} imports {d}")
    return sorted(wrong)


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of `g`: its strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                strong(w)
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

    for v in list(g):
        if v not in index:
            strong(v)
    return found


def test_nothing_imports_upward() -> None:
    wrong = upward(graph())
    assert not wrong, "\n".join(wrong)


def test_the_file_systems_sides_share_only_its_common_modules() -> None:
    wrong = []
    for mod, deps in graph().items():
        side = next((s for s in FS_SIDES if mod == s or mod.startswith(s + ".")), None)
        for d in deps:
            other = next((s for s in FS_SIDES if d == s or d.startswith(s + ".")), None)
            if mod.startswith("xos.fs") and other is not None and other != side:
                wrong.append(f"{mod} imports {d}")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycle() -> None:
    found = cycles(graph())
    assert not found, found


def test_the_checks_see_a_cycle_an_upward_import_and_a_deferred_one(tmp_path: Any) -> None:
    assert cycles({"xos.node.a": {"xos.node.b"}, "xos.node.b": {"xos.node.c"}, "xos.node.c": {"xos.node.a"}}) \
        == [["xos.node.a", "xos.node.b", "xos.node.c"]]
    assert not cycles({"xos.node.a": {"xos.node.b"}, "xos.node.b": set()})
    assert upward({"xos.kernel.spawn": {"xos.node.service"}, "xos.node.service": {"xos.kernel.spawn"},
                   "xos.errors": {"xos.wire.client"}}) == ["xos.errors imports xos.wire.client",
                                                          "xos.kernel.spawn imports xos.node.service"]
    src = tmp_path / "m.py"
    src.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from xos.node import service\n"
                   "def f():\n    from xos.aem import jobs\n")
    known = {"xos.node.service": "", "xos.aem.jobs": "", "xos.kernel.m": ""}
    assert imports("xos.kernel.m", str(src), known) == {"xos.aem.jobs"}


def test_modules_stay_one_concept_in_size() -> None:
    """No Python module over 600 lines, no C file over 800 (the Cython output, generated, aside)."""
    big = []
    for folder in ("xos", "fs", "checkpoint", "native", "pam"):
        for dirpath, dirnames, files in os.walk(os.path.join(ROOT, folder)):
            dirnames[:] = [d for d in dirnames if not d.startswith((".", "__"))]
            for f in files:
                limit = 600 if f.endswith(".py") else 800 if f.endswith((".c", ".h", ".pyx")) else None
                if limit is None or f == "cgstat.c":
                    continue
                with open(os.path.join(dirpath, f)) as fh:
                    n = sum(1 for _ in fh)
                if n > limit:
                    big.append(f"{os.path.relpath(os.path.join(dirpath, f), ROOT)}: {n} lines (at most {limit})")
    assert not big, big
