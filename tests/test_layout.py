"""The package layout is the architecture: imports only point down, and nothing imports in a circle.

The import graph is read from the source (every ``import`` statement, including ones inside
functions), so a lazy import cannot hide an upward arrow or a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "eft_local"

# Lower numbers are lower layers. A module may import from a lower layer and from its own
# package; never from a higher layer, and never from another package of the same layer
# (front ends don't import each other; the engine and the model catalogue are independent).
LAYERS = {
    "eft_local.errors": 0,
    "eft_local.settings": 1,
    "eft_local.mix": 2,  # pure NumPy over logit rows: no model
    "eft_local.llama": 3,  # everything that talks to llama.cpp
    "eft_local.engine": 4,  # decoding, scheduling, sessions
    "eft_local.models": 4,  # profiles and downloads
    "eft_local.batch": 5,  # front ends
    "eft_local.server": 5,
    "eft_local.tui": 5,
    "eft_local.cli": 6,  # parses arguments, launches the front ends
    "eft_local": 7,  # the public API (lazy re-exports) and __main__
}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit(module: str) -> str:
    """The layer unit a module belongs to: its sub-package, or a top-level module."""
    parts = module.split(".")
    if len(parts) >= 2 and ".".join(parts[:2]) in LAYERS:
        return ".".join(parts[:2])
    return "eft_local"


def imports_of(path: Path, modules: set[str], root: Path = ROOT) -> set[str]:
    """The eft_local modules ``path`` imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            submodules = {f"{target}.{a.name}" for a in node.names} & modules
            found |= submodules
            if len(submodules) < len(node.names):  # names defined in the module itself
                found.add(target)
    return {m for m in found if m in modules and m != me}


def graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imports_of(f, modules) for f in files}


def test_every_package_has_a_layer():
    packages = {unit(m) for m in graph()}
    assert packages <= set(LAYERS), f"add {sorted(packages - set(LAYERS))} to LAYERS"


def test_imports_only_point_down():
    wrong = []
    for module, targets in graph().items():
        src = unit(module)
        for target in targets:
            dst = unit(target)
            if dst == src or target == "eft_local":
                continue  # inside one package (eft_local itself: only its own submodules)
            if LAYERS[dst] >= LAYERS[src]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(sorted(wrong))


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as a list of modules, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circles():
    cycle = find_cycle(graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_scripts_have_no_import_circles():
    scripts = {p.stem: p for p in (ROOT / "scripts").glob("*.py")}
    edges = {}
    for name, path in scripts.items():
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        edges[name] = {n for n in names if n in scripts and n != name}
    cycle = find_cycle(edges)
    assert cycle is None, "import circle in scripts/: " + " -> ".join(cycle)


@pytest.mark.parametrize(
    "edges, circle",
    [
        ({"a": {"b"}, "b": {"a"}}, True),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
        ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, False),
    ],
)
def test_the_circle_finder_finds_circles(edges, circle):
    assert (find_cycle(edges) is not None) == circle


def test_the_layer_check_sees_an_upward_import(tmp_path):
    """A lower layer importing a higher one (here: mix importing the engine, lazily) is seen."""
    fake = tmp_path / "eft_local"
    (fake / "mix").mkdir(parents=True)
    (fake / "engine").mkdir()
    for f in ("__init__.py", "mix/__init__.py", "engine/__init__.py", "engine/decoder.py"):
        (fake / f).write_text("")
    (fake / "mix" / "sampling.py").write_text("def f():\n    from eft_local.engine import decoder\n")
    modules = {module_name(f, tmp_path) for f in fake.rglob("*.py")}
    got = imports_of(fake / "mix" / "sampling.py", modules, tmp_path)
    assert "eft_local.engine.decoder" in got
    assert LAYERS[unit("eft_local.engine.decoder")] > LAYERS[unit("eft_local.mix.sampling")]
