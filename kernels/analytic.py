"""Infinite-width NNGP and NTK of fully connected ReLU networks, and the MetaNTK built on them.

What it is for: the theory checks (`metantk-nas verify-kernels`, `verify-theory`) compare
finite-width empirical kernels and trained MAML networks with these closed forms.

Network (NTK parameterisation, the finite-width twin is `trainers.maml.ReLUMLP`): every
trainable parameter is drawn N(0, 1) and the scale sits in the forward pass,

    h^1(x)     = sqrt(weight_var / d)   W^1 x          + sqrt(bias_var) b^1
    h^{l+1}(x) = sqrt(weight_var / n_l) W^{l+1} relu(h^l(x)) + sqrt(bias_var) b^{l+1}
    f(x)       = h^{depth+1}(x)

with `depth` hidden ReLU layers. As every width n_l -> infinity (Jacot et al. 2018; Arora et
al. 2019, "On Exact Computation with an Infinitely Wide Neural Net", eq. 3-5, with
c_sigma = weight_var):

    Sigma^1(x, x')     = weight_var * <x, x'> / d + bias_var                 (NNGP of h^1)
    Sigma^{l+1}(x, x') = weight_var * E[relu(u) relu(v)] + bias_var          (NNGP of h^{l+1})
    dSigma^{l+1}(x,x') = weight_var * E[relu'(u) relu'(v)]
    Theta^1            = Sigma^1
    Theta^{l+1}        = Sigma^{l+1} + Theta^l * dSigma^{l+1}                (NTK of h^{l+1})

where (u, v) ~ N(0, [[Sigma^l(x,x), Sigma^l(x,x')], [Sigma^l(x,x'), Sigma^l(x',x')]]). The
Gaussian expectations are the arc-cosine kernels of degree 1 and 0 (Cho & Saul 2009): with
rho = cos(angle) the correlation,

    E[relu(u) relu(v)]   = sqrt(Sigma(x,x) Sigma(x',x')) * (sin(angle) + (pi - angle) cos(angle)) / (2 pi)
    E[relu'(u) relu'(v)] = (pi - angle) / (2 pi).

The NTK counts gradients with respect to every parameter drawn above: with `bias_var > 0`
that includes the biases, so compare it with an empirical NTK over all parameters. The
default `weight_var = 2` keeps the diagonal of Sigma constant across layers (He scaling).
Everything is computed in float64 on the inputs' device.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from kernels.meta import meta_ntk

__all__ = [
    "relu_nngp_ntk",
    "analytic_ntk",
    "analytic_nngp",
    "analytic_meta_ntk",
    "arccos_expectations",
]


def _check_inputs(x1: Tensor, x2: Tensor | None, depth: int, weight_var: float, bias_var: float) -> Tensor:
    if x1.ndim != 2:
        raise ValueError(f"x1 must be a (N, d) matrix of inputs, got shape {tuple(x1.shape)}; "
                         "flatten the inputs first")
    if x2 is not None and (x2.ndim != 2 or x2.shape[1] != x1.shape[1]):
        raise ValueError(f"x2 must be a (M, d) matrix with d = {x1.shape[1]} like x1, got shape "
                         f"{tuple(x2.shape)}")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise ValueError(f"depth (number of hidden ReLU layers) must be an int >= 0, got {depth!r}")
    if not (weight_var > 0 and math.isfinite(weight_var)):
        raise ValueError(f"weight_var must be a finite number > 0, got {weight_var!r}")
    if not (bias_var >= 0 and math.isfinite(bias_var)):
        raise ValueError(f"bias_var must be a finite number >= 0, got {bias_var!r}")
    return x1 if x2 is None else x2


def arccos_expectations(cov: Tensor, var1: Tensor, var2: Tensor) -> tuple[Tensor, Tensor]:
    """Gaussian ReLU expectations for (u, v) with Var u = var1, Var v = var2, Cov = cov.

    Shapes: `cov` (N, M), `var1` (N,), `var2` (M,). Returns
    `(E[relu(u) relu(v)], E[relu'(u) relu'(v)])`, both (N, M), with relu'(0) = 0 as torch
    differentiates it: a row whose variance is 0 (u == 0 almost surely) gives 0 in both.
    """
    norm = torch.sqrt(var1[:, None] * var2[None, :])
    degenerate = norm <= 0
    # The correlation can leave [-1, 1] by rounding when x == x'; clamp before arccos.
    rho = torch.where(degenerate, torch.zeros_like(cov), cov / torch.where(degenerate, 1.0, norm))
    rho = rho.clamp(-1.0, 1.0)
    angle = torch.arccos(rho)
    e_relu = norm * (torch.sqrt(1.0 - rho * rho) + (math.pi - angle) * rho) / (2.0 * math.pi)
    e_step = (math.pi - angle) / (2.0 * math.pi)
    e_step = torch.where(degenerate, torch.zeros_like(e_step), e_step)
    return e_relu, e_step


def relu_nngp_ntk(
    x1: Tensor,
    x2: Tensor | None = None,
    depth: int = 1,
    *,
    weight_var: float = 2.0,
    bias_var: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """NNGP and NTK of the output of an infinitely wide ReLU MLP (module docstring).

    x1: (N, d), x2: (M, d) or None (= x1). depth: number of hidden ReLU layers (0 = a linear
    model). Returns `(nngp, ntk)`, each float64 (N, M): `nngp = Sigma^{depth+1}` is the
    covariance of the scalar output at initialisation, `ntk = Theta^{depth+1}` its tangent
    kernel (one output unit; a k-output network has `ntk x I_k`).
    """
    x2 = _check_inputs(x1, x2, depth, weight_var, bias_var)
    a = x1.to(torch.float64)
    b = x2.to(torch.float64)
    d = a.shape[1]
    cov = weight_var * (a @ b.T) / d + bias_var
    var1 = weight_var * (a * a).sum(1) / d + bias_var
    var2 = weight_var * (b * b).sum(1) / d + bias_var
    ntk = cov.clone()
    for _ in range(depth):
        e_relu, e_step = arccos_expectations(cov, var1, var2)
        # Diagonals: angle 0, so E[relu(u)^2] = var / 2 (the recursion stays on the diagonal).
        var1 = weight_var * var1 / 2.0 + bias_var
        var2 = weight_var * var2 / 2.0 + bias_var
        cov = weight_var * e_relu + bias_var
        ntk = cov + ntk * (weight_var * e_step)
    return cov, ntk


def analytic_ntk(x1: Tensor, x2: Tensor | None = None, depth: int = 1, *,
                 weight_var: float = 2.0, bias_var: float = 0.0) -> Tensor:
    """Infinite-width NTK `Theta^{depth+1}(x1, x2)`: float64 (N, M). See `relu_nngp_ntk`."""
    return relu_nngp_ntk(x1, x2, depth, weight_var=weight_var, bias_var=bias_var)[1]


def analytic_nngp(x1: Tensor, x2: Tensor | None = None, depth: int = 1, *,
                  weight_var: float = 2.0, bias_var: float = 0.0) -> Tensor:
    """Infinite-width NNGP `Sigma^{depth+1}(x1, x2)`: float64 (N, M). See `relu_nngp_ntk`."""
    return relu_nngp_ntk(x1, x2, depth, weight_var=weight_var, bias_var=bias_var)[0]


def analytic_meta_ntk(
    x: Tensor,
    tasks: Sequence[tuple[Tensor, Tensor]],
    depth: int = 1,
    *,
    weight_var: float = 2.0,
    bias_var: float = 0.0,
    inner_time: float = math.inf,
    reg: float = 1e-3,
    inner_lr: float | None = None,
    inner_steps: int | None = None,
) -> Tensor:
    """Infinite-width MetaNTK of MAML (paper eq. 10-11) over the query samples of `tasks`.

    x: (N, d) every sample (queries and supports). tasks: `(query_idx, support_idx)` index
    tensors into the rows of `x`, as `kernels.meta.meta_ntk`. The NTK over all samples is
    `analytic_ntk(x, x, depth)`; the inner-loop kernel is the same NTK (MAML), and the
    inner-loop options (`inner_time`, `reg`, or the discrete `inner_lr`/`inner_steps`) go
    to `kernels.meta.meta_ntk` unchanged. Returns float64 (Q, Q), Q = total query count.
    """
    theta = analytic_ntk(x, None, depth, weight_var=weight_var, bias_var=bias_var)
    return meta_ntk(theta, tasks, inner=None, inner_time=inner_time, reg=reg,
                    inner_lr=inner_lr, inner_steps=inner_steps)
