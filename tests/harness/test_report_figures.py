"""Figures, the HTML report and its check in a real headless browser.

A results folder is built from hand-made rows (no Ray, no training): two methods x two
seeds with trials, history, one pruning search's candidates, rendered cells and proxies.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import store
from harness.figures import (FIGURE_DIR, cells_figure, curves_figure, figure_bytes, proxy_scatter_figure,
                             seed_strip_figure, trajectory_figure, write_figures)
from harness.html_report import markdown_to_html
from harness.pipeline import write_report

from test_report import proxy_row, search, trial

EXP = "exp"


def history_rows(trial_id: str, method: str, seed: int, epochs: int = 4) -> list[dict]:
    return [{"experiment": EXP, "trial_id": trial_id, "dataset": "omniglot", "method": method, "seed": seed,
             "cells": 5, "epoch": e, "loss": 2.0 / e, "train_acc": min(1.0, 0.2 * e), "lr": 0.1 if e < 3 else 0.01,
             "seconds": 1.5} for e in range(1, epochs + 1)]


def candidate_rows(search_id: str, method: str = "metantk", seed: int = 0) -> list[dict]:
    """Two op rounds (3 edges x 3 ops, then 3 x 2) and one edge round, per cell type."""
    rows = []
    ops = ["conv_3x3", "skip_connect", "max_pool_3x3"]
    for cell_type in ("normal", "reduce"):
        for rnd, live in ((1, ops), (2, ops[:2])):
            for edge in range(3):
                for k, op in enumerate(live):
                    rows.append(_candidate(search_id, method, seed, rnd, cell_type, edge, op,
                                           rank_cn=k + 1 + edge, rank_rn=len(live) - k, pruned=op == live[-1]))
        for edge in range(3):
            rows.append(_candidate(search_id, method, seed, 3, cell_type, edge, "edge", rank_cn=edge + 1,
                                   rank_rn=1, pruned=edge == 2))
    return rows


def _candidate(search_id, method, seed, rnd, cell_type, edge, op, *, rank_cn, rank_rn, pruned) -> dict:
    return {"experiment": EXP, "dataset": "omniglot", "method": method, "seed": seed, "cells": 5,
            "search_id": search_id, "round": rnd, "cell_type": cell_type, "edge": edge, "op": op, "repeats": 1,
            "cn_origin": 10.0, "cn_pruned": 9.0, "rn_origin": 100.0, "rn_pruned": 90.0, "delta_cn": 0.1,
            "delta_rn": 0.1, "rank_cn": rank_cn, "rank_rn": rank_rn, "importance": rank_cn + rank_rn,
            "pruned": pruned, "worker": "w0", "seconds": 0.1}


def make_results(root: Path, *, render_cells: bool = True) -> Path:
    """A results folder with every table a report draws from."""
    from search_spaces.genotypes import resolve_genotype
    from search_spaces.render import dot_available, render_genotype

    genotype = resolve_genotype("metanas_in_v2")
    accs = {"metantk": (0.62, 0.66), "random": (0.58, 0.61)}
    for method, (a0, a1) in accs.items():
        for seed, acc in enumerate((a0, a1)):
            t = trial(method, seed, acc, acc + 0.15, experiment=EXP) | {"genotype": genotype.to_str()}
            s = search(method, seed, 5.0, experiment=EXP) | {"genotype": genotype.to_str()}
            store.write_rows(root, "trials", t["trial_id"], [t])
            store.write_rows(root, "searches", s["search_id"], [s])
            store.write_rows(root, "history", t["trial_id"], history_rows(t["trial_id"], method, seed))
            if render_cells and dot_available():
                render_genotype(genotype, root / "cells", s["search_id"], formats=("svg", "png"))
    sid = "omniglot-metantk-s0-c5"
    store.write_rows(root, "candidates", f"{sid}-r01", candidate_rows(sid))
    rng = np.random.default_rng(0)
    proxies = [proxy_row(i, cn=float(10 ** rng.uniform(1, 4)), regions=float(rng.integers(50, 200)),
                         acc1=float(rng.uniform(0.4, 0.8)), acc5=float(rng.uniform(0.6, 0.9))) for i in range(8)]
    proxies[0]["cn_metantk_maml"] = float("inf")
    store.write_rows(root, "proxies", "study", proxies)
    store.write_text_atomic(root / "config.toml", '[experiment]\nname = "exp"\n# <b>not markup</b>\n')
    store.write_text_atomic(root / "git_sha.txt", "0123456789abcdef\n")
    return root


def _backend_untouched(fn) -> None:
    """Run `fn` with a caller that chose a non-default backend: it must still be in force."""
    import matplotlib

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # the caller's choice (the test restores the previous one)
    try:
        fn()
        assert matplotlib.get_backend() == "svg"
        assert "matplotlib.pyplot" not in sys.modules or not sys.modules["matplotlib.pyplot"].get_fignums()
    finally:
        matplotlib.use(before)


# ----------------------------------------------------------------------------- pure figures


def test_curves_figure_draws_loss_lr_and_accuracy():
    fig = curves_figure(pd.DataFrame(history_rows("t", "metantk", 0)), "t")
    loss_ax, acc_ax, lr_ax = fig.axes
    assert list(loss_ax.lines[0].get_xdata()) == [1, 2, 3, 4]
    np.testing.assert_allclose(acc_ax.lines[0].get_ydata(), [20, 40, 60, 80])
    assert loss_ax.get_yscale() == "log"
    np.testing.assert_allclose(sorted(set(lr_ax.lines[0].get_ydata())), [0.01, 0.1])


def test_seed_strip_shows_every_seed_and_the_table_mean_and_interval():
    from harness.report import table1

    frame = pd.DataFrame([trial("metantk", s, a, a + 0.1) for s, a in enumerate((0.60, 0.62, 0.67))]
                         + [trial("random", 0, 0.5, 0.6)])
    fig = seed_strip_figure(frame)
    ax = fig.axes[0]  # 1-shot
    from matplotlib.collections import PathCollection

    points = np.concatenate([c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)])
    assert sorted(np.round(points[:, 1], 6)) == sorted([60.0, 62.0, 67.0, 50.0])
    t1 = table1(frame, pd.DataFrame())
    row = t1[t1["method"] == "metantk"].iloc[0]
    bars = [line for line in ax.lines if line.get_marker() == "D"]
    means = sorted(float(line.get_ydata()[0]) for line in bars)
    assert means == pytest.approx(sorted([100 * row.acc_1shot, 50.0]))
    caps = [c for c in ax.lines if c.get_marker() == "_"]
    tops = sorted({round(float(c.get_ydata()[0]), 6) for c in caps})
    assert round(100 * (row.acc_1shot + row.ci_1shot), 6) in tops  # the table's interval, drawn


def test_trajectory_marks_the_pruned_op_of_every_edge_and_round():
    frame = pd.DataFrame(candidate_rows("s"))
    fig = trajectory_figure(frame, "s")
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    # 2 op rounds x 3 edges per cell type pruned an op, plus one dropped edge per cell type.
    assert texts.count("max") == 2 * 3 and texts.count("skip") == 2 * 3 and texts.count("✕edge") == 2
    titles = [ax.get_title() for ax in fig.axes]
    assert "round 3 (edges)" in titles and "normal: op pruned per edge and round" in titles


def test_trajectory_refuses_an_empty_search():
    with pytest.raises(ValueError, match="no candidate rows"):
        trajectory_figure(pd.DataFrame(candidate_rows("s")).iloc[:0])


def test_proxy_scatter_keeps_the_callers_backend_and_draws_infinities(tmp_path):
    rng = np.random.default_rng(1)
    rows = [proxy_row(i, cn=float(10 ** rng.uniform(1, 3)), regions=float(i), acc1=0.1 * i, acc5=0.05 * i + 0.5)
            for i in range(6)]
    rows[2]["cn_ntk"] = float("inf")
    frame = pd.DataFrame(rows)

    def draw():
        fig = proxy_scatter_figure(frame, n_boot=10)
        crosses = [c for ax in fig.axes for c in ax.collections if len(c.get_offsets()) == 1]
        assert crosses  # the infinite NTK condition number is drawn at the edge
        assert figure_bytes(fig, "svg").lstrip().startswith(b"<?xml")

    _backend_untouched(draw)


def test_the_study_plot_writes_png_and_svg_without_switching_backend(tmp_path):
    from harness.figures import plot_proxies

    frame = pd.DataFrame([proxy_row(i, cn=10.0 + i, regions=float(i), acc1=0.1 * i, acc5=0.5) for i in range(4)])
    _backend_untouched(lambda: plot_proxies(frame, tmp_path / "p.png", n_boot=5))
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (tmp_path / "p.svg").read_bytes()


def test_cells_figure_puts_each_method_in_a_row(tmp_path):
    from search_spaces.genotypes import resolve_genotype
    from search_spaces.render import dot_available, render_genotype

    if not dot_available():
        pytest.skip("graphviz `dot` is not installed (apt-get install graphviz)")
    g = resolve_genotype("metanas_in_v2")
    pairs = {}
    for name in ("metantk", "random"):
        paths = render_genotype(g, tmp_path, name, formats=("png",))
        pairs[name] = (paths[0], paths[1])
    fig = cells_figure(pairs)
    assert [ax.get_title() for ax in fig.axes] == ["metantk: normal cell", "metantk: reduce cell",
                                                   "random: normal cell", "random: reduce cell"]


# ----------------------------------------------------------------------------- the folder


def test_write_figures_draws_every_section(tmp_path):
    from search_spaces.render import dot_available

    root = make_results(tmp_path / "res")
    figs = write_figures(root, tmp_path / "figs", n_boot=10)
    assert len(figs.seeds) == 1 and len(figs.curves) == 4 and len(figs.trajectories) == 1
    assert len(figs.proxies) == 1
    assert len(figs.cells) == (2 if dot_available() else 0)  # one per (dataset, cells, seed)
    for _, svg, png in figs.seeds + figs.curves + figs.trajectories + figs.proxies + figs.cells:
        assert svg.read_bytes().lstrip().startswith(b"<?xml") and png.read_bytes()[:4] == b"\x89PNG"


def test_a_rerun_redraws_only_figures_whose_rows_changed(tmp_path):
    root = make_results(tmp_path / "res", render_cells=False)
    out = tmp_path / "figs"
    write_figures(root, out, n_boot=10)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.svg")}
    write_figures(root, out, n_boot=10)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.svg")} == before
    changed = history_rows("trial-omniglot-random-s1-c5", "random", 1, epochs=5)  # one more epoch
    store.write_rows(root, "history", "trial-omniglot-random-s1-c5", changed)
    write_figures(root, out, n_boot=10)
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.svg")}
    assert [n for n in before if after[n] != before[n]] == ["curve-trial-omniglot-random-s1-c5.svg"]


def test_report_command_writes_figures_and_a_self_contained_page(tmp_path, capsys):
    from harness.cli import main

    root = make_results(tmp_path / "res")
    assert main(["report", str(root), "--n-boot", "10"]) == 0
    out = root / "report"
    page = (out / "index.html").read_text()
    assert (out / FIGURE_DIR / "seeds-omniglot-c5.svg").is_file()
    assert (out / FIGURE_DIR / "seeds-omniglot-c5.png").is_file()
    assert (out / FIGURE_DIR / "search-omniglot-metantk-s0-c5.svg").is_file()
    # Only relative links to local files: it opens from the folder with no server.
    sources = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert sources and not [s for s in sources if re.match(r"^[a-z]+:|^/", s)]
    for src in (s for s in sources if not s.startswith("#")):
        assert (out / src).resolve().is_file(), src
    assert "0123456789abcdef" in page  # git SHA
    assert "&lt;b&gt;not markup&lt;/b&gt;" in page  # the config, escaped
    assert "<table>" in page and "metantk" in page and "Table 1" in page
    assert "figures/seeds-omniglot-c5.svg" in (out / "report.md").read_text()


def test_markdown_subset_to_html():
    md = "# T\n\ntext with `a|b` and [link](x/y.svg) and _note_\n\n| a | b |\n| --- | ---: |\n| 1 \\| 2 | <3> |\n"
    html = markdown_to_html(md)
    assert "<h1>T</h1>" in html
    assert "<code>a|b</code>" in html and '<a href="x/y.svg">link</a>' in html and "<em>note</em>" in html
    assert "<td>1 | 2</td>" in html and '<td class="r">&lt;3&gt;</td>' in html


def test_report_without_figures_writes_no_page(tmp_path):
    from harness.cli import main

    root = make_results(tmp_path / "res", render_cells=False)
    files = write_report(root, n_boot=10, figures=False)
    assert "index.html" not in files and not (root / "report" / FIGURE_DIR).exists()
    assert main(["report", str(root), "--n-boot", "10", "--no-figures"]) == 0
    assert not (root / "report" / "index.html").exists() and (root / "report" / "table1.csv").is_file()


# ----------------------------------------------------------------------------- headless browser


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                None)


def _browse(page: Path, *extra: str) -> subprocess.CompletedProcess:
    browser = _chromium()
    profile = tempfile.mkdtemp(prefix="metantk-chromium-")
    try:
        return subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
             *extra, page.resolve().as_uri()],
            capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def _console_errors(stderr: str) -> list[str]:
    """Console messages and failed loads Chromium logs to stderr (--enable-logging=stderr)."""
    return [line for line in stderr.splitlines()
            if "CONSOLE" in line or "ERR_FILE_NOT_FOUND" in line or "Failed to load resource" in line
            or "Uncaught" in line]


@pytest.mark.slow
def test_the_page_loads_in_headless_chromium_with_every_image(tmp_path):
    if _chromium() is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium); the HTML report's "
                    "browser check needs it")
    root = make_results(tmp_path / "res")
    write_report(root, n_boot=10)
    page = root / "report" / "index.html"
    n_images = page.read_text().count("<img ")
    dom = _browse(page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert f'data-images="{n_images}"' in dom.stdout and 'data-broken-images="0"' in dom.stdout
    assert not _console_errors(dom.stderr), _console_errors(dom.stderr)
    shot = Path(os.environ.get("METANTK_SCREENSHOT", tmp_path / "report.png"))
    shot.parent.mkdir(parents=True, exist_ok=True)
    result = _browse(page, f"--screenshot={shot}", "--window-size=1280,2400")
    assert result.returncode == 0 and shot.read_bytes()[:4] == b"\x89PNG"

    # The check really sees a missing image: drop one figure and the page reports it.
    next((root / "report" / FIGURE_DIR).glob("seeds-*.svg")).unlink()
    broken = _browse(page, "--dump-dom")
    assert 'data-broken-images="1"' in broken.stdout
