"""MAML with square loss on synthetic regression tasks, and the kernel-regression prediction
of its trained meta-outputs (paper Theorems 1 and 2), for the theory checks.

What it is for: `metantk-nas verify-theory` trains wide ReLU MLPs (`ReLUMLP`, NTK
parameterisation, the finite-width twin of `kernels.analytic`) with full-batch MAML and
compares the result with the MetaNTK prediction. Pure torch; the kernels are passed in,
so the prediction helpers are plain linear algebra. The gradient-descent filter `gd_filter`
applies the spectral weights of `kernels.meta` (the MetaNTK's discrete inner loop), so the
theory check and the kernel it checks share one formula.

Conventions (shared with `kernels.second_order` and the discrete form of `kernels.meta`):
- inner loop on task i: s steps of gradient descent, step `inner_lr`, on
  l_i(theta) = 1/2 ||f_theta(X'_i) - Y'_i||^2 (sum over the support set);
- meta-output F_i(theta) = f_{theta_i^{(s)}}(X_i) on the query set;
- outer loss L(theta) = 1/2 sum_i ||F_i(theta) - Y_i||^2 (sum over tasks and queries),
  full-batch gradient descent theta <- theta - outer_lr grad L, all parameters, second-order
  terms included (the true MAML gradient, not first-order MAML).
For a network linear in theta these give, with Phi the MetaNTK over the training queries
and r_t = F(theta_t) - Y the training residual, r_{t+1} = (I - outer_lr Phi) r_t: the loss
falls linearly on a log scale (Theorem 1) when outer_lr < 2 / lambda_max(Phi).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from kernels.meta import spectral_weights

__all__ = [
    "ReLUMLP",
    "RegressionTask",
    "MAMLResult",
    "sample_sinusoid_tasks",
    "meta_outputs",
    "maml_loss",
    "train_maml",
    "gd_filter",
    "linearised_adaptation",
    "kernel_regression_prediction",
    "predicted_losses",
]


class ReLUMLP(nn.Module):
    """Fully connected ReLU network in NTK parameterisation (see `kernels.analytic`).

    `depth` hidden layers of `width` units; every parameter ~ N(0, 1) drawn from
    `generator` (a fresh generator seeded 0 when None; never the global RNG) on CPU and
    copied to `device`; layer l computes sqrt(weight_var / fan_in) W x + sqrt(bias_var) b.
    The weights live in bias-free `nn.Linear` modules that the forward pass calls (so
    module hooks, e.g. the NTK "hooks" backend, see them); biases are a separate
    `ParameterList` that exists only when `bias_var > 0`. Input (n, d) -> output (n, out).
    """

    def __init__(self, d: int, width: int, depth: int, out: int = 1, *, weight_var: float = 2.0,
                 bias_var: float = 0.0, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> None:
        super().__init__()
        for name, value, low in (("d", d, 1), ("width", width, 1), ("depth", depth, 0), ("out", out, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"ReLUMLP {name} must be an int >= {low}, got {value!r}")
        if not (weight_var > 0 and math.isfinite(weight_var)) or not (bias_var >= 0 and math.isfinite(bias_var)):
            raise ValueError(f"ReLUMLP needs weight_var > 0 and bias_var >= 0, got {weight_var!r}, {bias_var!r}")
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        sizes = [d] + [width] * depth + [out]
        self.layers = nn.ModuleList(
            nn.Linear(a, b, bias=False, dtype=dtype, device=device) for a, b in zip(sizes[:-1], sizes[1:])
        )
        self.biases = nn.ParameterList(
            nn.Parameter(torch.empty(b, dtype=dtype, device=device)) for b in sizes[1:]
        ) if bias_var > 0 else None
        self.weight_var = float(weight_var)
        self.bias_var = float(bias_var)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        h = x
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = math.sqrt(self.weight_var / layer.in_features) * layer(h)
            if self.biases is not None:
                h = h + math.sqrt(self.bias_var) * self.biases[i]
            if i < last:
                h = torch.relu(h)
        return h


@dataclass(frozen=True)
class RegressionTask:
    """One few-shot regression task: support (n_s, d) -> (n_s,), query (n_q, d) -> (n_q,)."""

    x_support: Tensor
    y_support: Tensor
    x_query: Tensor
    y_query: Tensor


def sample_sinusoid_tasks(count: int, *, d: int, n_support: int, n_query: int,
                          generator: torch.Generator, dtype: torch.dtype = torch.float64,
                          device: torch.device | str | None = None) -> list[RegressionTask]:
    """Random-sinusoid regression tasks in R^d: y = a sin(<u, x> + phase).

    Inputs lie on the sphere of radius sqrt(d) (so the analytic kernels have a constant
    diagonal); per task u ~ N(0, I/d) (so <u, x> ~ N(0, 1)), a ~ U[0.5, 2], phase ~
    U[0, 2 pi]. Everything is drawn from `generator` on CPU, then moved to `device`.
    """
    for name, value in (("count", count), ("d", d), ("n_support", n_support), ("n_query", n_query)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"sample_sinusoid_tasks: {name} must be an int >= 1, got {value!r}")
    tasks = []
    for _ in range(count):
        x = torch.randn(n_support + n_query, d, generator=generator, dtype=torch.float64)
        x = x * (math.sqrt(d) / x.norm(dim=1, keepdim=True))
        u = torch.randn(d, generator=generator, dtype=torch.float64) / math.sqrt(d)
        amp = 0.5 + 1.5 * torch.rand((), generator=generator, dtype=torch.float64)
        phase = 2 * math.pi * torch.rand((), generator=generator, dtype=torch.float64)
        y = amp * torch.sin(x @ u + phase)
        x, y = x.to(device=device, dtype=dtype), y.to(device=device, dtype=dtype)
        tasks.append(RegressionTask(x[:n_support], y[:n_support], x[n_support:], y[n_support:]))
    return tasks


def _adapt(model: nn.Module, params: dict[str, Tensor], task: RegressionTask, inner_lr: float,
           inner_steps: int, create_graph: bool) -> dict[str, Tensor]:
    """s inner gradient steps on 1/2 ||f(X') - Y'||^2; with create_graph the result stays
    differentiable in `params` (second-order MAML)."""
    names = list(params)
    p = params
    for _ in range(inner_steps):
        pred = functional_call(model, p, (task.x_support,)).reshape(-1)
        loss = 0.5 * (pred - task.y_support.reshape(-1)).pow(2).sum()
        grads = torch.autograd.grad(loss, [p[n] for n in names], create_graph=create_graph)
        p = {n: p[n] - inner_lr * g for n, g in zip(names, grads)}
    return p


def meta_outputs(model: nn.Module, params: dict[str, Tensor], tasks: Sequence[RegressionTask], *,
                 inner_lr: float, inner_steps: int, create_graph: bool = False) -> Tensor:
    """Concatenated meta-outputs F_i = f_{theta_i^{(s)}}(X_i) over the tasks' query sets: (Q,).

    `params` must require grad when `inner_steps > 0` (the inner loop differentiates them).
    `create_graph=True` keeps the graph through the inner loop, for the outer gradient.
    """
    outs = []
    for task in tasks:
        p_i = _adapt(model, params, task, inner_lr, inner_steps, create_graph)
        outs.append(functional_call(model, p_i, (task.x_query,)).reshape(-1))
    return torch.cat(outs)


def maml_loss(outputs: Tensor, tasks: Sequence[RegressionTask]) -> Tensor:
    """Outer loss L = 1/2 sum_i ||F_i - Y_i||^2 for concatenated meta-outputs `outputs` (Q,)."""
    targets = torch.cat([t.y_query.reshape(-1) for t in tasks])
    return 0.5 * (outputs - targets).pow(2).sum()


@dataclass(frozen=True)
class MAMLResult:
    """`losses`: float64 (outer_steps + 1,), L(theta_t) for t = 0..outer_steps (the last one
    after the final update); `params`: the trained parameters (detached)."""

    losses: Tensor
    params: dict[str, Tensor]


def train_maml(model: nn.Module, tasks: Sequence[RegressionTask], *, inner_lr: float, inner_steps: int,
               outer_lr: float, outer_steps: int) -> MAMLResult:
    """Full-batch second-order MAML by gradient descent (conventions: module docstring).

    Trains every parameter of `model` from its current values for `outer_steps` steps; the
    model itself is not modified (functional updates). Raises ValueError on bad settings
    or when the loss becomes non-finite (outer_lr too large: it must stay below
    2 / lambda_max of the MetaNTK).
    """
    if not tasks:
        raise ValueError("train_maml needs at least one training task")
    for name, value in (("inner_steps", inner_steps), ("outer_steps", outer_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"train_maml: {name} must be an int >= 0, got {value!r}")
    if not (inner_lr >= 0 and outer_lr > 0):
        raise ValueError(f"train_maml: need inner_lr >= 0 and outer_lr > 0, got {inner_lr!r}, {outer_lr!r}")
    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    losses = []
    for step in range(outer_steps + 1):
        out = meta_outputs(model, params, tasks, inner_lr=inner_lr, inner_steps=inner_steps,
                           create_graph=step < outer_steps)
        loss = maml_loss(out, tasks)
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            raise ValueError(f"MAML loss became {losses[-1]} at outer step {step}: outer_lr={outer_lr} "
                             "is too large (keep it below 2 / lambda_max of the MetaNTK)")
        if step == outer_steps:
            break
        grads = torch.autograd.grad(loss, list(params.values()))
        with torch.no_grad():
            params = {n: (p - outer_lr * g).requires_grad_(True) for (n, p), g in zip(params.items(), grads)}
    return MAMLResult(torch.tensor(losses, dtype=torch.float64),
                      {n: p.detach() for n, p in params.items()})


def gd_filter(matrix: Tensor, lr: float, steps: int | None, *, rcond: float = 1e-10) -> Tensor:
    """M^{-1} (I - (I - lr M)^steps) for a symmetric PSD `matrix` (n, n), float64.

    This is what `steps` gradient-descent steps of size `lr` on 1/2 ||M-linear residual||^2
    accumulate: lr * sum_{k<steps} (I - lr M)^k. Computed from one `eigh`, so it is exact
    for singular M (limit lr*steps on a zero eigenvalue). `steps=None` means converged:
    the pseudo-inverse of M (eigenvalues below rcond * lambda_max dropped).
    """
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"gd_filter needs a square matrix, got shape {tuple(matrix.shape)}")
    m = matrix.to(torch.float64)
    evals, evecs = torch.linalg.eigh(0.5 * (m + m.T))
    if steps is None:
        keep = evals > rcond * evals.abs().max().clamp_min(torch.finfo(torch.float64).tiny)
        h = torch.where(keep, 1.0 / torch.where(keep, evals, 1.0), torch.zeros_like(evals))
    else:
        # f(s) = (1 - (1 - lr s)^steps) / s, limit lr * steps at s = 0: the discrete inner-loop
        # weights of the MetaNTK (stable for tiny lr * s), the same function, not a copy.
        h = spectral_weights(evals, reg=0.0, inner_lr=lr, inner_steps=steps)
    return (evecs * h) @ evecs.T


def linearised_adaptation(theta_qs: Tensor, theta_ss: Tensor, f0_query: Tensor, f0_support: Tensor,
                          y_support: Tensor, *, inner_lr: float, inner_steps: int | None) -> Tensor:
    """Meta-output of the linearised network on one task (the G term of paper eq. 12).

    G(X, X', Y') = f0(X) + Theta(X, X') T (Y' - f0(X')), T = K^{-1}(I - (I - inner_lr K)^s),
    K = Theta(X', X'). Shapes: theta_qs (n_q, n_s), theta_ss (n_s, n_s), f0_query (n_q,),
    f0_support and y_support (n_s,). Returns float64 (n_q,).
    """
    t = gd_filter(theta_ss, inner_lr, inner_steps)
    resid = (y_support.to(torch.float64) - f0_support.to(torch.float64)).reshape(-1)
    return f0_query.to(torch.float64).reshape(-1) + theta_qs.to(torch.float64) @ (t @ resid)


def kernel_regression_prediction(phi_train: Tensor, phi_cross: Tensor, g_train: Tensor, y_train: Tensor,
                                 g_test: Tensor, *, outer_lr: float | None = None,
                                 outer_steps: int | None = None) -> Tensor:
    """Meta-outputs of trained MAML on new tasks, predicted by kernel regression (paper eq. 12).

    Theorem 2 (infinitely wide networks, outer gradient flow to convergence):

        F_trained(X, X', Y') = G(X, X', Y') + Phi((X,X'), train) Phi^{-1} (Y - G(train))

    with G the inner-loop-adapted output of the network at initialisation (see
    `linearised_adaptation`; for the test task it uses the test task's own support set),
    Phi the MetaNTK over the training queries and Y their targets. Derivation for finite
    outer gradient descent on L = 1/2 ||F - Y||^2 with a network linear in theta:
    r_t = (I - eta Phi)^t r_0 with r_0 = G(train) - Y, theta_t - theta_0 = -eta J^T
    sum_{k<t} r_k = -J^T Phi^{-1}(I - (I - eta Phi)^t) r_0, and the test output moves by
    J_test (theta_t - theta_0). So here

        F_test = g_test + phi_cross Phi^{-1}(I - (I - outer_lr Phi)^t)(y_train - g_train),

    which is eq. 12 for t -> infinity (`outer_steps=None`, pseudo-inverse of Phi).
    Shapes: phi_train (Q, Q), phi_cross (Q_test, Q), g_train and y_train (Q,), g_test
    (Q_test,). Returns float64 (Q_test,).
    """
    if outer_steps is not None and outer_lr is None:
        raise ValueError("kernel_regression_prediction: outer_steps needs outer_lr (or pass "
                         "outer_steps=None for the converged prediction of eq. 12)")
    h = gd_filter(phi_train, outer_lr or 0.0, outer_steps)
    resid = (y_train.to(torch.float64) - g_train.to(torch.float64)).reshape(-1)
    return g_test.to(torch.float64).reshape(-1) + phi_cross.to(torch.float64) @ (h @ resid)


def predicted_losses(phi_train: Tensor, g_train: Tensor, y_train: Tensor, *, outer_lr: float,
                     outer_steps: int) -> Tensor:
    """Kernel prediction of the MAML training loss: L_t = 1/2 ||(I - eta Phi)^t r_0||^2.

    r_0 = g_train - y_train. Returns float64 (outer_steps + 1,), comparable with
    `MAMLResult.losses` (Theorem 1: linear convergence, rate set by lambda_min(Phi)).
    """
    m = phi_train.to(torch.float64)
    evals, evecs = torch.linalg.eigh(0.5 * (m + m.T))
    coef = evecs.T @ (g_train.to(torch.float64) - y_train.to(torch.float64)).reshape(-1)
    steps = torch.arange(outer_steps + 1, dtype=torch.float64, device=m.device)
    decay = (1.0 - outer_lr * evals)[None, :] ** steps[:, None]
    return 0.5 * ((decay * coef[None, :]) ** 2).sum(1)
