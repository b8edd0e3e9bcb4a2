"""The folders are the layers: what each may import, checked on the source (module-level and
function-level imports alike; `if TYPE_CHECKING:` blocks are annotations, not imports)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support import ROOT

PACKAGES = ("addons", "proxy", "certs")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path, top_level_only: bool = False) -> set[str]:
    """The project modules `path` imports."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if top_level_only and isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.add(child.module)
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m.split(".", 1)[0] in PACKAGES}


MODULES = {
    module_name(p): p
    for package in PACKAGES
    for p in sorted((ROOT / package).rglob("*.py"))
    if "__pycache__" not in p.parts
}


def concern(module: str) -> str:
    """addons.routing.gateway -> addons.routing; addons.chain -> addons.chain; certs.x -> certs."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "addons" else parts[0]


def test_nothing_in_addons_imports_the_program():
    offenders = {
        m: sorted(i for i in imports_of(p) if i.startswith("proxy"))
        for m, p in MODULES.items()
        if m.startswith("addons")
    }
    assert {m: i for m, i in offenders.items() if i} == {}


# What each concern may import besides itself (addons.chain wires them all; addons.engine is
# the reach into mitmproxy, pinned by contract tests).
ALLOWED = {
    "addons.core": {"addons.rules"},
    "addons.rules": set(),
    "addons.developer": {"addons.rules", "certs"},
    "addons.engine": {"addons.core", "addons.rules"},
    "addons.connection": {"addons.core", "addons.rules", "addons.engine"},
    "addons.auth": {"addons.core", "addons.rules", "addons.routing"},
    "addons.egress": {
        "addons.core", "addons.rules", "addons.engine", "addons.routing", "addons.connection",
    },
    "addons.routing": {"addons.core", "addons.rules", "addons.engine"},
    "addons.govern": {"addons.core", "addons.rules", "addons.engine", "addons.routing"},
    "addons.observe": {"addons.core", "addons.rules", "addons.routing"},
    "addons.selfservice": {
        "addons.core", "addons.rules", "addons.developer", "addons.observe", "addons.routing",
        "addons.govern", "certs",
    },
}  # fmt: skip


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_concern_imports_only_what_its_header_allows(layer):
    seen = {
        m: {concern(i) for i in imports_of(p)} - {layer} - ALLOWED[layer]
        for m, p in MODULES.items()
        if concern(m) == layer
    }
    assert {m: sorted(c) for m, c in seen.items() if c} == {}


def test_routing_is_read_by_others_only_through_its_snapshot_and_shared_stores():
    """Other concerns may hold the routing snapshot (which hosts are routed) and the profile
    store, never the router's or the rules' internals."""
    shared = {"addons.routing.snapshot", "addons.routing.rules", "addons.routing.profile_store"}
    seen = {
        m: {i for i in imports_of(p) if i.startswith("addons.routing.")} - shared
        for m, p in MODULES.items()
        if concern(m) not in ("addons.routing", "addons.chain")
    }
    assert {m: sorted(c) for m, c in seen.items() if c} == {}


def test_no_module_imports_itself_back_at_import_time():
    graph = {m: imports_of(p, top_level_only=True) & set(MODULES) for m, p in MODULES.items()}
    cycles = []

    def walk(node: str, path: list[str], on_path: set[str], done: set[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in on_path:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in done:
                on_path.add(nxt)
                walk(nxt, [*path, nxt], on_path, done)
                on_path.discard(nxt)
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            walk(start, [start], {start}, done)
    assert cycles == []
