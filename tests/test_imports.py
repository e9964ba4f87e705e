"""align's import graph, read with ``ast`` from the source (nothing imported): no module imports align inside a
function, and no import circle exists, so that every module loads on its own in any order."""

import ast
from pathlib import Path

ALIGN = Path(__file__).resolve().parents[1] / "align"


def modules() -> dict[str, ast.Module]:
    out = {}
    for path in ALIGN.rglob("*.py"):
        parts = path.relative_to(ALIGN.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text())
    return out


def targets(node, known: set[str]) -> set[str]:
    """The align modules an import statement loads (``from align import world`` -> align.world)."""
    names = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
    found = set()
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name.startswith("align"):
            found.add(name)
    return found


def test_no_function_imports_align_and_no_import_circles():
    mods = modules()
    known = set(mods)
    graph, local = {}, []
    for name, tree in mods.items():
        graph[name] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found = targets(node, known) - {name}
                graph[name] |= found
                if found and node not in tree.body:
                    local.append(f"{name}:{node.lineno}")
    assert not local, f"align imported inside a function: {local}"
    # a circle is a module reachable from itself
    circles = []
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            if m == start:
                circles.append(start)
                break
            if m not in seen:
                seen.add(m)
                todo.extend(graph.get(m, ()))
    # a package's __init__ importing its own submodules is not a circle unless a submodule imports the package back
    assert not circles, f"modules on an import circle: {sorted(circles)}"
