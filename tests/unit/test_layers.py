"""The package's layers: which part of ``exchange`` may import which, and no import circles.

Bottom to top: the top-level leaves (``errors``, ``stix``, ``config``, ``_yaml``), ``policy``
(pure), ``storage``, ``node`` (the TAXII server), ``sharing`` (the flow between partners),
``demo``, ``cli``. A module may import its own layer and those below it, never one above.
Every import counts, also one inside a function: a deferred import is still a dependency.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "exchange"

LAYERS = ["leaf", "policy", "storage", "node", "sharing", "demo", "cli"]
LEAVES = {"exchange", "exchange.errors", "exchange.stix", "exchange.config", "exchange._yaml"}

#: Third-party packages that only one part of the package may use.
CONFINED = {
    "taxii2client": {"exchange.sharing.client"},
    "medallion": {"node"},
    "flask": {"node", "sharing"},  # sharing.background wires the release onto the node's app
    "gunicorn": {"node"},
    "click": {"cli"},
}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    """The layer a module of ``exchange`` belongs to."""
    if module in LEAVES or module == "exchange.__main__":
        return "cli" if module == "exchange.__main__" else "leaf"
    part = module.split(".")[1]
    if part in LAYERS:
        return part
    raise AssertionError(f"{module}: not in any layer; add it to a subpackage or to LEAVES")


def imports_of(path: Path, module: str) -> set[str | tuple[str, str]]:
    """Every module ``path`` imports, at module level or inside functions (absolute names).

    ``from A import B`` is the pair ``(A, A.B)``: it imports module ``A.B`` if there is one, else ``A``.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.update((base, f"{base}.{alias.name}") for alias in node.names)
    return found


@functools.cache
def _parsed() -> dict[str, set[str | tuple[str, str]]]:
    """Every module of the package (migration scripts left out: Alembic loads them) -> its imports, parsed once."""
    return {module_name(p): imports_of(p, module_name(p)) for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts}


def graph() -> dict[str, set[str]]:
    """Module -> the ``exchange`` modules it imports (a fresh copy: tests may add edges)."""
    files = _parsed()
    out: dict[str, set[str]] = {}
    for mod, found in files.items():
        names = {(m[1] if m[1] in files else m[0]) if isinstance(m, tuple) else m for m in found}
        out[mod] = {m for m in names if m in files and m != mod}
    return out


def third_party(mod: str) -> set[str]:
    return {(m[0] if isinstance(m, tuple) else m).split(".")[0] for m in _parsed()[mod]}


def upward_imports(g: dict[str, set[str]]) -> list[str]:
    """``a -> b`` for every import of a higher layer by a lower one."""
    bad = []
    for mod, deps in sorted(g.items()):
        for dep in sorted(deps):
            if LAYERS.index(layer_of(dep)) > LAYERS.index(layer_of(mod)):
                bad.append(f"{mod} ({layer_of(mod)}) -> {dep} ({layer_of(dep)})")
    return bad


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
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
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_lower_layer_imports_a_higher_one():
    assert upward_imports(graph()) == []


def test_there_are_no_import_circles():
    assert cycles(graph()) == []


def test_each_subpackage_is_a_regular_package_that_says_what_it_owns():
    for part in ("node", "storage", "policy", "sharing", "cli", "demo"):
        init = PACKAGE / part / "__init__.py"
        assert init.is_file(), f"exchange/{part} has no __init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and "import" in doc, f"exchange/{part}/__init__.py should say what it owns and may import"


def test_the_top_level_holds_only_shared_leaves():
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top <= {"__init__", "__main__", "errors", "stix", "config", "_yaml"}


@pytest.mark.parametrize("library", sorted(CONFINED))
def test_third_party_frameworks_stay_in_their_layer(library):
    allowed = CONFINED[library]
    for mod in graph():
        if library in third_party(mod):
            assert mod in allowed or layer_of(mod) in allowed, f"{mod} imports {library}; only {sorted(allowed)} may"


def test_the_policy_engine_is_pure():
    for mod in ("exchange.policy.engine", "exchange.policy.markings", "exchange.policy.inbound"):
        used = third_party(mod)
        assert not used & {"flask", "medallion", "requests", "sqlalchemy", "taxii2client", "os", "socket", "pathlib"}, mod


def test_the_checks_catch_a_forbidden_import_and_a_circle():
    g = graph()
    g["exchange.storage.store"] = g["exchange.storage.store"] | {"exchange.sharing.release"}
    assert "exchange.storage.store (storage) -> exchange.sharing.release (sharing)" in upward_imports(g)
    assert any("exchange.storage.store" in c and "exchange.sharing.release" in c for c in cycles(g))
