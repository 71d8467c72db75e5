"""The shape of harness/: commands -> pipeline -> stages -> config/store, at most 4 floors.

The import graph is read with `ast` from harness/*.py: every `import harness.x` and
`from harness(.x) import ...`, at module level and inside functions (a function-level import
is a dependency too, only a later one). Imports under `if TYPE_CHECKING:` are left out: they
never run. A module's floor is the length (in imports) of the longest chain of harness
imports that starts at it: a module importing nothing of harness is on the ground floor (0).
"""
from __future__ import annotations

import ast
import functools
from pathlib import Path

HARNESS = Path(__file__).resolve().parents[2] / "harness"
MAX_FLOOR = 4


def _type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _imports(tree: ast.AST, modules: set[str]) -> set[str]:
    """Harness modules imported anywhere in `tree` except under `if TYPE_CHECKING:`."""
    found: set[str] = set()
    for node in ast.iter_child_nodes(tree):
        if _type_checking_block(node):
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "harness":
                found |= {a.name for a in node.names if a.name in modules}
            elif node.module.startswith("harness."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("harness.")}
        found |= _imports(node, modules)
    return found


def import_graph(folder: Path = HARNESS) -> dict[str, set[str]]:
    """module -> harness modules it imports (module names without the package)."""
    paths = {p.stem: p for p in folder.glob("*.py") if p.stem != "__init__"}
    return {name: _imports(ast.parse(path.read_text(), filename=str(path)), set(paths)) - {name}
            for name, path in paths.items()}


def floors(graph: dict[str, set[str]]) -> dict[str, int]:
    """Longest import chain from each module; ValueError naming a cycle."""
    @functools.lru_cache(maxsize=None)
    def floor(name: str, path: tuple[str, ...] = ()) -> int:
        if name in path:
            raise ValueError(f"import cycle: {' -> '.join(path[path.index(name):] + (name,))}")
        deps = graph.get(name, set())
        return 1 + max(floor(d, path + (name,)) for d in deps) if deps else 0
    return {name: floor(name) for name in graph}


def test_the_graph_is_read_from_the_source() -> None:
    graph = import_graph()
    assert "config" not in graph["specs"]           # a TYPE_CHECKING import does not count
    assert {"pipeline"} <= graph["cmd_run"]          # a function-level import counts
    assert "figures" not in graph["html_report"]


def test_no_import_cycles_and_at_most_four_floors() -> None:
    levels = floors(import_graph())
    too_high = {name: level for name, level in levels.items() if level > MAX_FLOOR}
    assert too_high == {}, f"modules above floor {MAX_FLOOR}: {too_high}"


def test_only_commands_import_commands() -> None:
    graph = import_graph()
    offenders = {name: sorted(d for d in deps if d.startswith("cmd_"))
                 for name, deps in graph.items() if not name.startswith("cmd_") and name != "cli"}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_commands_are_the_top_floor() -> None:
    graph = import_graph()
    levels = floors(graph)
    assert levels["pipeline"] < MAX_FLOOR
    assert all(not deps & {n for n in graph if n.startswith("cmd_")} for n, deps in graph.items()
               if n.startswith("cmd_"))  # no command builds on another command


def test_a_cycle_is_reported(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("def f():\n    from harness.b import g\n")
    (tmp_path / "b.py").write_text("from harness import a\n")
    import pytest

    with pytest.raises(ValueError, match="import cycle: a -> b -> a|import cycle: b -> a -> b"):
        floors(import_graph(tmp_path))
