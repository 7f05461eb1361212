"""The package's layering, read from the source: who may import whom, and no MPI where none belongs.

Layers, lowest first (a module imports only its own layer and those below):

0. ``errors``, ``env``
1. ``decomp.partition``, ``slurm``, ``observe``, ``launch.command``, ``launch.variables``, ``launch.family``,
   ``launch.ledger``: pure geometry, the Slurm client and in-job state, timing/progress/logs, the launch
   command builder, the launcher's variables and the run ledger (these import no MPI at all)
2. ``core``: Context and its checked collectives, runner, watchdog
3. ``decomp`` (grid, sort), ``tasks``, ``io``
4. ``launch``, ``testing``, ``bench``, ``cli``

These tests read the import statements with :mod:`ast`; they run nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "hpcpar"

LAYERS: list[tuple[int, str]] = [  # (layer, module prefix); the longest matching prefix wins
    (0, "hpcpar.errors"), (0, "hpcpar.env"),
    (1, "hpcpar.decomp.partition"), (1, "hpcpar.slurm"), (1, "hpcpar.observe"),
    (1, "hpcpar.launch.command"), (1, "hpcpar.launch.variables"), (1, "hpcpar.launch.family"),
    (1, "hpcpar.launch.ledger"),
    (2, "hpcpar.core"),
    (3, "hpcpar.decomp"), (3, "hpcpar.tasks"), (3, "hpcpar.io"),
    (4, "hpcpar.launch"), (4, "hpcpar.testing"), (4, "hpcpar.bench"), (4, "hpcpar.cli"),
    (4, "hpcpar.__main__"),
]

#: Modules that never import mpi4py's MPI at import time (they run on login nodes,
#: in the launcher, or in any pytest session).
NO_MPI_AT_IMPORT = ("hpcpar.errors", "hpcpar.env", "hpcpar.decomp.partition", "hpcpar.slurm",
                    "hpcpar.observe", "hpcpar.launch", "hpcpar.cli", "hpcpar.testing.plugin",
                    "hpcpar.bench")
#: Modules that never import MPI at all, not even inside a function.
NO_MPI_EVER = ("hpcpar.env", "hpcpar.decomp.partition", "hpcpar.slurm", "hpcpar.launch")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _layer(module: str) -> int | None:
    best = None
    for layer, prefix in LAYERS:
        if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[1])):
            best = (layer, prefix)
    return None if best is None else best[0]


def _imports(module: str) -> list[tuple[str, list[str], bool, int]]:
    """(imported module, imported names, at module top level, line) for every import in ``module``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    found.append((alias.name, [], top, child.lineno))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[:len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                names = [a.name for a in child.names]
                if any(f"{target}.{name}" in MODULES for name in names):  # from .x import module
                    for name in names:
                        sub = f"{target}.{name}"
                        found.append((sub if sub in MODULES else target, [] if sub in MODULES else [name],
                                      top, child.lineno))
                else:
                    found.append((target, names, top, child.lineno))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                continue  # imports for type checkers only
            else:
                visit(child, top)

    visit(tree, True)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


LAYERED = [m for m in MODULES if _layer(m) is not None]


@pytest.mark.parametrize("module", LAYERED)
def test_a_module_imports_only_its_own_layer_and_lower(module):
    mine = _layer(module)
    wrong = []
    for target, _names, _top, line in _imports(module):
        if not target.startswith("hpcpar"):
            continue
        theirs = _layer(target)
        if theirs is not None and theirs > mine:
            wrong.append(f"line {line}: {target} (layer {theirs})")
    assert not wrong, f"{module} (layer {mine}) imports a higher layer: " + ", ".join(wrong)


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith(NO_MPI_AT_IMPORT) or m == "hpcpar.testing"])
def test_login_node_modules_import_no_mpi_at_import_time(module):
    ever = module.startswith(NO_MPI_EVER)
    bad = [f"line {line}" for target, names, top, line in _imports(module)
           if (top or ever) and (target == "mpi4py.MPI" or (target == "mpi4py" and "MPI" in names))]
    assert not bad, f"{module} imports mpi4py.MPI ({', '.join(bad)})" + (
        "" if ever else "; import it inside the function that needs it")


@pytest.mark.parametrize("module", list(MODULES))
def test_no_module_imports_another_modules_private_names(module):
    wrong = []
    hp_modules: set[str] = set()
    for target, names, _top, line in _imports(module):
        if not target.startswith("hpcpar") or target == module:
            continue
        wrong += [f"line {line}: {target}.{n}" for n in names
                  if n.startswith("_") and not n.startswith("__")]
    tree = ast.parse(MODULES[module].read_text())
    for node in ast.walk(tree):  # `from . import output` ... `output._agree`
        if isinstance(node, ast.ImportFrom) and node.level and not node.module:
            hp_modules.update(a.asname or a.name for a in node.names)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in hp_modules and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            wrong.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    assert not wrong, f"{module} uses private names of other modules: " + ", ".join(wrong)


def test_every_module_is_in_a_layer():
    assert [m for m in MODULES if m != "hpcpar" and _layer(m) is None] == []


def test_no_module_is_over_500_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 560}
    assert not long, f"split these modules (one concept each): {long}"


def _public_functions(tree: ast.Module):
    """Public functions and methods of public classes: (qualified name, node)."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            yield node.name, node
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
                        not item.name.startswith("_") or item.name == "__init__"):
                    yield f"{node.name}.{item.name}", item


@pytest.mark.parametrize("module", [m for m in MODULES if not m.rpartition(".")[2].startswith("_")
                                    or m.endswith("__main__")])
def test_every_public_signature_is_annotated(module):
    tree = ast.parse(MODULES[module].read_text())
    missing = []
    for name, fn in _public_functions(tree):
        args = fn.args
        params = [*args.posonlyargs, *args.args, *args.kwonlyargs]
        if params and params[0].arg in ("self", "cls"):
            params = params[1:]
        params += [a for a in (args.vararg, args.kwarg) if a is not None]
        bare = [a.arg for a in params if a.annotation is None]
        if fn.returns is None and fn.name != "__init__":
            bare.append("return")
        if bare:
            missing.append(f"{name}({', '.join(bare)})")
    assert not missing, f"{module}: annotate " + "; ".join(missing)
