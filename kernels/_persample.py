"""Exact per-sample gradients from ONE batched forward and backward (the "hooks" backend).

Why: ``vmap(grad)`` and per-sample loops re-run or re-batch the network per sample; the
cheapest exact route is the one autograd already takes for a batch. Forward hooks record
the input ``a`` and output ``y`` of every module that owns a selected parameter; one
``torch.autograd.grad`` of the scalar output with respect to all recorded ``y`` gives the
per-sample output gradients ``dy`` (samples do not interact: norms are sample-independent,
checked by the caller) WITHOUT computing the batch-summed weight gradients; then each
parameter's per-sample gradient is a per-layer contraction of ``a`` and ``dy``:

- ``nn.Linear``: ``dW[n] = sum_l dy[n, l]^T a[n, l]`` (l: any middle dims), ``db[n] = sum_l dy``.
- ``nn.Conv2d`` (any stride / padding / dilation / groups / padding mode): one grouped
  weight-gradient convolution with the batch folded into the channels, or for dense convs
  with small outputs one unfold + batched matmul (``_grad_conv2d``); ``db[n] = sum over
  positions of dy``.
- ``nn.GroupNorm`` and eval-mode ``BatchNorm`` affine parameters (``params="all"``):
  ``dgamma[n] = sum over positions of xhat * dy``, ``dbeta[n] = sum of dy`` with ``xhat``
  recomputed from the recorded input.

Memory: one batched forward/backward of the N samples plus, at a time, the per-sample
gradients of one parameter (``output="sum"``); ``output="full"`` keeps ``k`` of them.

``gram="ghost"`` / ``"auto"`` (the ``"ghost"`` backend): a Linear / Conv2d weight's Gram
contribution straight from ``a`` and ``dy`` (``kernels._ghost``), always or where cheaper.
``blocks=k``: the batch is k stacked candidates; only the k diagonal Gram blocks are formed.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from kernels._ghost import ghost_columns, ghost_gram, ghost_is_cheaper, layer_shape
from kernels._gram import accumulate_gram, accumulate_gram_blocks

__all__ = ["per_sample_gram_hooks", "SUPPORTED_MODULES", "GRAM_MODES", "conv2d_padded"]

SUPPORTED_MODULES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d, nn.GroupNorm, _BatchNorm)


@dataclass
class _Record:
    """One call of a hooked module: its input and output and their versions at call time."""
    a: Tensor
    y: Tensor
    a_version: int
    y_version: int


def conv2d_padded(m: nn.Conv2d, a: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """The conv's input with any non-zero-mode or "same" padding applied, and the
    symmetric zero padding still to apply, so the conv is ``conv2d(a, w, padding=...)``."""
    if m.padding_mode != "zeros":
        return F.pad(a, m._reversed_padding_repeated_twice, mode=m.padding_mode), (0, 0)
    if isinstance(m.padding, str):
        if m.padding == "same":  # torch pads the extra pixel at the end, as here
            pads: list[int] = []
            for d, k in zip(reversed(m.dilation), reversed(m.kernel_size)):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
            a = F.pad(a, pads)
        return a, (0, 0)
    return a, (int(m.padding[0]), int(m.padding[1]))


# Dense convs with at most this many output positions use unfold + bmm (see _grad_conv2d).
_SMALL_OUTPUT = 128


def _grad_conv2d(m: nn.Conv2d, name: str, a: Tensor, dy: Tensor) -> Tensor:
    """Per-sample Conv2d gradients, (N, P).

    The weight gradient of sample n is the weight gradient of a conv whose batch is that
    one sample. Folding the batch into the channels, ``(1, N*C_in, H, W)`` with
    ``groups = N * G``, turns all N of them into ONE weight-gradient convolution (the
    kernel autograd uses for the batched backward), ``(N*C_out, C_in/G, kh, kw)``: measured
    3-7x faster on CPU than unfold + einsum for depthwise and large-image convs, with no
    (N, C_in*kh*kw, L) column copy. For dense convs on small outputs (L <= 128 positions,
    e.g. 192 channels at 8x8) one unfold + batched matmul ``dy (N, C_out, L) @ cols^T`` is
    2x faster (measured). The choice depends only on shapes, so results are reproducible.
    """
    N = a.shape[0]
    if name == "bias":
        return dy.sum(dim=(2, 3))
    a, padding = conv2d_padded(m, a)
    G = m.groups
    L = dy.shape[2] * dy.shape[3]
    if G == 1 and L <= _SMALL_OUTPUT:
        cols = F.unfold(a, m.kernel_size, dilation=m.dilation, padding=padding, stride=m.stride)
        return torch.bmm(dy.reshape(N, m.out_channels, L), cols.transpose(1, 2)).reshape(N, -1)
    grad = torch.nn.grad.conv2d_weight(
        a.reshape(1, N * a.shape[1], *a.shape[2:]),
        (N * m.out_channels, m.in_channels // G, *m.kernel_size),
        dy.reshape(1, N * dy.shape[1], *dy.shape[2:]),
        stride=m.stride, padding=padding, dilation=m.dilation, groups=N * G)
    return grad.reshape(N, -1)


def _grad_linear(m: nn.Linear, name: str, a: Tensor, dy: Tensor) -> Tensor:
    N = a.shape[0]
    dy = dy.reshape(N, -1, dy.shape[-1])
    if name == "bias":
        return dy.sum(dim=1)
    a = a.reshape(N, -1, a.shape[-1])
    return torch.einsum("nlo,nli->noi", dy, a).reshape(N, -1)


def _grad_norm_affine(xhat: Tensor, name: str, dy: Tensor) -> Tensor:
    dims = tuple(range(2, dy.dim()))
    if name == "bias":
        return dy.sum(dim=dims) if dims else dy
    return (xhat * dy).sum(dim=dims) if dims else xhat * dy


def _grad_group_norm(m: nn.GroupNorm, name: str, a: Tensor, dy: Tensor) -> Tensor:
    xhat = F.group_norm(a, m.num_groups, None, None, m.eps) if name == "weight" else a
    return _grad_norm_affine(xhat, name, dy)


def _grad_batch_norm(m: _BatchNorm, name: str, a: Tensor, dy: Tensor) -> Tensor:
    # Only eval-mode BN with running statistics reaches here (the caller refuses the rest).
    shape = (1, -1) + (1,) * (a.dim() - 2)
    xhat = (a - m.running_mean.view(shape)) * torch.rsqrt(m.running_var.view(shape) + m.eps)
    return _grad_norm_affine(xhat, name, dy)


_GRADS: dict[type[nn.Module], Callable[[nn.Module, str, Tensor, Tensor], Tensor]] = {
    nn.Linear: _grad_linear,
    nn.Conv2d: _grad_conv2d,
    nn.GroupNorm: _grad_group_norm,
    _BatchNorm: _grad_batch_norm,
}


def _grad_fn(m: nn.Module) -> Callable[[nn.Module, str, Tensor, Tensor], Tensor] | None:
    for kind, fn in _GRADS.items():
        if isinstance(m, kind):
            return fn
    return None


def _owners(model: nn.Module, params: list[nn.Parameter]) -> dict[int, list[tuple[nn.Module, str]]]:
    """id(param) -> [(module, attribute name)] for every module owning a selected param."""
    wanted = {id(p) for p in params}
    owners: dict[int, list[tuple[nn.Module, str]]] = {id(p): [] for p in params}
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in wanted:
                owners[id(p)].append((module, name))
    unsupported = sorted({f"{type(m).__name__}.{n}" for o in owners.values() for m, n in o
                          if _grad_fn(m) is None or n not in ("weight", "bias")})
    if unsupported:
        raise ValueError(f"backend 'hooks' has no per-sample rule for {', '.join(unsupported)} "
                         f"(supported: {', '.join(t.__name__ for t in SUPPORTED_MODULES)} "
                         "weight/bias); use backend='func'")
    return owners


GRAM_MODES: tuple[str, ...] = ("materialize", "ghost", "auto")


def _ghost_choice(m: nn.Module, name: str, recs: list[_Record], mode: str, blocks: int) -> bool:
    """Whether this (module, parameter) takes the ghost route (``kernels._ghost``): only
    Linear / Conv2d weights; "ghost" forces it there, "auto" asks the cost rule."""
    if mode == "materialize" or name != "weight" or not isinstance(m, (nn.Linear, nn.Conv2d)) or not recs:
        return False
    if mode == "ghost":
        return True
    return ghost_is_cheaper(layer_shape(m, [r.a.shape for r in recs], [r.y.shape for r in recs], blocks))


def per_sample_gram_hooks(model: nn.Module, x: Tensor, params: list[nn.Parameter],
                          output: str, *, blocks: int = 1, gram: str = "materialize") -> Tensor:
    """Gram of per-sample gradients from one batched forward/backward (see module docstring).

    x: (N, ...) batch; params: selected parameters; output "sum" or "full".
    blocks: x is ``blocks`` equal groups of samples (batched candidates) and only the
    diagonal blocks are computed ("sum" only). gram: "materialize" (per-sample gradients,
    then their Gram), "ghost" (every Linear / Conv2d weight through ``kernels._ghost``) or
    "auto" (per layer, whichever ``ghost_is_cheaper`` says; "full" always materialises).
    Returns float64 (N, N) or (N*k, N*k) (sample-major rows) when blocks == 1, else
    (blocks, N / blocks, N / blocks).
    """
    if gram not in GRAM_MODES:
        raise ValueError(f"gram must be one of {GRAM_MODES}, got {gram!r}")
    N = x.shape[0]
    if blocks < 1 or N % blocks:
        raise ValueError(f"blocks must be >= 1 and divide the batch of {N} samples, got {blocks}")
    if blocks > 1 and output != "sum":
        raise ValueError("diagonal Gram blocks (blocks > 1) need output='sum'")
    owners = _owners(model, params)
    modules = {id(m): m for o in owners.values() for m, _ in o}
    records: dict[int, list[_Record]] = {key: [] for key in modules}

    def capture(module: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
        a = inputs[0]
        records[id(module)].append(_Record(a, out, a._version, out._version))

    handles = [m.register_forward_hook(capture) for m in modules.values()]
    try:
        with torch.enable_grad():
            logits = model(x)
    finally:
        for h in handles:
            h.remove()
    if logits.dim() != 2 or logits.shape[0] != N:
        raise ValueError(f"model(x) must return (N, k) logits, got shape {tuple(logits.shape)}")
    # Outputs computed without grad (e.g. a frozen branch under no_grad) carry no gradient
    # to any parameter: they are dropped, exactly as autograd would give those uses zero.
    for key in records:
        records[key] = [r for r in records[key] if r.y.requires_grad]
    outs: list[Tensor] = []
    for key, recs in records.items():
        for r in recs:
            if r.a._version != r.a_version or r.y._version != r.y_version:
                raise ValueError(f"an in-place operation modified the input or output of "
                                 f"{type(modules[key]).__name__} after it ran; per-sample "
                                 "gradients need them intact: use backend='func'")
            if r.a.shape[0] != N or r.y.shape[0] != N:
                raise ValueError(f"{type(modules[key]).__name__} was called on a batch of "
                                 f"{r.a.shape[0]} rows, not the {N} samples; use backend='func'")
            outs.append(r.y)

    k = logits.shape[1]
    targets = [logits.sum()] if output == "sum" else [logits[:, c].sum() for c in range(k)]
    R = N * len(targets) if output == "full" else N
    n = N // blocks
    K = (torch.zeros(R, R, dtype=torch.float64, device=x.device) if blocks == 1
         else torch.zeros(blocks, n, n, dtype=torch.float64, device=x.device))
    if not outs:  # no selected parameter influences the logits: the kernel is zero
        return K
    # per-pass per-sample gradients, per parameter: list over passes of (N, P)
    pending: dict[int, list[Tensor]] = {id(p): [] for p in params}
    for j, target in enumerate(targets):
        grads = torch.autograd.grad(target, outs, retain_graph=j < len(targets) - 1,
                                    allow_unused=True)
        dys: dict[int, list[Tensor | None]] = {}
        at = 0
        for key, recs in records.items():
            dys[key] = list(grads[at:at + len(recs)])
            at += len(recs)
        for p in params:
            pairs = owners[id(p)]
            if output == "sum" and len(pairs) == 1:
                m, name = pairs[0]
                used = [(r, dy) for r, dy in zip(records[id(m)], dys[id(m)]) if dy is not None]
                if _ghost_choice(m, name, [r for r, _ in used], gram, blocks):
                    cols = [ghost_columns(m, r.a.detach(), dy.detach()) for r, dy in used]
                    block = ghost_gram(torch.cat([c[0] for c in cols], dim=2),
                                       torch.cat([c[1] for c in cols], dim=2), blocks)
                    K += block[0] if blocks == 1 else block
                    continue
            total: Tensor | None = None
            for m, name in pairs:
                fn = _grad_fn(m)
                assert fn is not None  # checked in _owners
                for r, dy in zip(records[id(m)], dys[id(m)]):
                    if dy is None:
                        continue
                    g = fn(m, name, r.a.detach(), dy.detach())
                    total = g if total is None else total + g
            if total is None:  # no use of this parameter reached this output: zero rows
                if output == "full":
                    pending[id(p)].append(torch.zeros(N, p.numel(), dtype=p.dtype, device=x.device))
                continue
            if output == "sum":
                if blocks == 1:
                    accumulate_gram(K, total)
                else:
                    accumulate_gram_blocks(K, total)
            else:
                pending[id(p)].append(total)
        del grads, dys
    if output == "full":
        for p in params:
            # (k, N, P) -> (N, k, P) -> (N*k, P): sample-major rows
            accumulate_gram(K, torch.stack(pending.pop(id(p)), dim=1).reshape(R, -1))
    return K
