"""The theory checks behind `metantk-nas verify-kernels` and `metantk-nas verify-theory`.

What it is for: measure, per network width, how close finite-width MAML and its kernels are
to the infinite-width theory of the paper, and whether the gap closes as width grows.

- `check_kernels`: (a) empirical NTK of a random `ReLUMLP` vs the analytic NTK;
  (b) the composite MetaNTK (paper eq. 10-11, discrete inner loop, from the empirical NTK)
  vs the MetaNTK by definition (eq. 4, `second_order_meta_ntk`); (c) composite vs the
  analytic MetaNTK. Relative Frobenius errors, averaged over `repeats` random networks.
- `check_theory`: full-batch second-order MAML on synthetic sinusoid tasks per width; the
  training loss per outer step (Theorem 1: linear convergence) against its kernel
  prediction, and the trained meta-outputs on new tasks against the kernel-regression
  prediction of Theorem 2 (eq. 12) built from the analytic MetaNTK (column `err_analytic`,
  the theorem as stated) and from the network's own initial NTK (`err_empirical`, the
  linearisation alone).

Every random draw comes from a generator seeded by (seed, width, repeat): rerunning with
the same arguments reproduces the figures. Results are pandas-free lists of dicts; the
report text and the CSV/Markdown/PNG files are written by `harness.theory_report`.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor

from kernels.analytic import analytic_ntk
from kernels.meta import meta_ntk
from kernels.ntk import empirical_ntk
from kernels.second_order import second_order_meta_ntk, stack_tasks
from trainers.maml import (
    RegressionTask,
    ReLUMLP,
    kernel_regression_prediction,
    linearised_adaptation,
    meta_outputs,
    predicted_losses,
    sample_sinusoid_tasks,
    train_maml,
)
from trainers.seeds import theory_seed

__all__ = [
    "KernelCheckConfig",
    "TheoryConfig",
    "check_kernels",
    "check_theory",
    "KernelCheckResult",
    "TheoryResult",
    "shrinks",
    "rel_error",
    "parse_widths",
    "torch_threads",
]


# ----------------------------------------------------------------------------- helpers


def parse_widths(text: str) -> tuple[int, ...]:
    """"256,1024,4096" -> (256, 1024, 4096); at least two increasing positive widths."""
    try:
        widths = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--widths must be comma-separated integers like 256,1024,4096, got {text!r}") from None
    _check_widths(widths)
    return widths


def _check_widths(widths: Sequence[int]) -> None:
    if len(widths) < 2 or any(w < 1 for w in widths) or list(widths) != sorted(set(widths)):
        raise ValueError(f"widths must be >= 2 distinct positive integers in increasing order "
                         f"(e.g. 256,1024,4096), got {tuple(widths)}")


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if isinstance(value, bool) or not ok or not math.isfinite(value):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with `n` intra-op torch threads, then restore the previous count.

    Why: these checks multiply tiny matrices, where extra threads only add synchronisation;
    on a shared 2-core machine 2 threads were measured 10-20x slower than 1.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"--threads must be an int >= 1, got {n!r}")
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _generator(*ids: int) -> torch.Generator:
    """A generator seeded by a tuple of ids (seed, width, repeat, ...), never global state."""
    return torch.Generator().manual_seed(theory_seed(*ids))


def rel_error(estimate: Tensor, reference: Tensor) -> float:
    """||estimate - reference||_F / ||reference||_F in float64."""
    ref = reference.to(torch.float64)
    return float((estimate.to(torch.float64) - ref).norm() / ref.norm())


def shrinks(errors: Sequence[float]) -> bool:
    """True when the error at the largest width is below the error at the smallest width.

    The errors are already averages over `repeats` random networks, and the widths span a
    large ratio (default 16x: the expected drop is 4x for a 1/sqrt(width) law), so the
    first-vs-last comparison is robust to the Monte-Carlo noise of single widths. A NaN
    counts as not shrinking.
    """
    first, last = float(errors[0]), float(errors[-1])
    return math.isfinite(first) and math.isfinite(last) and last < first


def _max_support_eig(theta: Tensor, tasks: Sequence[tuple[Tensor, Tensor]]) -> float:
    return max(float(torch.linalg.eigvalsh(theta[s][:, s]).max()) for _, s in tasks)


def _task_pairs(tasks: Sequence[RegressionTask]) -> list[tuple[Tensor, Tensor]]:
    return [(t.x_query, t.x_support) for t in tasks]


# ----------------------------------------------------------------------------- verify-kernels


@dataclass(frozen=True)
class KernelCheckConfig:
    """Settings of `verify-kernels` (defaults: about a minute on 2 CPU cores).

    Networks: `ReLUMLP(d, width, depth)` without biases (so the weight-only empirical NTK
    is the full one), float64. Data: `n_tasks` sinusoid tasks with `n_support` support
    and `n_query` query points in R^d (the support targets enter the second-order terms).
    Inner loop: `inner_steps` steps of `inner_lr`; when `inner_lr` is None it is
    `inner_lr_scale / lambda_max` of the analytic NTK's support blocks.
    """

    widths: tuple[int, ...] = (256, 1024, 4096)
    seed: int = 0
    depth: int = 1
    d: int = 6
    n_tasks: int = 3
    n_support: int = 3
    n_query: int = 3
    inner_steps: int = 2
    inner_lr: float | None = None
    inner_lr_scale: float = 0.5
    repeats: int = 3

    def __post_init__(self) -> None:
        _check_widths(self.widths)
        for name in ("depth", "d", "n_tasks", "n_support", "n_query", "inner_steps", "repeats"):
            value = getattr(self, name)
            low = 0 if name == "depth" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if self.inner_lr is not None:
            _check_positive("inner_lr", self.inner_lr)
        _check_positive("inner_lr_scale", self.inner_lr_scale)


@dataclass
class KernelCheckResult:
    """Per-width rows (errors are means over repeats; `*_max` the worst repeat), the
    inner learning rate used, and whether errors (a) and (b) shrink with width."""

    rows: list[dict[str, Any]]
    inner_lr: float
    ntk_shrinks: bool
    meta_shrinks: bool
    config: KernelCheckConfig = field(default_factory=KernelCheckConfig)

    @property
    def ok(self) -> bool:
        return self.ntk_shrinks and self.meta_shrinks


def _width_progress(widths: Sequence[int], repeats: int, desc: str, enabled: bool) -> Any:
    """Progress over the (width, repeat) networks; the widest take most of the time."""
    from trainers.progress import progress_bar

    return progress_bar(len(widths) * repeats, desc, "net", enabled=enabled, interval=10.0)


def check_kernels(config: KernelCheckConfig, *, progress: bool = False) -> KernelCheckResult:
    """Errors (a), (b), (c) of the module docstring, per width (see `KernelCheckConfig`).

    progress: show one step per (width, repeat) (`trainers.progress.progress_bar`)."""
    tasks = sample_sinusoid_tasks(config.n_tasks, d=config.d, n_support=config.n_support,
                                  n_query=config.n_query, generator=_generator(config.seed, 0))
    pairs = _task_pairs(tasks)
    x, index = stack_tasks(pairs)
    support_y = [t.y_support for t in tasks]
    theta_inf = analytic_ntk(x, x, config.depth)
    inner_lr = config.inner_lr or config.inner_lr_scale / _max_support_eig(theta_inf, index)
    steps = dict(inner_lr=inner_lr, inner_steps=config.inner_steps)
    # reg=0: the exact linearised inner loop, what the second-order definition reduces to.
    phi_inf = meta_ntk(theta_inf, index, reg=0.0, **steps)
    rows = []
    bar = _width_progress(config.widths, config.repeats, "verify-kernels", progress)
    for width in config.widths:
        errs: dict[str, list[float]] = {"ntk_err": [], "meta_err": [], "meta_analytic_err": []}
        for rep in range(config.repeats):
            bar.set_postfix(width=width, repeat=rep + 1)
            model = ReLUMLP(config.d, width, config.depth, generator=_generator(config.seed, width, rep))
            theta = empirical_ntk(model, x, params="all")
            phi_comp = meta_ntk(theta, index, reg=0.0, **steps)
            phi_def = second_order_meta_ntk(model, pairs, support_y=support_y, **steps)
            errs["ntk_err"].append(rel_error(theta, theta_inf))
            errs["meta_err"].append(rel_error(phi_comp, phi_def))
            errs["meta_analytic_err"].append(rel_error(phi_comp, phi_inf))
            bar.update(1)
        row: dict[str, Any] = {"width": width}
        for name, values in errs.items():
            row[name] = sum(values) / len(values)
            row[f"{name}_max"] = max(values)
        rows.append(row)
    bar.close()
    return KernelCheckResult(
        rows=rows,
        inner_lr=inner_lr,
        ntk_shrinks=shrinks([r["ntk_err"] for r in rows]),
        meta_shrinks=shrinks([r["meta_err"] for r in rows]),
        config=config,
    )


# ----------------------------------------------------------------------------- verify-theory


@dataclass(frozen=True)
class TheoryConfig:
    """Settings of `verify-theory` (defaults: a few minutes on 2 CPU cores).

    MAML on `n_train_tasks` sinusoid tasks, evaluated on `n_test_tasks` new ones, each with
    `n_support` + `n_query` points in R^d; `ReLUMLP(d, width, depth)` float64. Inner loop:
    `inner_steps` steps of `inner_lr_scale / lambda_max(support NTK blocks)`; outer loop:
    `outer_steps` full-batch steps of `outer_lr_scale / lambda_max(Phi)`, both eigenvalues
    of the analytic kernels (stable for every width since the empirical ones are close).
    Inputs in R^32 (nearly orthogonal points) keep Phi well conditioned (lambda_max /
    lambda_min ~ 7 here), so the Phi^{-1} of eq. 12 does not amplify the finite-width
    kernel fluctuations; 80 outer steps take the loss down ~1e-8, above float64 noise.
    """

    widths: tuple[int, ...] = (256, 1024, 4096)
    seed: int = 0
    depth: int = 1
    d: int = 32
    n_train_tasks: int = 5
    n_test_tasks: int = 3
    n_support: int = 4
    n_query: int = 4
    inner_steps: int = 1
    inner_lr_scale: float = 0.5
    outer_steps: int = 80
    outer_lr_scale: float = 1.0
    repeats: int = 3

    def __post_init__(self) -> None:
        _check_widths(self.widths)
        for name in ("depth", "d", "n_train_tasks", "n_test_tasks", "n_support", "n_query",
                     "inner_steps", "outer_steps", "repeats"):
            value = getattr(self, name)
            low = 0 if name in ("depth", "inner_steps") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        _check_positive("inner_lr_scale", self.inner_lr_scale)
        _check_positive("outer_lr_scale", self.outer_lr_scale)
        if self.outer_lr_scale >= 2:
            raise ValueError(f"outer_lr_scale must be < 2 (outer_lr = scale / lambda_max(Phi); "
                             f"2 or more diverges), got {self.outer_lr_scale}")


@dataclass
class TheoryResult:
    """Per-width summary `rows`, per-step `loss_rows` (first repeat), per-point
    `prediction_rows` (first repeat: trained vs predicted test meta-outputs), the learning
    rates, and whether the Theorem-2 error (analytic kernels) shrinks with width."""

    rows: list[dict[str, Any]]
    loss_rows: list[dict[str, Any]]
    prediction_rows: list[dict[str, Any]]
    inner_lr: float
    outer_lr: float
    config: TheoryConfig
    error_shrinks: bool

    @property
    def ok(self) -> bool:
        return self.error_shrinks


def _log_slope(losses: Tensor) -> float:
    """Least-squares slope of log(loss) against the step: the linear rate of Theorem 1."""
    y = torch.log(losses.clamp_min(torch.finfo(torch.float64).tiny))
    t = torch.arange(len(y), dtype=torch.float64)
    tc = t - t.mean()
    return float((tc * (y - y.mean())).sum() / (tc * tc).sum())


def _adapted_outputs(theta: Tensor, f0: Tensor, y: Tensor, index: Sequence[tuple[Tensor, Tensor]],
                     inner_lr: float, inner_steps: int) -> Tensor:
    """G over the query points of every task (concatenated), from kernel `theta` over all
    samples and the initial outputs `f0`/targets `y` (all samples, (N,))."""
    return torch.cat([
        linearised_adaptation(theta[q][:, s], theta[s][:, s], f0[q], f0[s], y[s],
                              inner_lr=inner_lr, inner_steps=inner_steps)
        for q, s in index
    ])


def _theorem2(theta: Tensor, f0: Tensor, y: Tensor, index: Sequence[tuple[Tensor, Tensor]], n_train: int,
              inner_lr: float, inner_steps: int, outer_lr: float, outer_steps: int) -> tuple[Tensor, Tensor, Tensor]:
    """(predicted test meta-outputs, predicted loss curve, Phi over train queries) from `theta`."""
    phi = meta_ntk(theta, index, reg=0.0, inner_lr=inner_lr, inner_steps=inner_steps)
    q_train = sum(int(q.numel()) for q, _ in index[:n_train])
    g = _adapted_outputs(theta, f0, y, index, inner_lr, inner_steps)
    y_q = torch.cat([y[q] for q, _ in index])
    pred = kernel_regression_prediction(phi[:q_train, :q_train], phi[q_train:, :q_train], g[:q_train],
                                        y_q[:q_train], g[q_train:], outer_lr=outer_lr, outer_steps=outer_steps)
    losses = predicted_losses(phi[:q_train, :q_train], g[:q_train], y_q[:q_train], outer_lr=outer_lr,
                              outer_steps=outer_steps)
    return pred, losses, phi[:q_train, :q_train]


def check_theory(config: TheoryConfig, *, progress: bool = False) -> TheoryResult:
    """Train MAML per width and compare with Theorems 1 and 2 (see module docstring).

    progress: show one step per (width, repeat) (`trainers.progress.progress_bar`)."""
    gen = _generator(config.seed, 1)
    sample = dict(d=config.d, n_support=config.n_support, n_query=config.n_query, generator=gen)
    train_tasks = sample_sinusoid_tasks(config.n_train_tasks, **sample)
    test_tasks = sample_sinusoid_tasks(config.n_test_tasks, **sample)
    all_tasks = train_tasks + test_tasks
    x, index = stack_tasks(_task_pairs(all_tasks))
    y = torch.cat([torch.cat([t.y_query, t.y_support]) for t in all_tasks])
    n_train = config.n_train_tasks
    y_test = torch.cat([t.y_query for t in test_tasks])

    theta_inf = analytic_ntk(x, x, config.depth)
    inner_lr = config.inner_lr_scale / _max_support_eig(theta_inf, index)
    phi_inf = meta_ntk(theta_inf, index[:n_train], reg=0.0, inner_lr=inner_lr, inner_steps=config.inner_steps)
    outer_lr = config.outer_lr_scale / float(torch.linalg.eigvalsh(phi_inf).max())
    lam_min = float(torch.linalg.eigvalsh(phi_inf).min())
    common = dict(inner_lr=inner_lr, inner_steps=config.inner_steps)

    rows, loss_rows, prediction_rows = [], [], []
    bar = _width_progress(config.widths, config.repeats, "verify-theory", progress)
    for width in config.widths:
        acc: dict[str, list[float]] = {k: [] for k in (
            "err_analytic", "err_empirical", "loss_ratio", "log_rate",
            "loss_curve_err", "test_mse")}
        for rep in range(config.repeats):
            bar.set_postfix(width=width, repeat=rep + 1)
            model = ReLUMLP(config.d, width, config.depth, generator=_generator(config.seed, width, rep))
            with torch.no_grad():
                f0 = model(x).reshape(-1)
            result = train_maml(model, train_tasks, outer_lr=outer_lr, outer_steps=config.outer_steps, **common)
            params = {n: p.clone().requires_grad_(True) for n, p in result.params.items()}
            trained_test = meta_outputs(model, params, test_tasks, **common).detach()
            pred_inf, loss_pred, _ = _theorem2(theta_inf, f0, y, index, n_train, inner_lr, config.inner_steps,
                                               outer_lr, config.outer_steps)
            theta_emp = empirical_ntk(model, x, params="all")
            pred_emp, _, _ = _theorem2(theta_emp, f0, y, index, n_train, inner_lr, config.inner_steps,
                                       outer_lr, config.outer_steps)
            acc["err_analytic"].append(rel_error(pred_inf, trained_test))
            acc["err_empirical"].append(rel_error(pred_emp, trained_test))
            acc["loss_ratio"].append(float(result.losses[-1] / result.losses[0]))
            acc["log_rate"].append(_log_slope(result.losses))
            # Compare the curves above the float64 floor (a converged loss is rounding noise).
            seen = loss_pred > 1e-24 * loss_pred[0]
            acc["loss_curve_err"].append(float((result.losses[seen].log() - loss_pred[seen].log()).abs().max()))
            acc["test_mse"].append(float((trained_test - y_test).pow(2).mean()))
            bar.update(1)
            if rep == 0:
                loss_rows += [{"width": width, "step": step, "loss": float(a), "kernel_prediction": float(b)}
                              for step, (a, b) in enumerate(zip(result.losses, loss_pred))]
                prediction_rows += [{"width": width, "point": i, "trained": float(a), "predicted": float(b),
                                     "target": float(c)}
                                    for i, (a, b, c) in enumerate(zip(trained_test, pred_inf, y_test))]
        row: dict[str, Any] = {"width": width}
        row.update({k: sum(v) / len(v) for k, v in acc.items()})
        rows.append(row)
    bar.close()
    return TheoryResult(rows=rows, loss_rows=loss_rows, prediction_rows=prediction_rows, inner_lr=inner_lr,
                        outer_lr=outer_lr, config=config,
                        error_shrinks=shrinks([r["err_analytic"] for r in rows]))
