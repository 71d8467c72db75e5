"""Empirical neural tangent kernels of a network at its current weights (paper Sec. 4).

``Theta(x, x') = sum_p dg(x)/dtheta_p . dg(x')/dtheta_p`` over the selected parameters
(design section 3):

- ``output="sum"``: ``g = sum_c f_c``, the sum of the ``k`` logits (the reference's scalar
  output). Returns (N, N).
- ``output="full"``: the ``k``-way kernel over (sample, logit) pairs, (N*k, N*k), rows and
  columns SAMPLE-MAJOR: index ``n * k + c`` is logit ``c`` of sample ``n``.
- ``params="weights"``: only ``.weight`` of convolution and linear layers (not biases, not
  norm parameters), as the reference; ``params="all"``: every parameter requiring grad.

Per-sample gradients (the Jacobian) are in the parameters' dtype (float32 normally); the
Gram matrix is accumulated in float64, parameter by parameter (``kernels._gram``). TF32 is
off inside (``kernels._precision.full_fp32``). Memory beyond the batched forward/backward:
``"hooks"`` holds the per-sample gradients of one parameter at a time; ``"func"``,
``"opacus"`` and ``"loop"`` hold all of them, N x P float32 (1.5 GB for the paper's 30
images and 12.7M supernet weights).

Accuracy: the backends agree to ~1e-7 (relative Frobenius) on small nets; on the paper's
supernet each float32 backend is ~3e-6 from a float64 evaluation (rounding in the float32
forward/backward, not in the Gram), so they agree with each other to ~5e-6 there.

Per-sample kernels need samples that do not interact: train-mode BatchNorm (or BN without
running statistics) normalises with batch statistics, so it is refused with a ValueError
(build the network with ``norm="group"``, as the reference's kernel network, or put it in
eval mode). Other sample-coupling layers (e.g. train-mode dropout) are the caller's
responsibility. Samples are fed as a batch ``model(x) -> (N, k)``.

Backends (``NTK_BACKENDS``), all exact and tested against ``"loop"``:

- ``"hooks"`` (default, fastest measured, see benchmarks/README.md): one batched forward and
  one backward to the layer outputs, per-layer contractions (``kernels._persample``).
  Supports Linear, Conv2d, GroupNorm and eval-mode BatchNorm parameters.
- ``"ghost"``: ``"hooks"`` where each Linear / Conv2d weight's Gram contribution is computed
  from its inputs and output gradients without per-sample gradients
  (``kernels._ghost``) wherever the cost rule ``ghost_is_cheaper`` says that is fewer
  multiply-adds (in the paper's supernet: the linear head only; convolutions have too many
  positions); float64-accurate. ``output="full"`` materialises as ``"hooks"``.
- ``"func"``: ``torch.func`` ``vmap(grad)`` (``vmap(jacrev)`` for ``"full"``), chunked over
  samples (``chunk_size``) to bound memory. Any module ``torch.func`` can trace.
- ``"opacus"``: Opacus ``GradSampleModule`` per-sample gradients (the reference's method).
  Parameters off the path to the logits (the masked ops of a pruned supernet) get zero
  rows, as autograd gives them.
- ``"loop"``: one forward and backward per sample: the plain oracle.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from kernels._gram import accumulate_gram
from kernels._persample import per_sample_gram_hooks
from kernels._precision import full_fp32

__all__ = [
    "NTK_BACKENDS", "OUTPUTS", "PARAMS", "DEFAULT_BACKEND", "empirical_ntk", "select_parameters",
    "head_features", "anil_inner_kernel", "check_sample_independent", "get_backend",
]

OUTPUTS: tuple[str, ...] = ("sum", "full")
PARAMS: tuple[str, ...] = ("weights", "all")
DEFAULT_BACKEND = "hooks"

# backend(model, x, params, output, chunk_size, blocks) -> float64 Gram: (R, R), or the
# diagonal blocks (blocks, R / blocks, R / blocks) where the backend computes only those
# (empirical_ntk cuts the blocks out of a full Gram otherwise).
NtkBackend = Callable[[nn.Module, Tensor, list[nn.Parameter], str, int, int], Tensor]


def select_parameters(model: nn.Module, params: str = "weights") -> list[nn.Parameter]:
    """The parameters the kernel differentiates, deduplicated, in module order.

    "weights": ``.weight`` of every conv (``_ConvNd``) and ``nn.Linear`` module that
    requires grad; "all": every parameter that requires grad.
    Raises ValueError for an unknown mode or when nothing is selected.
    """
    if params not in PARAMS:
        raise ValueError(f"params must be one of {PARAMS}, got {params!r}")
    seen: set[int] = set()
    out: list[nn.Parameter] = []
    if params == "weights":
        candidates = [m.weight for m in model.modules()
                      if isinstance(m, (_ConvNd, nn.Linear)) and isinstance(m.weight, nn.Parameter)]
    else:
        candidates = list(model.parameters())
    for p in candidates:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    if not out:
        raise ValueError(f"model {type(model).__name__} has no parameters requiring grad for "
                         f"params={params!r}; the kernel would be zero")
    return out


def check_sample_independent(model: nn.Module) -> None:
    """Raise ValueError if a BatchNorm couples the samples (train mode or no running stats)."""
    for name, m in model.named_modules():
        if isinstance(m, _BatchNorm) and (m.training or m.running_mean is None):
            why = "is in training mode" if m.training else "has no running statistics"
            raise ValueError(
                f"BatchNorm {name or type(m).__name__!r} {why}: it normalises with batch "
                "statistics, which couple the samples, so per-sample gradients (and the NTK) "
                "are not defined. Build the network with norm='group' (sample-independent, as "
                "the reference's kernel network) or call model.eval() with running statistics.")


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _gram_of_rows(rows: list[Tensor]) -> Tensor:
    """float64 Gram of per-sample gradients given per parameter as (R, ...) blocks."""
    R = rows[0].shape[0]
    K = torch.zeros(R, R, dtype=torch.float64, device=rows[0].device)
    for block in rows:
        accumulate_gram(K, block)
    return K


def _backend_loop(model: nn.Module, x: Tensor, params: list[nn.Parameter], output: str,
                  chunk_size: int, blocks: int = 1) -> Tensor:
    """Oracle: per sample, forward ``x[n:n+1]`` and one backward per output."""
    per_param: list[list[Tensor]] = [[] for _ in params]
    with torch.enable_grad():
        for n in range(x.shape[0]):
            out = model(x[n:n + 1])
            _check_logits(out, 1)
            targets = [out.sum()] if output == "sum" else [out[0, c] for c in range(out.shape[1])]
            for j, t in enumerate(targets):
                grads = torch.autograd.grad(t, params, retain_graph=j < len(targets) - 1,
                                            allow_unused=True)
                for i, (p, g) in enumerate(zip(params, grads)):
                    per_param[i].append(torch.zeros_like(p).flatten() if g is None else g.flatten())
    return _gram_of_rows([torch.stack(rows) for rows in per_param])


def _backend_func(model: nn.Module, x: Tensor, params: list[nn.Parameter], output: str,
                  chunk_size: int, blocks: int = 1) -> Tensor:
    """``torch.func``: vmap(grad) / vmap(jacrev) over samples, ``chunk_size`` at a time."""
    from torch.func import functional_call, grad, jacrev, vmap

    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    selected = {names[id(p)]: p.detach() for p in params}

    def logits_of(theta: dict[str, Tensor], xi: Tensor) -> Tensor:
        out = functional_call(model, theta, (xi.unsqueeze(0),), tie_weights=True)
        return out.squeeze(0)

    if output == "sum":
        per_sample = vmap(grad(lambda th, xi: logits_of(th, xi).sum()), in_dims=(None, 0))
    else:
        per_sample = vmap(jacrev(logits_of), in_dims=(None, 0))
    blocks: dict[str, list[Tensor]] = {n: [] for n in selected}
    # Outer no_grad: torch.func transforms ignore it, and it stops the unselected
    # parameters (which still require grad) from recording an autograd graph.
    with torch.no_grad():
        _check_logits(model(x[:1]), 1)
        for sl in _chunks(x.shape[0], chunk_size):
            g = per_sample(selected, x[sl])
            for n in selected:
                # "full": (n, k, *shape) -> (n*k, P): sample-major rows
                blocks[n].append(g[n].reshape(-1, selected[n].numel()))
            del g
    return _gram_of_rows([torch.cat(b) for b in blocks.values()])


_MODE_FREE = (nn.Linear, _ConvNd, nn.GroupNorm, nn.LayerNorm)


def _opacus_prepare(model: nn.Module, params: list[nn.Parameter]) -> tuple[list[nn.Module], list[nn.Parameter]]:
    """Check the model suits Opacus; return (modules to flip to training mode, parameters
    to freeze) for the call.

    Opacus hooks every module owning a trainable parameter and records activations only
    in training mode. Unselected parameters are frozen for the call, so only owners of
    selected ones are hooked. Conv / linear / norm layers without running statistics
    compute the same function in either mode, so flipping their flag is exact; any other
    eval-mode owner is refused.
    """
    wanted = {id(p) for p in params}
    freeze = [p for p in model.parameters() if p.requires_grad and id(p) not in wanted]
    flip: list[nn.Module] = []
    for m in model.modules():
        # Opacus' conv rule ignores padding_mode (measured: 25% kernel error with "reflect").
        if isinstance(m, _ConvNd) and m.padding_mode != "zeros":
            raise ValueError(f"backend 'opacus' computes wrong per-sample gradients for "
                             f"{type(m).__name__}(padding_mode={m.padding_mode!r}); use "
                             "backend='hooks' or 'func'")
        owns = any(id(p) in wanted for p in m.parameters(recurse=False))
        if owns and not m.training:
            if not isinstance(m, _MODE_FREE):
                raise ValueError(f"backend 'opacus' needs {type(m).__name__} in training mode "
                                 "to record per-sample gradients; use backend='hooks' or 'func'")
            flip.append(m)
    return flip, freeze


def _opacus_rows(model: nn.Module, x: Tensor, params: list[nn.Parameter],
                 output: str) -> list[Tensor]:
    """Per-parameter (N*k, P) per-sample gradients (sample-major) via GradSampleModule."""
    from opacus import GradSampleModule

    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum", strict=False)
    try:
        rows: list[list[Tensor]] = [[] for _ in params]
        n_out, c = 1, 0
        while c < n_out:  # one forward per output: Opacus consumes activations per backward
            with torch.enable_grad():
                out = gsm(x)
            _check_logits(out, x.shape[0])
            if output == "full":
                n_out = out.shape[1]
            target = out.sum() if output == "sum" else out[:, c].sum()
            grads = torch.autograd.grad(target, params, allow_unused=True)
            for i, p in enumerate(params):
                gs = getattr(p, "grad_sample", None)
                if gs is None and grads[i] is None:
                    # Not on the path to the logits (e.g. a masked op of a pruned supernet):
                    # its per-sample gradients are zero, as autograd says.
                    gs = torch.zeros(x.shape[0], *p.shape, dtype=p.dtype, device=p.device)
                if gs is None:
                    raise ValueError(f"opacus produced no per-sample gradient for a parameter of "
                                     f"shape {tuple(p.shape)}; use backend='hooks' or 'func'")
                if isinstance(gs, list):  # accumulated over several backward passes
                    gs = torch.stack(gs).sum(0)
                rows[i].append(gs.reshape(x.shape[0], -1))
                p.grad_sample = None
            c += 1
    finally:
        gsm._close()
        for m in model.modules():  # activations left by passes that did not reach a module
            for attr in ("activations", "max_batch_len"):
                if hasattr(m, attr):
                    delattr(m, attr)
    # rows[i]: k blocks (N, P) -> (N, k, P) -> (N*k, P)
    return [torch.stack(r, dim=1).reshape(-1, r[0].shape[1]) for r in rows]


def _backend_opacus(model: nn.Module, x: Tensor, params: list[nn.Parameter], output: str,
                    chunk_size: int, blocks: int = 1) -> Tensor:
    """Opacus ``GradSampleModule`` per-sample gradients, as the reference computed them."""
    flip, freeze = _opacus_prepare(model, params)
    try:
        for m in flip:
            m.training = True
        for p in freeze:
            p.requires_grad_(False)
        with warnings.catch_warnings():
            # The first layer's input never requires grad, so torch warns that its backward
            # hook fires on output gradients: exactly what Opacus needs here.
            warnings.filterwarnings("ignore", message="Full backward hook is firing",
                                    category=UserWarning)
            rows = _opacus_rows(model, x, params, output)
    finally:
        for m in flip:
            m.training = False
        for p in freeze:
            p.requires_grad_(True)
    return _gram_of_rows(rows)


def _backend_hooks(model: nn.Module, x: Tensor, params: list[nn.Parameter], output: str,
                   chunk_size: int, blocks: int = 1) -> Tensor:
    return per_sample_gram_hooks(model, x, params, output, blocks=blocks)


def _backend_ghost(model: nn.Module, x: Tensor, params: list[nn.Parameter], output: str,
                   chunk_size: int, blocks: int = 1) -> Tensor:
    return per_sample_gram_hooks(model, x, params, output, blocks=blocks, gram="auto")


NTK_BACKENDS: dict[str, NtkBackend] = {
    "hooks": _backend_hooks,
    "ghost": _backend_ghost,
    "func": _backend_func,
    "opacus": _backend_opacus,
    "loop": _backend_loop,
}


def get_backend(name: str) -> NtkBackend:
    """The backend called ``name``; KeyError listing the valid names otherwise."""
    try:
        return NTK_BACKENDS[name]
    except KeyError:
        raise KeyError(f"unknown NTK backend {name!r}; valid backends: "
                       f"{', '.join(NTK_BACKENDS)}") from None


def _check_logits(out: Tensor, n: int) -> None:
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != n:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"model(x) must return (N, k) logits; got {shape} for N={n}")


def _check_device(model: nn.Module, x: Tensor) -> None:
    devices = {p.device for p in model.parameters()} | {b.device for b in model.buffers()}
    if devices - {x.device}:
        raise ValueError(f"model tensors are on {sorted(map(str, devices))} but x is on "
                         f"{x.device}; move both to one device")


def empirical_ntk(model: nn.Module, x: Tensor, *, output: str = "sum", params: str = "weights",
                  backend: str = DEFAULT_BACKEND, chunk_size: int = 32, blocks: int = 1) -> Tensor:
    """Empirical NTK of ``model`` on the batch ``x`` (see module docstring).

    model: ``model(x) -> (N, k)`` logits, sample-independent (no train-mode BatchNorm).
    x: (N, ...) inputs on the model's device. output: "sum" | "full". params: "weights" |
    "all". backend: a name in ``NTK_BACKENDS``. chunk_size: samples per vmap call
    ("func" only). blocks: x is ``blocks`` equal, independent groups of samples (batched
    candidates) and only the diagonal blocks of the kernel are wanted ("sum" only; "hooks"
    and "ghost" compute only those, the other backends compute all and cut them out).
    Returns float64 (N, N) for "sum", (N*k, N*k) sample-major for "full", on x's device;
    (blocks, N / blocks, N / blocks) when blocks > 1.
    Raises ValueError (bad mode, shapes, devices, train-mode BN, blocks), KeyError (backend).
    """
    fn = get_backend(backend)
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[0] < 1:
        raise ValueError("x must be a non-empty (N, ...) tensor of inputs")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1 or x.shape[0] % blocks:
        raise ValueError(f"blocks must be an int >= 1 dividing the {x.shape[0]} samples, got {blocks!r}")
    if blocks > 1 and output != "sum":
        raise ValueError("blocks > 1 (diagonal kernel blocks) needs output='sum'")
    check_sample_independent(model)
    _check_device(model, x)
    selected = select_parameters(model, params)
    with full_fp32():
        K = fn(model, x, selected, output, chunk_size, blocks)
    if blocks > 1 and K.dim() == 2:
        n = x.shape[0] // blocks
        K = torch.stack([K[b * n:(b + 1) * n, b * n:(b + 1) * n] for b in range(blocks)])
    return 0.5 * (K + K.transpose(-1, -2))


def head_features(model: nn.Module, x: Tensor) -> Tensor:
    """Features feeding the linear head ``model.classifier``: ``model.forward_features(x)``.

    x: (N, ...). Returns (N, D) detached, computed under no_grad (the ANIL head kernel
    needs values only).
    """
    if not callable(getattr(model, "forward_features", None)):
        raise ValueError(f"{type(model).__name__} has no forward_features(x); the ANIL head "
                         "kernel needs the features feeding the linear head model.classifier")
    with torch.no_grad(), full_fp32():
        phi = model.forward_features(x)
    if phi.dim() != 2 or phi.shape[0] != x.shape[0]:
        raise ValueError(f"forward_features must return (N, D), got {tuple(phi.shape)}")
    return phi.detach()


def anil_inner_kernel(features: Tensor, n_logits: int) -> Tensor:
    """ANIL inner-loop kernel: ``n_logits * phi phi^T`` in float64.

    ANIL adapts only the linear head ``f_c(x) = w_c . phi(x)``. The gradient of the scalar
    ``g = sum_c f_c`` with respect to the head weights ``W (k, D)`` is ``1_k (x) phi(x)``,
    so the NTK of ``g`` restricted to the head is ``sum_c phi(x).phi(x') = k phi(x).phi(x')``
    (the head NNGP times ``k``; the reference's "times the number of summed logits").
    features: (N, D). Returns (N, N) float64.
    """
    if not isinstance(features, Tensor) or features.dim() != 2:
        raise ValueError(f"features must be an (N, D) tensor, got "
                         f"{tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__}")
    if isinstance(n_logits, bool) or not isinstance(n_logits, int) or n_logits < 1:
        raise ValueError(f"n_logits must be an int >= 1 (the head width k), got {n_logits!r}")
    phi = features.detach().to(torch.float64)
    return n_logits * (phi @ phi.T)
