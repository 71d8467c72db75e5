"""`report/index.html`: one self-contained page of a results folder.

The page holds the report's tables (rendered from the same Markdown as report.md, so the
numbers are formatted in one place), the figures (`harness.figures`), the rendered cells of
every search side by side, the resolved config and the git SHA. It links its images with
relative paths (figures/ beside it, ../cells/), carries its CSS and its one small script
inline and loads nothing from a network, so it opens from the results folder with no server
(file://). The script only checks on load that every image resolved and, if one did not,
shows a banner (and sets `data-broken-images` on <body>, which the headless-browser test reads).
"""
from __future__ import annotations

import html
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import pandas as pd

from harness import store

if TYPE_CHECKING:
    from harness.figures import FigureSet

INDEX_FILE = "index.html"

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; padding: 0 1em;
       color: #222; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
th { background: #f2f2f2; }
td.r, th.r { text-align: right; }
code, pre { background: #f6f6f6; }
pre { padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; }
.cells td { vertical-align: top; text-align: center; }
.cells img { max-width: 420px; max-height: 320px; }
#broken { display: none; background: #fdd; border: 1px solid #c00; padding: 0.5em; }
nav a { margin-right: 1em; }
"""

# Marks <body data-broken-images=N data-images=M> once every image has settled, and shows
# a banner naming the images that did not load (e.g. a report copied without its figures).
_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; });
  document.body.setAttribute("data-images", String(imgs.length));
  document.body.setAttribute("data-broken-images", String(broken.length));
  if (broken.length) {
    var box = document.getElementById("broken");
    box.textContent = broken.length + " image(s) did not load (open this page from its results " +
      "folder): " + broken.map(function (i) { return i.getAttribute("src"); }).join(", ");
    box.style.display = "block";
  }
});
"""


# ----------------------------------------------------------------------------- Markdown subset


_LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]+)\)")
_CODE = re.compile(r"`([^`]*)`")
_EMPH = re.compile(r"(?<![\w])_([^_]+)_(?![\w])")


def _inline(text: str) -> str:
    """Escape `text` and render the inline Markdown the report uses: `code`, [a](b), _em_."""
    parts = []
    pos = 0
    for m in _CODE.finditer(text):  # code spans first: their content is literal
        parts.append(_links_and_emphasis(text[pos:m.start()]))
        parts.append(f"<code>{html.escape(m.group(1))}</code>")
        pos = m.end()
    parts.append(_links_and_emphasis(text[pos:]))
    return "".join(parts)


def _links_and_emphasis(text: str) -> str:
    out, pos = [], 0
    for m in _LINK.finditer(text):
        out.append(_emphasis(html.escape(text[pos:m.start()])))
        out.append(f'<a href="{html.escape(m.group(2), quote=True)}">{_inline(m.group(1))}</a>')
        pos = m.end()
    out.append(_emphasis(html.escape(text[pos:])))
    return "".join(out)


def _emphasis(escaped: str) -> str:
    return _EMPH.sub(r"<em>\1</em>", escaped)


def _split_row(line: str) -> list[str]:
    """Cells of a Markdown table row (`\\|` is a literal bar, as `markdown_table` writes it)."""
    inner = line.strip()[1:-1] if line.strip().endswith("|") else line.strip()[1:]
    cells = re.split(r"(?<!\\)\|", inner)
    return [c.strip().replace("\\|", "|") for c in cells]


_RIGHT = ' class="r"'


def _table_html(lines: Sequence[str]) -> str:
    header = _split_row(lines[0])
    rule = _split_row(lines[1]) if len(lines) > 1 else []
    right = [c.endswith(":") for c in rule] + [False] * len(header)
    body = lines[2:]

    def row(cells: list[str], tag: str) -> str:
        return "<tr>" + "".join(f"<{tag}{_RIGHT if right[i] else ''}>{_inline(c)}</{tag}>"
                                for i, c in enumerate(cells)) + "</tr>"

    return ("<table><thead>" + row(header, "th") + "</thead><tbody>"
            + "".join(row(_split_row(line), "td") for line in body) + "</tbody></table>")


def markdown_to_html(markdown: str, *, heading_offset: int = 0) -> str:
    """HTML of the Markdown subset `harness.report` writes: `#` headings, pipe tables, `- `
    lists, paragraphs, and inline code, links and _emphasis_. Everything is escaped."""
    out: list[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        heading = re.match(r"^(#{1,6}) (.*)$", line)
        if heading:
            level = min(6, len(heading.group(1)) + heading_offset)
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
            i += 1
            continue
        block: list[str] = []
        if line.startswith("|"):
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            out.append(_table_html(block))
        elif line.startswith("- "):
            while i < len(lines) and lines[i].startswith("- "):
                block.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(block) + "</ul>")
        else:
            while i < len(lines) and lines[i].strip() and not lines[i].startswith(("|", "#", "- ")):
                block.append(lines[i])
                i += 1
            out.append(f"<p>{_inline(' '.join(block))}</p>")
    return "\n".join(out)


