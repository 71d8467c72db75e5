"""MetaNTK: the kernel of a meta-learned (MAML / ANIL) network over a batch of tasks.

Paper eq. 10-11 (design section 3). For tasks ``i = 1..n`` with query set ``X_i`` and
support set ``X'_i``, an outer kernel ``Theta`` (the NTK over all samples) and an inner
kernel ``K`` (``Theta`` itself for MAML; the head kernel for ANIL, where only the linear
head adapts in the inner loop):

    T_i = (K(X'_i, X'_i) + c I)^{-1} (I - exp(-t K(X'_i, X'_i)))        (continuous time t)
    A_i = K(X_i, X'_i) T_i
    Phi_ij = Theta(X_i, X_j) - A_i Theta(X'_i, X_j) - Theta(X_i, X'_j) A_j^T
             + A_i Theta(X'_i, X'_j) A_j^T

i.e. ``Phi = A Theta A^T`` where row block ``i`` of ``A`` is ``I`` on the columns of
``X_i`` and ``-A_i`` on the columns of ``X'_i``. ``Phi`` is PSD by construction.

Numerics: every ``T_i`` is a spectral function of the symmetric support block, so it is
evaluated from one batched float64 ``eigh`` per support-set size,
``T = U diag(f(s)) U^T``, never by ``inv``/``expm`` of an ill-conditioned matrix:

- continuous time (default): ``f(s) = -expm1(-t s) / (s + c)``; ``t = inf`` gives
  ``f(s) = 1 / (s + c)`` (the reference's ``(K + cI)^{-1}``); ``t = 0`` gives ``f = 0`` so
  ``Phi = Theta[q, q]``; where ``s + c == 0`` (only with ``c = 0``) the limit ``f = t``.
- discrete steps (``inner_lr``, ``inner_steps``): ``s`` gradient steps of a linearised
  network with square loss give ``T = K^{-1} (I - (I - lr K)^s)``, evaluated as
  ``f(s) = (1 - (1 - lr s)^steps) / (s + c)`` with the ``s + c == 0`` limit ``lr * steps``.
  Design decision: ``reg`` enters this form exactly as it enters the continuous one (the
  denominator is ``s + c`` in both), so one argument means one thing; pass ``reg=0`` for
  the exact linearised recursion (what the second-order definition, paper eq. 4, gives).

Eigenvalues of the inner support blocks below zero by rounding (``>= -1e-8 * max|s|``)
are clamped to zero; clearly negative ones mean the inner kernel is not PSD and raise.
Non-finite kernels give a NaN-filled ``Phi`` (whose condition number is ``inf``) instead
of an exception deep inside ``eigh``: a broken network is a score, not a crash.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["meta_ntk", "support_transfer", "spectral_weights"]

# Relative tolerance below which a negative eigenvalue of a PSD kernel is rounding noise.
_NEG_EIG_RTOL = 1e-8


def spectral_weights(
    s: Tensor,
    *,
    reg: float,
    inner_time: float = math.inf,
    inner_lr: float | None = None,
    inner_steps: int | None = None,
) -> Tensor:
    """The scalar function ``f`` with ``T = U diag(f(s)) U^T`` (see module docstring).

    s: eigenvalues, any shape, float64, assumed >= 0. Returns a tensor of the same shape.
    """
    denom = s + reg
    if inner_lr is not None:
        x = inner_lr * s
        # 1 - (1 - x)^n computed stably: -expm1(n log1p(-x)) for x < 1 avoids the
        # cancellation of the direct form for tiny lr*s; x >= 1 (a diverging step size)
        # falls back to the direct power, whose sign may alternate.
        safe_x = torch.where(x < 1.0, x, torch.zeros_like(x))
        stable = -torch.expm1(inner_steps * torch.log1p(-safe_x))
        direct = 1.0 - torch.pow(1.0 - x, inner_steps)
        numer = torch.where(x < 1.0, stable, direct)
        limit = inner_lr * inner_steps
    elif math.isinf(inner_time):
        numer = torch.ones_like(s)
        limit = math.inf
    else:
        numer = -torch.expm1(-inner_time * s)
        limit = inner_time
    zero = denom == 0
    safe = torch.where(zero, torch.ones_like(denom), denom)
    return torch.where(zero, torch.full_like(s, limit), numer / safe)


def _check_kernel(K: Tensor, name: str) -> Tensor:
    if not isinstance(K, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(K).__name__}")
    if K.dim() != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"{name} must be a square (M, M) kernel over all samples, "
                         f"got shape {tuple(K.shape)}")
    if K.is_complex() or not K.is_floating_point():
        raise ValueError(f"{name} must be a real floating-point matrix, got dtype {K.dtype}")
    return K.detach().to(torch.float64)


def _check_index(idx: Tensor, M: int, what: str, device: torch.device) -> Tensor:
    if not isinstance(idx, Tensor):
        idx = torch.as_tensor(idx)
    if idx.dim() != 1 or idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise ValueError(f"{what} must be a 1-D integer index tensor, got shape "
                         f"{tuple(idx.shape)} dtype {idx.dtype}")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= M):
        raise ValueError(f"{what} has indices outside [0, {M}) (min {int(idx.min())}, "
                         f"max {int(idx.max())}); indices must address rows of theta")
    return idx.to(device=device, dtype=torch.long)


def support_transfer(
    blocks: Tensor,
    *,
    reg: float,
    inner_time: float = math.inf,
    inner_lr: float | None = None,
    inner_steps: int | None = None,
) -> Tensor:
    """``T`` for a batch of symmetric PSD support blocks (one batched float64 eigh).

    blocks: (B, n, n) float64 inner-kernel blocks ``K(X'_i, X'_i)``. Returns (B, n, n).
    """
    sym = 0.5 * (blocks + blocks.transpose(-1, -2))
    s, U = torch.linalg.eigh(sym)
    scale = s.abs().amax(dim=-1, keepdim=True)
    if bool((s < -_NEG_EIG_RTOL * scale).any()):
        worst = float((s / scale.clamp_min(torch.finfo(s.dtype).tiny)).min())
        raise ValueError(f"inner kernel support block is not positive semi-definite "
                         f"(smallest eigenvalue / largest = {worst:.3g}); pass a PSD kernel "
                         "(an NTK or a feature Gram matrix)")
    s = s.clamp_min(0.0)
    f = spectral_weights(s, reg=reg, inner_time=inner_time, inner_lr=inner_lr,
                         inner_steps=inner_steps)
    return (U * f.unsqueeze(-2)) @ U.transpose(-1, -2)


def meta_ntk(
    theta: Tensor,
    tasks: Sequence[tuple[Tensor, Tensor]],
    *,
    inner: Tensor | None = None,
    inner_time: float = math.inf,
    reg: float = 1e-3,
    inner_lr: float | None = None,
    inner_steps: int | None = None,
) -> Tensor:
    """MetaNTK ``Phi`` over the query sets of a batch of tasks (paper eq. 10-11).

    theta: (M, M) outer kernel over all M samples (any float dtype; used in float64).
    tasks: sequence of ``(query_idx, support_idx)``, 1-D integer tensors indexing rows of
        ``theta``; sets may differ in size between tasks (supports are grouped by size,
        one batched eigh per size); an empty support set leaves that task un-adapted.
    inner: (M, M) inner-loop kernel (None: ``theta``, MAML; the head kernel
        ``anil_inner_kernel``: ANIL).
    inner_time: ``t`` = inner lr x steps of gradient flow, ``>= 0``, ``inf`` allowed
        (the reference's MAML setting). Ignored in favour of the discrete form when
        ``inner_lr``/``inner_steps`` are given, which must then both be given and
        ``inner_time`` left at its default.
    reg: ``c >= 0`` added to the support-block eigenvalues (reference 1e-3).
    Returns (Q, Q) float64 symmetric PSD on theta's device, Q = total query count, rows
    ordered task by task, within a task in ``query_idx`` order. NaN-filled if ``theta``
    or ``inner`` has a non-finite entry.
    Raises ValueError on bad shapes, indices out of range, negative t/reg, conflicting
    or incomplete time arguments, or an indefinite inner kernel.
    """
    th = _check_kernel(theta, "theta")
    M = th.shape[0]
    K = th if inner is None else _check_kernel(inner, "inner")
    if K.shape != th.shape:
        raise ValueError(f"inner kernel shape {tuple(K.shape)} differs from theta shape "
                         f"{tuple(th.shape)}; both must cover the same M samples")
    K = K.to(th.device)
    if not (reg >= 0.0) or math.isinf(reg):
        raise ValueError(f"reg must be a finite number >= 0, got {reg}")
    discrete = inner_lr is not None or inner_steps is not None
    if discrete:
        if inner_lr is None or inner_steps is None:
            raise ValueError("the discrete form needs both inner_lr and inner_steps "
                             f"(got inner_lr={inner_lr}, inner_steps={inner_steps})")
        if not math.isinf(inner_time):
            raise ValueError("give either inner_time (gradient flow) or inner_lr + "
                             f"inner_steps (discrete steps), not both (inner_time={inner_time})")
        if not (inner_lr > 0.0) or math.isinf(inner_lr):
            raise ValueError(f"inner_lr must be a finite number > 0, got {inner_lr}")
        if isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 0:
            raise ValueError(f"inner_steps must be an int >= 0, got {inner_steps!r}")
    elif not (inner_time >= 0.0):
        raise ValueError(f"inner_time must be >= 0 (inf allowed), got {inner_time}")
    if len(tasks) == 0:
        raise ValueError("tasks is empty; pass at least one (query_idx, support_idx) pair")

    checked: list[tuple[Tensor, Tensor]] = []
    for i, task in enumerate(tasks):
        if len(task) != 2:
            raise ValueError(f"task {i} must be a (query_idx, support_idx) pair, got {len(task)} items")
        q = _check_index(task[0], M, f"task {i} query_idx", th.device)
        s = _check_index(task[1], M, f"task {i} support_idx", th.device)
        checked.append((q, s))

    Q = sum(int(q.numel()) for q, _ in checked)
    if not bool(torch.isfinite(th).all()) or not bool(torch.isfinite(K).all()):
        return torch.full((Q, Q), math.nan, dtype=torch.float64, device=th.device)

    # Group tasks by support size: one batched eigh per size.
    by_size: dict[int, list[int]] = defaultdict(list)
    for i, (_, s) in enumerate(checked):
        if s.numel():
            by_size[int(s.numel())].append(i)
    transfer: dict[int, Tensor] = {}
    for n, members in by_size.items():
        blocks = torch.stack([K[checked[i][1]][:, checked[i][1]] for i in members])
        T = support_transfer(blocks, reg=reg, inner_time=inner_time, inner_lr=inner_lr,
                             inner_steps=inner_steps)
        for j, i in enumerate(members):
            transfer[i] = T[j]

    # A (Q, M): row block i = I on X_i columns, -K(X_i, X'_i) T_i on X'_i columns.
    # index_add accumulates, so a sample in both sets (or in several tasks) is handled
    # exactly as the block expansion of eq. 11 would.
    A = torch.zeros(Q, M, dtype=torch.float64, device=th.device)
    row = 0
    for i, (q, s) in enumerate(checked):
        nq = int(q.numel())
        rows = A[row:row + nq]
        rows.index_add_(1, q, torch.eye(nq, dtype=torch.float64, device=th.device))
        if i in transfer:
            rows.index_add_(1, s, -(K[q][:, s] @ transfer[i]))
        row += nq
    phi = A @ th @ A.T
    return 0.5 * (phi + phi.T)
