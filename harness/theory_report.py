"""Report text and files of `metantk-nas verify-kernels` and `verify-theory`.

The checks themselves are science and live in `trainers.theory`; this module renders their
results: the Markdown the commands print, and CSV, Markdown and PNG files written
atomically through `harness.store` (matplotlib `Figure`, no pyplot global state).
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Sequence

from harness import store
from harness.markdown import markdown_table
from trainers.theory import KernelCheckResult, TheoryResult

__all__ = ["kernel_report", "theory_report", "write_kernel_outputs", "write_theory_outputs", "rows_table"]


def rows_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A Markdown table of dict `rows` restricted to `columns` (floats in 4 significant digits)."""
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return markdown_table(list(columns), [[fmt(r[c]) for c in columns] for r in rows]) + "\n"


def _csv_text(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0].keys()), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _save_figure(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return store.write_bytes_atomic(path, buf.getvalue())


KERNEL_COLUMNS = ("width", "ntk_err", "meta_err", "meta_analytic_err", "ntk_err_max", "meta_err_max",
                  "meta_analytic_err_max")


def kernel_report(result: KernelCheckResult) -> str:
    """The Markdown text `verify-kernels` prints (and writes as kernels.md)."""
    c = result.config
    verdict = lambda ok: "shrinks" if ok else "DOES NOT SHRINK"  # noqa: E731
    return (
        f"ReLU MLP, depth {c.depth}, d={c.d}, {c.n_tasks} tasks x ({c.n_support} support + "
        f"{c.n_query} query), {c.inner_steps} inner steps of lr {result.inner_lr:.4g}, "
        f"seed {c.seed}, mean over {c.repeats} networks per width.\n"
        "ntk_err: empirical vs analytic NTK; meta_err: composite MetaNTK (eq. 10-11, from the "
        "empirical NTK) vs second-order definition (eq. 4); meta_analytic_err: composite vs "
        "analytic MetaNTK. Relative Frobenius errors.\n\n"
        + rows_table(result.rows, KERNEL_COLUMNS)
        + f"\n(a) NTK error {verdict(result.ntk_shrinks)} with width; "
        f"(b) MetaNTK error {verdict(result.meta_shrinks)} with width.\n"
    )


def write_kernel_outputs(result: KernelCheckResult, out_dir: Path) -> list[Path]:
    """kernels.csv, kernels.md and kernel_errors.png (log-log error vs width) in `out_dir`."""
    out_dir = Path(out_dir)
    paths = [
        store.write_text_atomic(out_dir / "kernels.csv", _csv_text(result.rows)),
        store.write_text_atomic(out_dir / "kernels.md", kernel_report(result)),
    ]
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4))
    ax = fig.add_subplot()
    widths = [r["width"] for r in result.rows]
    for key, label in (("ntk_err", "(a) NTK: empirical vs analytic"),
                       ("meta_err", "(b) MetaNTK: composite vs second-order"),
                       ("meta_analytic_err", "(c) MetaNTK: composite vs analytic")):
        ax.loglog(widths, [r[key] for r in result.rows], "o-", label=label)
    _reference_slope(ax, widths, result.rows[0]["ntk_err"])
    ax.set_xlabel("width")
    ax.set_ylabel("relative Frobenius error")
    ax.legend(fontsize=7)
    paths.append(_save_figure(fig, out_dir / "kernel_errors.png"))
    return paths


def _reference_slope(ax: Any, widths: Sequence[int], start: float) -> None:
    """A width^-1/2 guide line, and the measured widths as the only x ticks (matplotlib's
    minor log-scale labels overlap on a short width range)."""
    from matplotlib.ticker import NullFormatter, NullLocator

    ax.loglog(widths, [start * math.sqrt(widths[0] / w) for w in widths], "k:", lw=1,
              label="width^-1/2 reference")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(list(widths), [str(w) for w in widths])


THEORY_COLUMNS = ("width", "err_analytic", "err_empirical", "loss_ratio", "log_rate",
                  "loss_curve_err", "test_mse")


