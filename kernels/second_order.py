"""The MetaNTK of MAML by its definition: the Gram matrix of the meta-output's Jacobian.

What it is for: an oracle for the composite formula of `kernels.meta.meta_ntk` (paper
eq. 10-11), which assumes a linearised network. Here nothing is linearised: the meta-output
is computed through `s` real inner gradient steps and differentiated with torch.func, so
every second-order term (Hessian of the support loss) is included.

Definition (paper eq. 4, discrete inner loop). For task i with support set (X'_i, Y'_i) and
query set X_i, MAML's inner loop runs s gradient steps on the support loss

    l_i(theta) = 1/2 * || f_theta(X'_i) - Y'_i ||^2        (sum over the support set, factor 1/2)
    theta_i^{(k+1)} = theta_i^{(k)} - inner_lr * grad l_i(theta_i^{(k)}),   theta_i^{(0)} = theta

and the meta-output is F_i(theta) = f_{theta_i^{(s)}}(X_i). The MetaNTK is

    Phi = J J^T,   J = d(F_1, ..., F_N) / d theta   at theta = the model's current parameters.

Why this loss convention: for a network linear in theta with NTK K on the support set,
the support residual obeys r_{k+1} = (I - inner_lr K) r_k, so after s steps
F_i = f(X_i) + Theta(X_i, X'_i) T_i (Y'_i - f(X'_i)) with T_i = K^{-1}(I - (I - inner_lr K)^s):
exactly the discrete form of `kernels.meta.meta_ntk(theta, tasks, inner_lr=..., inner_steps=s)`.
A mean over the support set (or no factor 1/2) would rescale inner_lr by 1/n_s (or 2).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jacrev

__all__ = ["second_order_meta_ntk", "meta_output_fn", "stack_tasks", "select_params"]

PARAM_SETS = ("all", "weights")


def select_params(model: nn.Module, params: str = "all") -> dict[str, Tensor]:
    """Detached copies of the parameters the kernel differentiates.

    `params="all"`: every parameter (what MAML's full-network inner loop updates);
    `"weights"`: only the `.weight` of Linear and Conv layers (the `kernels.ntk` default);
    the others stay fixed at their values.
    """
    if params not in PARAM_SETS:
        raise KeyError(f"params must be one of {PARAM_SETS}, got {params!r}")
    chosen: dict[str, Tensor] = {}
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            if params == "weights" and not (
                p_name == "weight" and isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))
            ):
                continue
            chosen[f"{mod_name}.{p_name}" if mod_name else p_name] = p.detach()
    if not chosen:
        raise ValueError(f"model {type(model).__name__} has no parameters in the set {params!r}; "
                         "use params='all' or a model with Linear/Conv layers")
    return chosen


def stack_tasks(tasks_x: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """Concatenate `(x_query, x_support)` pairs into one batch plus index pairs.

    Rows are ordered task by task, queries first: [q_1, s_1, q_2, s_2, ...]. Returns
    `(x, tasks)` with `x` (N, ...) and `tasks` a list of `(query_idx, support_idx)` int64
    index tensors into `x`, the layout `kernels.meta.meta_ntk` takes.
    """
    _check_tasks(tasks_x)
    rows: list[Tensor] = []
    index: list[tuple[Tensor, Tensor]] = []
    start = 0
    for x_q, x_s in tasks_x:
        dev = x_q.device
        q_idx = torch.arange(start, start + x_q.shape[0], device=dev)
        start += x_q.shape[0]
        s_idx = torch.arange(start, start + x_s.shape[0], device=dev)
        start += x_s.shape[0]
        rows += [x_q, x_s]
        index.append((q_idx, s_idx))
    return torch.cat(rows), index


def _check_tasks(tasks_x: Sequence[tuple[Tensor, Tensor]]) -> None:
    if len(tasks_x) == 0:
        raise ValueError("tasks_x is empty: pass a list of (x_query, x_support) tensor pairs")
    for i, pair in enumerate(tasks_x):
        if len(pair) != 2:
            raise ValueError(f"tasks_x[{i}] must be a pair (x_query, x_support), got {len(pair)} items")
        x_q, x_s = pair
        if x_q.shape[0] == 0 or x_s.shape[0] == 0:
            raise ValueError(f"tasks_x[{i}] has an empty query or support set "
                             f"(shapes {tuple(x_q.shape)}, {tuple(x_s.shape)}); give each task >= 1 sample")


def meta_output_fn(
    model: nn.Module,
    tasks_x: Sequence[tuple[Tensor, Tensor]],
    support_y: Sequence[Tensor],
    *,
    inner_lr: float,
    inner_steps: int,
    fixed: dict[str, Tensor] | None = None,
) -> Callable[[dict[str, Tensor]], Tensor]:
    """The map theta -> concatenated meta-outputs (F_1, ..., F_N), flattened (Q,) or (Q*k,).

    Written with torch.func (functional_call + grad) so that `jacrev` of it differentiates
    through the inner loop, second-order terms included. `fixed` holds parameters that are
    neither adapted nor differentiated (e.g. biases when `params="weights"`).
    """
    fixed = dict(fixed or {})

    def forward(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(model, {**fixed, **p}, (x,)).reshape(-1)

    def support_loss(p: dict[str, Tensor], x_s: Tensor, y_s: Tensor) -> Tensor:
        return 0.5 * (forward(p, x_s) - y_s.reshape(-1)).pow(2).sum()

    loss_grad = grad(support_loss)

    def meta_outputs(p: dict[str, Tensor]) -> Tensor:
        outs = []
        for (x_q, x_s), y_s in zip(tasks_x, support_y):
            p_i = p
            for _ in range(inner_steps):
                g = loss_grad(p_i, x_s, y_s)
                p_i = {name: p_i[name] - inner_lr * g[name] for name in p_i}
            outs.append(forward(p_i, x_q))
        return torch.cat(outs)

    return meta_outputs


def second_order_meta_ntk(
    model: nn.Module,
    tasks_x: Sequence[tuple[Tensor, Tensor]],
    *,
    inner_lr: float,
    inner_steps: int,
    support_y: Sequence[Tensor] | None = None,
    params: str = "all",
) -> Tensor:
    """MetaNTK Phi = J J^T of the true MAML meta-output (module docstring, paper eq. 4).

    model: maps (n, ...) -> (n,) or (n, k), used in its current (initial) state and its
    own dtype (use float64 for exact comparisons). tasks_x: `(x_query (n_q, ...),
    x_support (n_s, ...))` per task. support_y: support targets per task, shaped like the
    model output on the support set; None = zeros (the targets only enter through the
    second-order terms: residual x Hessian of f). inner_lr, inner_steps: the inner loop
    (steps >= 0; 0 gives the plain NTK over the queries). params: "all" or "weights"
    (see `select_params`). Returns float64 (Q, Q), Q = sum of n_q (times k outputs, sample
    major), rows in task order.
    """
    _check_tasks(tasks_x)
    if isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 0:
        raise ValueError(f"inner_steps must be an int >= 0, got {inner_steps!r}")
    if not inner_lr >= 0:
        raise ValueError(f"inner_lr must be >= 0, got {inner_lr!r}")
    diff = select_params(model, params)
    fixed = {name: p.detach() for name, p in model.named_parameters() if name not in diff}
    fixed.update({name: b for name, b in model.named_buffers()})
    if support_y is None:
        with torch.no_grad():
            support_y = [torch.zeros_like(model(x_s)) for _, x_s in tasks_x]
    elif len(support_y) != len(tasks_x):
        raise ValueError(f"support_y has {len(support_y)} entries for {len(tasks_x)} tasks; "
                         "give one target tensor per task (or None for zeros)")
    fn = meta_output_fn(model, tasks_x, support_y, inner_lr=inner_lr, inner_steps=inner_steps,
                        fixed=fixed)
    jac = jacrev(fn)(diff)
    rows = next(iter(jac.values())).shape[0]
    # Flatten per parameter and accumulate the Gram in float64 without concatenating a
    # (Q, P) matrix: keeps peak memory at one parameter's Jacobian.
    phi = None
    for j in jac.values():
        j2 = j.reshape(rows, -1).to(torch.float64)
        block = j2 @ j2.T
        phi = block if phi is None else phi + block
    return phi