# ----------------------------------------------------------------------------- the page


def _rel(path: Path, base: Path) -> str:
    """`path` relative to the page's folder, with forward slashes (a file:// URL works)."""
    return Path(os.path.relpath(path, base)).as_posix()


def _figure(svg: Path, caption: str, base: Path) -> str:
    return (f'<figure><img src="{html.escape(_rel(svg, base), quote=True)}" alt="{html.escape(caption)}" '
            f'loading="eager"><figcaption>{html.escape(caption)}</figcaption></figure>')


def _figures(section: Iterable[tuple[str, Path, Path]], base: Path) -> str:
    return "\n".join(_figure(svg, caption, base) for caption, svg, _ in section)


def _figure_links(section: Iterable[tuple[str, Path, Path]], base: Path) -> str:
    return ", ".join(f'<a href="{html.escape(_rel(svg, base), quote=True)}">{html.escape(svg.stem)}</a>'
                     for _, svg, _ in section)


def _cells_table(searches: pd.DataFrame, layout: store.ResultsLayout, base: Path) -> str:
    """Per (dataset, cells, seed) a row per method: its normal and reduction cell (SVG)."""
    from harness.methods import method_sort_key

    if searches.empty:
        return "<p><em>No searches: no cells to show.</em></p>"
    parts = []
    for (dataset, cells, seed), frame in searches.groupby(["dataset", "cells", "seed"], sort=True):
        rows = []
        for r in sorted(frame.itertuples(), key=lambda r: method_sort_key(r.method)):
            pair = layout.cell_images(r.search_id, "svg")
            imgs = ("".join(f'<td><img src="{html.escape(_rel(p, base), quote=True)}" alt="{html.escape(r.search_id)} '
                            f'{t} cell"></td>' for p, t in zip(pair, ("normal", "reduce")))
                    if pair else '<td colspan="2"><em>not rendered (graphviz dot missing?)</em></td>')
            rows.append(f"<tr><th>{html.escape(r.method)}</th>{imgs}"
                        f"<td><code>{html.escape(r.genotype)}</code></td></tr>")
        parts.append(f"<h3>{html.escape(str(dataset))}, {cells} cells, seed {seed}</h3>"
                     '<table class="cells"><thead><tr><th>method</th><th>normal cell</th><th>reduction cell</th>'
                     "<th>genotype</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")
    return "\n".join(parts)


def _read_text(path: Path, missing: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return missing


def render_index(markdown: str, figures: "FigureSet", searches: pd.DataFrame, layout: store.ResultsLayout,
                 out_dir: Path) -> str:
    """The page's HTML (see module doc). `markdown`: the report's Markdown (tables);
    `figures`: the written `harness.figures.FigureSet`; `out_dir`: where index.html goes."""
    base = Path(out_dir)
    sha = _read_text(layout.git_sha, "unknown (no git_sha.txt in the results folder)").strip()
    config = _read_text(layout.config, "# no config.toml in the results folder\n")
    sections = [
        ("tables", "Tables", markdown_to_html(markdown, heading_offset=1)),
        ("seeds", "Few-shot accuracy per seed",
         _figures(figures.seeds, base) or "<p><em>No trials yet.</em></p>"),
        ("searches", "Search trajectories",
         _figures(figures.trajectories, base) or "<p><em>No pruning searches (no candidates rows).</em></p>"),
        ("cells", "Searched cells", _cells_table(searches, layout, base)
         + (f"<p>The same side by side as figures: {_figure_links(figures.cells, base)}.</p>"
            if figures.cells else "")),
        ("curves", "Training curves",
         ("<details><summary>one figure per trial (click to open)</summary>"
          + _figures(figures.curves, base) + "</details>") if figures.curves
         else "<p><em>No history rows (trained before training curves were recorded?).</em></p>"),
    ]
    if figures.proxies:
        sections.insert(3, ("proxies", "Proxies vs accuracy", _figures(figures.proxies, base)))
    sections += [("config", "Resolved config", f"<pre>{html.escape(config)}</pre>"),
                 ("provenance", "Provenance", f"<p>git SHA: <code>{html.escape(sha)}</code>. Results folder: "
                                              f"<code>{html.escape(str(layout.root))}</code>.</p>")]
    nav = " ".join(f'<a href="#{key}">{html.escape(title)}</a>' for key, title, _ in sections)
    body = "\n".join(f'<section id="{key}"><h2>{html.escape(title)}</h2>\n{content}</section>'
                     for key, title, content in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>metantk-nas results: {html.escape(layout.root.name)}</title>"
            f"<style>{_CSS}</style><script>{_SCRIPT}</script></head>\n"
            f"<body><h1>metantk-nas results: {html.escape(layout.root.name)}</h1>"
            f'<div id="broken"></div><nav>{nav}</nav>\n{body}\n</body></html>\n')