def theory_report(result: TheoryResult) -> str:
    """The Markdown text `verify-theory` prints (and writes as theory.md)."""
    c = result.config
    verdict = "shrinks" if result.error_shrinks else "DOES NOT SHRINK"
    return (
        f"MAML (second order, square loss) on ReLU MLPs, depth {c.depth}, d={c.d}: {c.n_train_tasks} "
        f"training / {c.n_test_tasks} test sinusoid tasks x ({c.n_support} support + {c.n_query} query); "
        f"{c.inner_steps} inner step(s) of lr {result.inner_lr:.4g}; {c.outer_steps} full-batch outer "
        f"steps of lr {result.outer_lr:.4g}; seed {c.seed}; mean over {c.repeats} networks per width.\n"
        "err_analytic: trained test meta-outputs vs Theorem 2 (eq. 12) with the analytic MetaNTK; "
        "err_empirical: same with the network's initial NTK; loss_ratio: final / initial loss; log_rate: slope of log(loss) per step "
        "(Theorem 1: linear convergence); loss_curve_err: max |log loss - log kernel prediction|; "
        "test_mse: trained meta-outputs vs test targets.\n\n"
        + rows_table(result.rows, THEORY_COLUMNS)
        + f"\nTheorem-2 prediction error (analytic MetaNTK) {verdict} with width.\n"
    )


def write_theory_outputs(result: TheoryResult, out_dir: Path) -> list[Path]:
    """theory.csv, theory.md, losses.csv, predictions.csv and three PNG plots in `out_dir`."""
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    paths = [
        store.write_text_atomic(out_dir / "theory.csv", _csv_text(result.rows)),
        store.write_text_atomic(out_dir / "theory.md", theory_report(result)),
        store.write_text_atomic(out_dir / "losses.csv", _csv_text(result.loss_rows)),
        store.write_text_atomic(out_dir / "predictions.csv", _csv_text(result.prediction_rows)),
    ]
    widths = [r["width"] for r in result.rows]

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for i, width in enumerate(widths):
        mine = [r for r in result.loss_rows if r["width"] == width]
        color = f"C{i}"
        ax.semilogy([r["step"] for r in mine], [r["loss"] for r in mine], color=color, label=f"MAML, width {width}")
        ax.semilogy([r["step"] for r in mine], [r["kernel_prediction"] for r in mine], "--", color=color, lw=1)
    ax.set_xlabel("outer step")
    ax.set_ylabel("training loss (dashed: MetaNTK prediction)")
    ax.set_title("Theorem 1: linear convergence of MAML")
    ax.legend(fontsize=7)
    paths.append(_save_figure(fig, out_dir / "loss.png"))

    fig = Figure(figsize=(5, 4))
    ax = fig.add_subplot()
    ax.loglog(widths, [r["err_analytic"] for r in result.rows], "o-", label="vs eq. 12, analytic MetaNTK")
    ax.loglog(widths, [r["err_empirical"] for r in result.rows], "s-", label="vs eq. 12, initial empirical NTK")
    _reference_slope(ax, widths, result.rows[0]["err_analytic"])
    ax.set_xlabel("width")
    ax.set_ylabel("relative error of trained meta-outputs")
    ax.set_title("Theorem 2: kernel-regression prediction")
    ax.legend(fontsize=7)
    paths.append(_save_figure(fig, out_dir / "prediction_error.png"))

    fig = Figure(figsize=(4 * len(widths), 4))
    for i, width in enumerate(widths):
        ax = fig.add_subplot(1, len(widths), i + 1)
        mine = [r for r in result.prediction_rows if r["width"] == width]
        pred = [r["predicted"] for r in mine]
        ax.plot(pred, [r["trained"] for r in mine], "o", ms=4)
        lo, hi = min(pred), max(pred)
        ax.plot([lo, hi], [lo, hi], "k:", lw=1)
        ax.set_xlabel("eq. 12 prediction")
        if i == 0:
            ax.set_ylabel("trained MAML meta-output")
        ax.set_title(f"width {width}")
    paths.append(_save_figure(fig, out_dir / "prediction_scatter.png"))
    return paths
