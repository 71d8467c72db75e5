"""Each piece of shared knowledge lives in one place: search-space constants, the method list,
the Markdown writer, the room boundaries, and the CLI's command table."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from harness import cli, config, report, search
from harness.markdown import markdown_table
from harness.theory_report import rows_table
from search_spaces.genotypes import CELL_TYPES, EDGES_PER_CELL, INPUTS_PER_NODE, NODE_EDGES
from search_spaces.ops import PRIMITIVES

REPO = Path(__file__).resolve().parents[2]


def test_pruning_network_count_is_derived_from_the_space() -> None:
    # The DARTS space: 6 op rounds over 2 x 9 edges (126+108+90+72+54+36 candidates), edge
    # selection over the 3- and 4-input nodes of both cell types, one origin per round.
    assert search.pruning_network_count() == sum(range(36, 127, 18)) + 2 * (3 + 4) + search.SEARCH_ROUNDS
    assert search.EDGE_GROUPS == NODE_EDGES and search.KEEP_EDGES == INPUTS_PER_NODE
    assert (search.N_CELL_TYPES, search.N_EDGES, search.N_OPS) == (len(CELL_TYPES), EDGES_PER_CELL, len(PRIMITIVES))


def test_one_method_list() -> None:
    assert report.METHOD_ORDER is config.METHOD_ORDER
    assert set(config.METHOD_ORDER) <= set(config.valid_methods())
    assert config.METHOD_ORDER[:len(config.PAPER_PRUNING_METHODS)] == ("metantk", "tenas", "regions", "cn-only")


def test_theory_tables_use_the_shared_markdown_writer() -> None:
    text = rows_table([{"width": 8, "err": 0.123456, "extra": 1}], ("width", "err"))
    assert text == markdown_table(["width", "err"], [["8", "0.1235"]]) + "\n"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("room", ["trainers", "kernels", "search_spaces"])
def test_library_rooms_import_neither_harness_nor_ray(room: str) -> None:
    offenders = {p.name: sorted(_imports(p) & {"harness", "ray"}) for p in (REPO / room).glob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_a_missing_command_module_is_an_error_not_a_silently_missing_command(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "COMMAND_MODULES", cli.COMMAND_MODULES + ("harness.cmd_does_not_exist",))
    with pytest.raises(ModuleNotFoundError, match="cmd_does_not_exist"):
        cli.build_parser()


def test_one_atomic_writer() -> None:
    """Every write that must not be seen half-done goes through `trainers.atomic.write_atomic`:
    no other module makes temp files to rename over a target (moving a finished folder or file
    aside, as `--fresh` and Tune's experiment record do, is a move, not a write)."""
    import re

    writers = []
    for room in ("harness", "trainers", "kernels", "search_spaces"):
        for path in sorted((REPO / room).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            if re.search(r"\bmkstemp\(|\.tmp[-\"']", text):  # a temp file made to be renamed over a target
                writers.append(path.relative_to(REPO).as_posix())
    assert writers == ["trainers/atomic.py"]


def test_no_tracked_file_keeps_merge_conflict_markers() -> None:
    """A merge once left `<<<<<<<` / `>>>>>>>` blocks in benchmarks/README.md unnoticed."""
    import subprocess

    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    marked = []
    for name in files:
        path = REPO / name
        if path.suffix not in {".py", ".md", ".toml", ".txt", ".cfg", ".sh", ".yaml", ".yml"} or not path.is_file():
            continue
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        if any(line.startswith(("<<<<<<< ", ">>>>>>> ")) or line == "=======" for line in lines):
            marked.append(name)
    assert marked == []
