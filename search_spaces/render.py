"""Graphviz diagrams of a genotype's normal and reduction cells.

One digraph per cell: inputs c_{k-2}, c_{k-1}, intermediate nodes 0, 1, 2, output c_{k};
one edge per (op, input) labelled with the op name, and the concat edges into c_{k}.
Files: `<name>_normal.<fmt>` and `<name>_reduce.<fmt>` for each requested format.

Rendering needs graphviz's `dot` executable (the `graphviz` Python package only writes the
DOT source). Without it, `render_genotype` still writes the `.gv` sources and raises
`DotNotFoundError` (a FileNotFoundError) that lists them and says how to install `dot`.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterable

import graphviz

from search_spaces.genotypes import CELL_TYPES, NODES, Genotype

FORMATS: tuple[str, ...] = ("svg", "png", "pdf", "gv")
INSTALL_HINT = (
    "install Graphviz's `dot` (Debian/Ubuntu: `apt-get install graphviz`; conda: "
    "`conda install graphviz`; macOS: `brew install graphviz`) and rerun, or render the "
    "sources yourself with `dot -Tsvg FILE.gv -o FILE.svg`"
)


class DotNotFoundError(FileNotFoundError):
    """The `dot` executable is missing; `.written` lists the `.gv` sources written instead."""

    def __init__(self, written: list[Path]) -> None:
        self.written = written
        files = ", ".join(str(p) for p in written)
        super().__init__(f"graphviz 'dot' executable not found; wrote the DOT sources {files}; {INSTALL_HINT}")


def dot_available() -> bool:
    """Whether the graphviz `dot` executable is on PATH."""
    return shutil.which("dot") is not None


def _input_label(i: int) -> str:
    return ("c_{k-2}", "c_{k-1}")[i] if i < 2 else str(i - 2)


def cell_graph(genotype: Genotype, cell_type: str, title: str | None = None) -> graphviz.Digraph:
    """The digraph of one cell (`"normal"` or `"reduce"`)."""
    if cell_type not in CELL_TYPES:
        raise ValueError(f"cell_graph: cell_type must be one of {CELL_TYPES}, got {cell_type!r}")
    nodes = getattr(genotype, cell_type)
    concat = getattr(genotype, f"{cell_type}_concat")
    g = graphviz.Digraph(name=f"{cell_type}_cell", format="svg")
    g.attr(rankdir="LR", label=title or f"{cell_type} cell", labelloc="t", fontname="Helvetica")
    g.attr("edge", fontsize="12", fontname="Helvetica")
    g.attr("node", style="rounded,filled", shape="box", fontname="Helvetica", fontsize="14",
           height="0.5", width="0.5", penwidth="2")
    for i in range(2):
        g.node(f"in{i}", _input_label(i), fillcolor="darkseagreen2")
    for i in range(NODES):
        g.node(f"n{i}", str(i), fillcolor="lightblue")
    g.node("out", "c_{k}", fillcolor="palegoldenrod")
    for i, node in enumerate(nodes):
        for op, inp in node:
            src = f"in{inp}" if inp < 2 else f"n{inp - 2}"
            g.edge(src, f"n{i}", label=op)
    for j in concat:
        g.edge(f"n{j - 2}", "out", style="dashed")
    return g


def render_genotype(genotype: Genotype, out_dir: str | Path, name: str,
                    formats: Iterable[str] = ("svg", "png")) -> list[Path]:
    """Write both cells of `genotype` to `out_dir/<name>_{normal,reduce}.<fmt>`.

    formats: any of "svg", "png", "pdf", "gv" (the DOT source). Returns the written paths.
    Raises DotNotFoundError (after writing the `.gv` sources) when an image format is asked
    for and graphviz's `dot` is not installed.
    """
    formats = tuple(dict.fromkeys(formats))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"render: unknown formats {bad or '(none given)'}; choose from {FORMATS}")
    if not name or "/" in name or "\\" in name:
        raise ValueError(f"render: name must be a plain file stem, got {name!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    graphs = {t: cell_graph(genotype, t, f"{name}: {t} cell") for t in CELL_TYPES}
    sources: list[Path] = []

    def write_sources_once() -> list[Path]:
        if not sources:
            sources.extend(_write_sources(graphs, out, name))
        return list(sources)

    written: list[Path] = write_sources_once() if "gv" in formats else []
    images = [f for f in formats if f != "gv"]
    if not images:
        return written
    if not dot_available():
        raise DotNotFoundError(write_sources_once())
    for cell_type, g in graphs.items():
        for fmt in images:
            try:
                data = g.pipe(format=fmt)
            except graphviz.ExecutableNotFound as exc:
                raise DotNotFoundError(write_sources_once()) from exc
            target = out / f"{name}_{cell_type}.{fmt}"
            target.write_bytes(data)
            written.append(target)
    return written


def _write_sources(graphs: dict[str, graphviz.Digraph], out: Path, name: str) -> list[Path]:
    paths = []
    for cell_type, g in graphs.items():
        path = out / f"{name}_{cell_type}.gv"
        path.write_text(g.source)
        paths.append(path)
    return paths
