"""Figures of a results folder, drawn with matplotlib's object API.

Every figure is a `matplotlib.figure.Figure` rendered by an explicit canvas
(`FigureCanvasAgg` for PNG, `FigureCanvasSVG` for SVG): no `matplotlib.use`, no pyplot, so
a caller's backend and pyplot state are never touched and figures can be drawn from any
thread or Ray worker. The `*_figure` functions are pure (DataFrames in, a Figure out) and
are tested on hand-made rows; `write_figures` reads a results folder and writes each figure
as SVG and PNG (atomically) into the report folder, next to the tables.
"""
from __future__ import annotations

import io
import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from harness import store
from harness.methods import method_sort_key

FORMATS: tuple[str, ...] = ("svg", "png")
PNG_DPI = 150
FIGURE_DIR = "figures"   # under the report folder



# ----------------------------------------------------------------------------- saving


def _canvas(fig: Any, fmt: str) -> Any:
    """The canvas that renders `fig` in `fmt` (attached to the figure, nothing global)."""
    if fmt == "png":
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        return FigureCanvasAgg(fig)
    if fmt == "svg":
        from matplotlib.backends.backend_svg import FigureCanvasSVG

        return FigureCanvasSVG(fig)
    raise ValueError(f"figure format {fmt!r} is not supported; choose from {FORMATS}")


def figure_bytes(fig: Any, fmt: str, dpi: int = PNG_DPI) -> bytes:
    """`fig` rendered as `fmt` ("svg" or "png"). A figure with a layout engine (ours are
    constrained) already fits its page; others get a tight bounding box (an extra draw)."""
    buffer = io.BytesIO()
    _canvas(fig, fmt).print_figure(buffer, format=fmt, dpi=dpi,
                                   bbox_inches=None if fig.get_layout_engine() is not None else "tight",
                                   metadata={"Date": None} if fmt == "svg" else None)
    return buffer.getvalue()


def save_figure(fig: Any, stem: str | os.PathLike[str], formats: Sequence[str] = FORMATS,
                dpi: int = PNG_DPI) -> list[Path]:
    """Write `fig` as `<stem>.<fmt>` for each format, atomically; returns the paths."""
    stem = Path(stem)
    return [store.write_bytes_atomic(stem.with_name(f"{stem.name}.{fmt}"), figure_bytes(fig, fmt, dpi))
            for fmt in formats]


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _safe_stem(text: str) -> str:
    """A file stem from free text (trial ids are already safe; this guards the rest)."""
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in text).lstrip(".") or "figure"


# ----------------------------------------------------------------------------- training curves


def curves_figure(history: pd.DataFrame, title: str = "") -> Any:
    """Training curve of one trial: loss (log scale, learning rate dashed on a second axis)
    and training accuracy (%) against the epoch.

    history: rows of the `history` table of one trial (epoch, loss, train_acc, lr).
    """
    _require(history, ("epoch", "loss", "train_acc", "lr"), "history")
    h = history.sort_values("epoch")
    fig = _new_figure(7.0, 2.8)
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(h["epoch"], h["loss"], "o-", ms=3, color="C0", label="loss")
    if (h["loss"] > 0).all():
        ax_loss.set_yscale("log")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss", color="C0")
    ax_lr = ax_loss.twinx()
    ax_lr.step(h["epoch"], h["lr"], where="mid", color="C3", ls="--", lw=1)
    ax_lr.set_ylabel("learning rate", color="C3")
    ax_acc.plot(h["epoch"], 100 * h["train_acc"], "o-", ms=3, color="C2")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("training accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


# ----------------------------------------------------------------------------- per-seed strips


def seed_strip_figure(trials: pd.DataFrame, title: str = "") -> Any:
    """Per-seed accuracies of each method (one panel per shot count), with the mean and its
    95% interval as `trainers.stats.summarize_seeds` computes it for Tables 1 and 2.

    trials: `trials` rows of one (dataset, cells). Points are seeds (several trials of a seed
    averaged first, as the tables do), spread sideways by seed so equal values stay visible;
    the bar is mean ± 95% t-interval over seeds (one seed: its episode interval, hollow marker).
    """
    from harness.report import _per_seed, shot_label
    from harness.store import shots_in
    from trainers.stats import CI_EPISODES, summarize_seeds

    evaluated = shots_in(trials)
    _require(trials, ("method", "seed", *store.accuracy_columns(evaluated)), "trials")
    seeds = _per_seed(trials.assign(_group=0), ["_group", "method"])
    methods = sorted(seeds["method"].unique(), key=method_sort_key)
    shots = [k for k in evaluated if np.isfinite(seeds[store.accuracy_column(k)]).any()] or list(evaluated[:1])
    fig = _new_figure(max(3.0, 1.1 * len(methods) + 1.2) * len(shots), 3.2)
    axes = np.atleast_1d(fig.subplots(1, len(shots)))
    for ax, shot in zip(axes, shots):
        acc, ci = store.accuracy_column(shot), store.interval_column(shot)
        for x, method in enumerate(methods):
            f = seeds[seeds["method"] == method].sort_values("seed")
            y = 100 * f[acc].to_numpy(dtype=np.float64)
            offsets = np.linspace(-0.18, 0.18, len(y)) if len(y) > 1 else np.zeros(len(y))
            ax.scatter(x + offsets, y, s=18, color=f"C{x % 10}", alpha=0.7, zorder=2)
            s = summarize_seeds(f[acc].to_numpy(), f[ci].to_numpy())
            if math.isfinite(s.mean):
                err = 100 * s.ci if math.isfinite(s.ci) else 0.0
                hollow = s.kind == CI_EPISODES
                ax.errorbar([x + 0.32], [100 * s.mean], yerr=[err], fmt="D", ms=6, capsize=4, zorder=3,
                            color="black", mfc="white" if hollow else "black")
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
        ax.set_xlim(-0.6, len(methods) - 0.3)
        ax.set_ylabel(f"{shot_label(shot)} accuracy (%)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_title("dots: seeds; diamond: mean ± 95% CI (hollow: one seed, episode CI)", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


# ----------------------------------------------------------------------------- search trajectory


def _op_colors(ops: Sequence[str]) -> dict[str, Any]:
    from search_spaces.ops import PRIMITIVES

    known = list(PRIMITIVES) + sorted(set(ops) - set(PRIMITIVES) - {"edge"})
    colors = {op: f"C{i % 10}" for i, op in enumerate(known)}
    colors["edge"] = "0.45"
    return colors


def _abbreviation(op: str) -> str:
    """Short label of an op for the pruning timeline (e.g. sep_conv_3x3 -> sep3)."""
    table = {"max_pool_3x3": "max", "avg_pool_3x3": "avg", "skip_connect": "skip", "conv_1x5_5x1": "1x5",
             "conv_3x3": "conv3", "sep_conv_3x3": "sep3", "dil_conv_3x3": "dil3", "edge": "✕edge"}
    return table.get(op, op[:5])


def trajectory_figure(candidates: pd.DataFrame, title: str = "") -> Any:
    """Picture of one search: per round and cell type, every candidate's ΔCN rank against its
    ΔRN rank (colour = op, pruned candidates circled and labelled with their edge), and a
    timeline (edge x round) of the op each edge lost in each round (edge rounds: "✕edge" =
    the edge was dropped).

    candidates: rows of the `candidates` table of ONE search (round, cell_type, edge, op,
    rank_cn, rank_rn, pruned). Rank 1 = most important by that measure (ΔCN descending, ΔRN
    ascending); a method without a measure has no such ranks (drawn at 0).
    """
    from matplotlib.ticker import MaxNLocator

    _require(candidates, ("round", "cell_type", "edge", "op", "rank_cn", "rank_rn", "pruned"), "candidates")
    if candidates.empty:
        raise ValueError("trajectory_figure: no candidate rows (a fixed-genotype method has no search to draw)")
    rounds = sorted(int(r) for r in candidates["round"].unique())
    cell_types = [c for c in ("normal", "reduce") if c in set(candidates["cell_type"])] or sorted(
        candidates["cell_type"].unique())
    colors = _op_colors(list(candidates["op"].unique()))
    fig = _new_figure(2.3 * len(rounds) + 3.2, 2.5 * len(cell_types) + 0.6)
    grid = fig.add_gridspec(len(cell_types), len(rounds) + 1, width_ratios=[1.0] * len(rounds) + [1.5])
    for i, cell_type in enumerate(cell_types):
        mine = candidates[candidates["cell_type"] == cell_type]
        for j, round_ in enumerate(rounds):
            ax = fig.add_subplot(grid[i, j])
            rows = mine[mine["round"] == round_]
            ax.scatter(rows["rank_cn"], rows["rank_rn"], s=12, c=[colors[o] for o in rows["op"]], alpha=0.75,
                       linewidths=0)
            cut = rows[rows["pruned"]]
            ax.scatter(cut["rank_cn"], cut["rank_rn"], s=60, facecolors="none", edgecolors="red", linewidths=1.1)
            for r in cut.itertuples():
                ax.annotate(str(r.edge), (r.rank_cn, r.rank_rn), fontsize=6, color="red",
                            xytext=(3, 3), textcoords="offset points")
            kind = "edges" if (rows["op"] == "edge").all() and len(rows) else "ops"
            ax.set_title(f"round {round_} ({kind})" if i == 0 else "", fontsize=8)
            ax.tick_params(labelsize=6)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # ranks are integers
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            if i == len(cell_types) - 1:
                ax.set_xlabel("ΔCN rank", fontsize=7)
            if j == 0:
                ax.set_ylabel(f"{cell_type}\nΔRN rank", fontsize=7)
        _timeline(fig.add_subplot(grid[i, len(rounds)]), mine, rounds, colors, cell_type)
    handles = [_legend_marker(colors[op], op) for op in colors if op in set(candidates["op"])]
    handles.append(_legend_marker("none", "pruned (edge no.)", edge="red"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 5), fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _legend_marker(color: Any, label: str, edge: Any = "none") -> Any:
    from matplotlib.lines import Line2D

    return Line2D([], [], marker="o", ls="none", color=color, mfc=color, mec=edge, label=label)


def _timeline(ax: Any, rows: pd.DataFrame, rounds: list[int], colors: Mapping[str, Any], cell_type: str) -> None:
    """Grid of edges x rounds; each cell names the op pruned on that edge in that round."""
    edges = sorted(int(e) for e in rows["edge"].unique())
    ax.set_xlim(-0.5, len(rounds) - 0.5)
    ax.set_ylim(len(edges) - 0.5, -0.5)
    cut = rows[rows["pruned"]]
    for r in cut.itertuples():
        x, y = rounds.index(int(r.round)), edges.index(int(r.edge))
        ax.add_patch(_rectangle(x, y, colors[r.op]))
        ax.text(x, y, _abbreviation(r.op), ha="center", va="center", fontsize=6, color="white")
    ax.set_xticks(range(len(rounds)), [str(r) for r in rounds], fontsize=6)
    ax.set_yticks(range(len(edges)), [f"e{e}" for e in edges], fontsize=6)
    ax.set_title(f"{cell_type}: op pruned per edge and round", fontsize=8)
    ax.set_xlabel("round", fontsize=7)


def _rectangle(x: float, y: float, color: Any) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.48, y - 0.45), 0.96, 0.9, color=color, alpha=0.85)


# ----------------------------------------------------------------------------- proxy scatter


def proxy_scatter_figure(frame: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0, title: str = "") -> Any:
    """Grid of the correlation study: rows = targets (1-shot, 5-shot), columns = the proxies
    present in `frame` (`proxies` rows).

    Condition numbers as log10; infinite ones drawn as red crosses at the right edge. Each
    panel's title gives Kendall tau with its 95% bootstrap interval, computed by
    `harness.report.correlation_table` (proxy oriented so that positive = predictive).
    """
    from harness.report import CN_COLUMNS, PROXY_COLUMNS, PROXY_LABELS, correlation_table, target_label
    from harness.store import accuracy_targets

    columns = [c for c in PROXY_COLUMNS if c in frame.columns]
    if frame.empty or not columns:
        raise ValueError(f"no proxy rows to plot (columns {list(frame.columns)}); expected {list(PROXY_COLUMNS)}")
    frame = frame.assign(dataset=frame["dataset"] if "dataset" in frame.columns else "data")
    targets = accuracy_targets(frame)
    corr = correlation_table(frame[["dataset", *columns, *targets]], n_boot=n_boot, seed=seed)
    fig = _new_figure(3.2 * len(columns), 2.9 * len(targets))
    axes = np.asarray(fig.subplots(len(targets), len(columns), squeeze=False))
    for j, column in enumerate(columns):
        x = frame[column].to_numpy(dtype=np.float64)
        if column in CN_COLUMNS:
            with np.errstate(divide="ignore"):
                x = np.log10(x)
        finite = np.isfinite(x)
        for i, target in enumerate(targets):
            ax = axes[i, j]
            y = 100 * frame[target].to_numpy(dtype=np.float64)
            ax.scatter(x[finite], y[finite], s=14, alpha=0.8)
            infinite = ~finite & ~np.isnan(x)
            if infinite.any():
                right = np.nanmax(x[finite]) + 0.1 * max(np.ptp(x[finite]), 1.0) if finite.any() else 1.0
                ax.scatter(np.full(int(infinite.sum()), right), y[infinite], marker="x", color="red", s=20,
                           label="inf")
                ax.legend(loc="best", fontsize=7)
            r = corr[(corr["proxy"] == column) & (corr["target"] == target)].iloc[0]
            tau = "n/a" if not math.isfinite(r.kendall_tau) else f"{r.kendall_tau:+.2f}"
            ci = f" [{r.kendall_lo:+.2f}, {r.kendall_hi:+.2f}]" if math.isfinite(r.kendall_lo) else ""
            ax.set_title((PROXY_LABELS[column] + "\n" if i == 0 else "") + f"Kendall τ = {tau}{ci}", fontsize=9)
            ax.tick_params(labelsize=7)
            if i == len(targets) - 1:
                ax.set_xlabel("log10 condition number (lower = better)" if column in CN_COLUMNS
                              else "regions (higher = better)", fontsize=8)
            if j == 0:
                ax.set_ylabel(target_label(target) + " (%)", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


# ----------------------------------------------------------------------------- cells side by side


def cells_figure(images: Mapping[str, tuple[Path, Path]], title: str = "") -> Any:
    """The rendered cells of several methods side by side: one row per label (method), the
    normal cell left and the reduction cell right, from graphviz's PNGs."""
    import matplotlib.image as mpimg

    if not images:
        raise ValueError("cells_figure: no rendered cells given")
    loaded = {label: [mpimg.imread(str(p)) for p in pair] for label, pair in images.items()}
    heights = [max(a.shape[0] for a in pair) for pair in loaded.values()]
    scale = 9.0 / max(sum(a.shape[1] for a in pair) for pair in loaded.values())
    fig = _new_figure(9.0, max(1.5, min(30.0, scale * sum(heights) + 0.4 * len(heights))))
    axes = np.asarray(fig.subplots(len(loaded), 2, squeeze=False, height_ratios=heights))
    for row, (label, pair) in enumerate(loaded.items()):
        for col, image in enumerate(pair):
            ax = axes[row, col]
            ax.imshow(image)
            ax.set_axis_off()
            ax.set_title(f"{label}: {('normal', 'reduce')[col]} cell", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


# ----------------------------------------------------------------------------- a results folder


@dataclass(frozen=True)
class FigureSet:
    """Written figures of one report, by section; each entry is (caption, SVG path, PNG path)."""

    seeds: tuple[tuple[str, Path, Path], ...] = ()
    curves: tuple[tuple[str, Path, Path], ...] = ()
    trajectories: tuple[tuple[str, Path, Path], ...] = ()
    proxies: tuple[tuple[str, Path, Path], ...] = ()
    cells: tuple[tuple[str, Path, Path], ...] = ()

    def paths(self) -> list[Path]:
        return [p for section in (self.seeds, self.curves, self.trajectories, self.proxies, self.cells)
                for _, svg, png in section for p in (svg, png)]


# Bump when a figure's drawing changes, so cached figures are redrawn.
FIGURE_VERSION = 1


def input_digest(*parts: Any) -> str:
    """sha256 of a figure's inputs: DataFrames (values, columns), files (bytes) and plain values."""
    import hashlib

    h = hashlib.sha256(f"v{FIGURE_VERSION}".encode())
    for part in parts:
        if isinstance(part, pd.DataFrame):
            h.update(repr(list(part.columns)).encode())
            h.update(pd.util.hash_pandas_object(part, index=False).to_numpy().tobytes())
        elif isinstance(part, Path):
            h.update(part.read_bytes())
        else:
            h.update(repr(part).encode())
    return h.hexdigest()


def _write(draw: Callable[[], Any], folder: Path, stem: str, caption: str, digest: str) -> tuple[str, Path, Path]:
    """Draw and save one figure as SVG and PNG, unless both files exist and were drawn from
    inputs with the same `digest` (kept in a hidden `.<stem>.digest` beside them): a report
    rerun redraws only what changed (a big experiment has a figure per trial and search)."""
    stem = _safe_stem(stem)
    svg, png = folder / f"{stem}.svg", folder / f"{stem}.png"
    marker = folder / f".{stem}.digest"
    fresh = svg.is_file() and png.is_file() and marker.is_file() and marker.read_text().strip() == digest
    if not fresh:
        svg, png = save_figure(draw(), folder / stem)
        store.write_text_atomic(marker, digest + "\n")  # after the figures: a crash leaves it stale
    return caption, svg, png


def write_figures(results_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                  data: Mapping[str, pd.DataFrame] | None = None, n_boot: int = 1000, seed: int = 0) -> FigureSet:
    """Draw every figure the results folder has data for into `out_dir` (SVG and PNG).

    data: the tables already read (`store.read_table`), to avoid reading twice.
    Figures: per-seed strips per (dataset, cells) of the trials; training curves per trial
    (history rows); a trajectory per pruning search (candidates rows); the proxy scatter
    (proxies rows); the cells of each method side by side per (dataset, cells, seed) (rendered
    cells of the searches).
    """

    layout = store.results_layout(results_dir)
    data = data if data is not None else {name: store.read_table(layout.root, name) for name in store.TABLES}
    out = Path(out_dir)
    seeds, curves, trajectories, proxies, cells = [], [], [], [], []
    trials = data["trials"]
    for (dataset, cells_n), frame in trials.groupby(["dataset", "cells"], sort=True):
        title = f"{dataset}, {cells_n} cells: few-shot accuracy per seed"
        seeds.append(_write(lambda: seed_strip_figure(frame, title), out, f"seeds-{dataset}-c{cells_n}", title,
                            input_digest(frame, title)))
    history = data["history"]
    for trial_id, frame in history.groupby("trial_id", sort=True):
        title = f"{trial_id}: training curve"
        curves.append(_write(lambda: curves_figure(frame, title), out, f"curve-{trial_id}", title,
                             input_digest(frame, title)))
    candidates = data["candidates"]
    for search_id, frame in candidates.groupby("search_id", sort=True):
        title = f"{search_id}: ΔCN and ΔRN ranks per round, pruned ops"
        trajectories.append(_write(lambda: trajectory_figure(frame, title), out, f"search-{search_id}", title,
                                   input_digest(frame, title)))
    if not data["proxies"].empty:
        title = f"proxies at initialisation vs accuracy after training ({len(data['proxies'])} genotypes)"
        proxies.append(_write(lambda: proxy_scatter_figure(data["proxies"], n_boot=n_boot, seed=seed, title=title),
                              out, "proxies", title, input_digest(data["proxies"], n_boot, seed, title)))
        proxies.extend(_leaderboard_figures(data["proxies"], data.get("proxy_scores"), out))
    searches = data["searches"]
    for (dataset, cells_n, seed_), frame in searches.groupby(["dataset", "cells", "seed"], sort=True):
        found = {}
        for row in sorted(frame.itertuples(), key=lambda r: method_sort_key(r.method)):
            pair = layout.cell_images(row.search_id)
            if pair is not None:
                found[row.method] = pair
        if found:
            title = f"{dataset}, {cells_n} cells, seed {seed_}: searched cells by method"
            cells.append(_write(lambda: cells_figure(found, title), out, f"cells-{dataset}-c{cells_n}-s{seed_}",
                                title, input_digest(title, *found, *(p for pair in found.values() for p in pair))))
    return FigureSet(tuple(seeds), tuple(curves), tuple(trajectories), tuple(proxies), tuple(cells))


# ----------------------------------------------------------------------------- proxy study and leaderboard figures


HEATMAP_FILE = "proxy_heatmap.png"
SCATTER_FILE = "proxy_scatter_grid.png"


def _png(fig: Any, path: Path) -> Path:
    """Write `fig` beside `path` as PNG and SVG (`save_figure`); the PNG path."""
    save_figure(fig, path.with_suffix(""))
    return path.with_suffix(".png")


def heatmap_figure(corr: pd.DataFrame, title: str = "") -> Any:
    """Heat map of the proxy-proxy rank correlations (Kendall τ of the oriented proxies);
    a matplotlib Figure (not saved)."""
    from matplotlib.figure import Figure

    n = len(corr)
    fig = Figure(figsize=(1.0 + 0.45 * n, 0.8 + 0.45 * n))
    ax = fig.subplots()
    image = ax.imshow(corr.to_numpy(np.float64), vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(n), corr.columns, rotation=90, fontsize=7)
    ax.set_yticks(range(n), corr.index, fontsize=7)
    for i, j in itertools.product(range(n), range(n)):
        v = corr.iat[i, j]
        if math.isfinite(v):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=5)
    fig.colorbar(image, ax=ax, label="Kendall τ")
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig


def plot_heatmap(corr: pd.DataFrame, path: Path, title: str = "") -> Path:
    """`heatmap_figure` saved beside `path` (PNG and SVG); the PNG path."""
    return _png(heatmap_figure(corr, title), path)


def scatter_grid_figure(frame: pd.DataFrame, title: str = "") -> Any:
    """Rows: targets; columns: proxies; log10 for condition numbers, infinite ones left out;
    `frame` is `harness.leaderboard.joined_frame`'s. A matplotlib Figure (not saved)."""
    from matplotlib.figure import Figure

    from harness.leaderboard import _ordered, is_condition_number
    from harness.store import accuracy_targets
    from kernels.proxy_names import PROXY_DIRECTIONS

    names = _ordered([c for c in frame.columns if c in PROXY_DIRECTIONS])
    targets = accuracy_targets(frame)
    fig = Figure(figsize=(2.2 * len(names), 2.0 * len(targets)))
    axes = fig.subplots(len(targets), len(names), squeeze=False)
    for j, proxy in enumerate(names):
        x = frame[proxy].to_numpy(np.float64)
        if is_condition_number(proxy):
            with np.errstate(divide="ignore", invalid="ignore"):
                x = np.log10(x)
        for i, target in enumerate(targets):
            ax = axes[i, j]
            y = 100 * frame[target].to_numpy(np.float64)
            ok = np.isfinite(x) & np.isfinite(y)
            ax.scatter(x[ok], y[ok], s=8, alpha=0.8)
            ax.tick_params(labelsize=6)
            if i == 0:
                ax.set_title(("log10 " if is_condition_number(proxy) else "") + proxy, fontsize=7)
            if j == 0:
                ax.set_ylabel(f"{target} (%)", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig


def plot_scatter_grid(frame: pd.DataFrame, path: Path, title: str = "") -> Path:
    """`scatter_grid_figure` saved beside `path` (PNG and SVG); the PNG path."""
    return _png(scatter_grid_figure(frame, title), path)


def leaderboard_figures(proxies: pd.DataFrame, scores: pd.DataFrame, plots: Path, title: str = "") -> list[Path]:
    """The leaderboard's heat map and scatter grid under `plots` (atomic writes); their paths."""
    from harness.leaderboard import joined_frame, proxy_correlations

    frame = joined_frame(proxies, scores)
    return [plot_heatmap(proxy_correlations(frame), plots / HEATMAP_FILE, title),
            plot_scatter_grid(frame, plots / SCATTER_FILE, title)]


def plot_proxies(frame: Any, path: Path, *, n_boot: int = 1000, seed: int = 0, title: str = "") -> Path:
    """The proxy scatter (`proxy_scatter_figure`) as `path` (PNG) and the same stem as SVG,
    written atomically; returns `path`. Drawn with matplotlib's object API: the caller's
    backend is left alone."""
    fig = proxy_scatter_figure(frame, n_boot=n_boot, seed=seed, title=title)
    save_figure(fig, Path(path).with_suffix(""), formats=("png", "svg"))
    return Path(path)


def _leaderboard_figures(proxies: pd.DataFrame, scores: pd.DataFrame | None, out: Path
                         ) -> list[tuple[str, Path, Path]]:
    """The proxy leaderboard's heat map (proxy-proxy τ) and scatter grid (every registry proxy
    against each accuracy) for the report, when the study scored `[study] zero_cost` proxies."""
    from harness.leaderboard import joined_frame, proxy_correlations

    if scores is None or scores.empty:
        return []
    frame = joined_frame(proxies, scores)
    if frame.empty:
        return []
    corr = proxy_correlations(frame)
    heat = f"proxy-proxy rank correlation (Kendall τ, oriented; {len(frame)} genotypes)"
    grid = f"every zero-cost proxy at initialisation vs accuracy after training ({len(frame)} genotypes)"
    return [_write(lambda: heatmap_figure(corr, heat), out, "proxy-heatmap", heat, input_digest(corr, heat)),
            _write(lambda: scatter_grid_figure(frame, grid), out, "proxy-scatter-grid", grid,
                   input_digest(frame, grid))]


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} rows lack columns {missing}; pass rows of harness.store.read_table")
