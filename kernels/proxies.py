"""Training-free proxies of architecture quality, one registry.

Every proxy is a pure function ``fn(model, batch, settings, generator) -> float`` of the
network at its current weights and one few-shot kernel batch (`ProxyBatch`): the SAME images,
tasks and weights the MetaNTK condition number is computed on (``harness.scoring.Scorer``),
so proxies are compared on equal terms. The model is never modified: gradients come from
``torch.autograd.grad`` (no ``.grad`` is written), SynFlow's sign-free weights go through
``torch.func.functional_call``, hooks are removed before returning, even on error.
``PROXIES`` maps a name to a `Proxy` (function, direction, network, citation);
``get_proxy(name)`` raises a KeyError listing the valid names.

Direction: ``higher_is_better`` is True for every proxy except the condition numbers
(``cn_*``: lower is better, paper Sec. 5). The zero-cost proxies keep the sign convention of
Abdelfattah et al. 2021 and NAS-Bench-Suite-Zero (Krishnakumar et al. 2022): the value as
defined below, a larger value predicting a better network.

Which parameters: the "weights" of the design (``.weight`` of every Conv and Linear module,
as the kernels' ``params="weights"``) that take part in the forward pass. In a masked
supernet a pruned op is not run, so its weights count for nothing (``params``, ``flops``
and ``l2_norm`` find the modules that ran with forward hooks; gradient proxies skip weights
whose gradient is None).

Choices the few-shot setting forces (the papers assume a labelled i.i.d. batch):

- Labels. The kernel batch has no global labels: task ``t`` is a ``ways``-way problem whose
  classes are numbered ``0..ways-1`` within the task, and the supernet's head has ``ways``
  logits (as for the MetaNTK). Label-based proxies (``snip``, ``grasp``, ``fisher``,
  ``grad_norm``, ``plain``) use the cross-entropy of the ``ways`` logits against these
  task-local labels, averaged over every image of the batch (queries and supports of all
  tasks): the loss a MAML/ANIL learner sees at initialisation.
- Classes of ``epe_nas``. EPE-NAS groups Jacobians by class; a task-local label means a
  different real class in every task, so the groups are the (task, label) pairs, i.e. the
  real classes of the batch (``queries + shots`` images each; 2 with the reference batch).
- ``jacov`` and ``nwot`` are label-free and use all images of the batch at once.
- ``zen`` draws its own Gaussian inputs (batch shape of the kernel batch) from
  ``generator``; it sees the kernel weights, not Zen-NAS's re-initialisation.
- Norm layers are GroupNorm in the kernel network (sample-independent, as the kernels
  need). ``zen``'s "BN scaling" term uses the variance each norm layer divides by (per
  channel over the batch for BatchNorm, per sample and group for GroupNorm).
- ``synflow`` bypasses norm layers (identity), as Abdelfattah et al.'s ``bn=False`` copy:
  SynFlow is defined for networks without data-dependent normalisation.

The condition numbers and linear regions wrap ``kernels.ntk``, ``kernels.meta``,
``kernels.spectral`` and ``kernels.regions``; ``regions`` runs on the thin region supernet
and ``ProxyBatch.region_x``; ``cn_ntk`` on TE-NAS's network and batch where the caller has
them (`Proxy.network` and ``NETWORKS`` say which network a proxy needs).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd

from kernels.proxy_names import PROXY_DIRECTIONS, PROXY_NAMES

__all__ = ["Proxy", "ProxyBatch", "ProxySettings", "PROXIES", "PROXY_NAMES", "get_proxy", "compute_proxy",
           "JACOBIAN_EPS"]

# Added to the eigenvalues / correlations inside the logs of jacov and epe_nas (the papers' k).
JACOBIAN_EPS = 1e-5
# Which network and batch a proxy is computed on (`Proxy.network`): "kernel" the kernel
# supernet and batch; "ntk" the plain NTK's (TE-NAS) network and batch, i.e. the kernel ones
# unless the caller has TE-NAS's own (`harness.scoring.Scorer` with `ntk_batch = "plain"`: a
# base-class head over plain images), so that the proxy `cn_ntk` IS the search's TE-NAS
# score; "regions" the thin region supernet on `ProxyBatch.region_x`.
NETWORKS: tuple[str, ...] = ("kernel", "ntk", "regions")
_NORM_TYPES = (_NormBase, nn.GroupNorm, nn.LayerNorm)


@dataclass(frozen=True, eq=False)
class ProxyBatch:
    """One few-shot kernel batch.

    x:        float32 (M, C, H, W) images (the MetaNTK batch).
    labels:   int64 (M,) task-local labels in 0..ways-1.
    tasks:    [(query_idx, support_idx)] int64 index tensors into x, one pair per task.
    ways:     classes per task (= the head width).
    region_x: float32 (R, 1, 3, 3) linear-region inputs, or None when `regions` is not asked.
    """

    x: Tensor
    labels: Tensor
    tasks: list[tuple[Tensor, Tensor]]
    ways: int
    region_x: Tensor | None = None

    def __post_init__(self) -> None:
        m = self.x.shape[0]
        if self.labels.shape != (m,):
            raise ValueError(f"labels must have shape ({m},), got {tuple(self.labels.shape)}")
        if m and (int(self.labels.min()) < 0 or int(self.labels.max()) >= self.ways):
            raise ValueError(f"labels must lie in 0..{self.ways - 1} (task-local classes)")

    def class_ids(self) -> Tensor:
        """int64 (M,): one id per real class of the batch, ``task * ways + label``."""
        task_of = torch.full_like(self.labels, -1)
        for t, (q, s) in enumerate(self.tasks):
            task_of[q.to(task_of.device)] = t
            task_of[s.to(task_of.device)] = t
        if bool((task_of < 0).any()):
            raise ValueError("every image of the batch must belong to a task")
        return task_of * self.ways + self.labels


@dataclass(frozen=True)
class ProxySettings:
    """Settings of the kernel proxies (same meaning as the [search] keys of that name)."""

    kernel_output: str = "sum"
    kernel_params: str = "weights"
    kernel_backend: str = "hooks"
    maml_inner_time: float = math.inf
    maml_reg: float = 1e-3
    anil_inner_time: float = math.inf
    anil_reg: float = 1e-3
    finite_inner_time: float = 1.0   # t of the `*_finite` MetaNTK proxies (paper's 8-cell ANIL run)
    region_batch: int = 1000         # samples per forward of the region count (train-mode BN)
    zen_alpha: float = 0.01          # Zen-NAS perturbation scale


ProxyFn = Callable[[nn.Module, ProxyBatch, ProxySettings, torch.Generator], float]


@dataclass(frozen=True)
class Proxy:
    fn: ProxyFn
    higher_is_better: bool
    network: str          # a name of NETWORKS: "kernel", "ntk" (TE-NAS's) or "regions"
    labels: bool          # uses the task labels
    reference: str


# ----------------------------------------------------------------------------- helpers


def _weights(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, weight) of every Conv/Linear module, in module order (the "weights" set)."""
    return [(f"{name}.weight" if name else "weight", m.weight) for name, m in model.named_modules()
            if isinstance(m, (_ConvNd, nn.Linear)) and isinstance(m.weight, nn.Parameter)]


@contextmanager
def _hooks(modules: list[nn.Module], hook: Callable, *, pre: bool = False) -> Iterator[None]:
    handles = [m.register_forward_pre_hook(hook) if pre else m.register_forward_hook(hook) for m in modules]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _ran(model: nn.Module, x: Tensor) -> list[tuple[nn.Module, Tensor, Tensor]]:
    """(module, first input, output) of every leaf module called by ``model(x)``, in call order."""
    calls: list[tuple[nn.Module, Tensor, Tensor]] = []
    leaves = [m for m in model.modules() if not list(m.children())]
    with _hooks(leaves, lambda m, i, o: calls.append((m, i[0], o))), torch.no_grad():
        model(x)
    return calls


def _loss(model: nn.Module, batch: ProxyBatch) -> Tensor:
    logits = model(batch.x)
    if logits.dim() != 2 or logits.shape[1] != batch.ways:
        raise ValueError(f"label-based proxies need a {batch.ways}-logit head (one per class of a task), "
                         f"got outputs {tuple(logits.shape)}")
    return F.cross_entropy(logits, batch.labels.to(logits.device))


def _loss_grads(model: nn.Module, batch: ProxyBatch) -> list[tuple[Tensor, Tensor]]:
    """(weight, dL/dweight) for every weight the loss depends on (pruned ops drop out)."""
    weights = [p for _, p in _weights(model)]
    grads = torch.autograd.grad(_loss(model, batch), weights, allow_unused=True)
    return [(p.detach(), g.detach()) for p, g in zip(weights, grads) if g is not None]


def _fsum(values: Iterator[Tensor] | list[Tensor]) -> float:
    return math.fsum(float(v) for v in values)


def _input_jacobian(model: nn.Module, x: Tensor) -> Tensor:
    """(M, D) float64: d(sum of logits of sample n)/d x_n (samples independent)."""
    xr = x.detach().clone().requires_grad_(True)
    (j,) = torch.autograd.grad(model(xr).sum(), xr)
    return j.reshape(x.shape[0], -1).to(torch.float64)


# ----------------------------------------------------------------------------- size proxies


def params(model: nn.Module, batch: ProxyBatch, settings: ProxySettings, generator: torch.Generator) -> float:
    """Number of parameters of the modules that run in ``model(x)`` (pruned ops excluded).

    The naive baseline every zero-cost study reports (Abdelfattah et al., "Zero-Cost Proxies
    for Lightweight NAS", ICLR 2021; NAS-Bench-Suite-Zero, NeurIPS 2022).
    """
    seen: dict[int, int] = {}
    for m, _, _ in _ran(model, batch.x[:1]):
        for p in m.parameters(recurse=False):
            seen[id(p)] = p.numel()
    return float(sum(seen.values()))


def flops(model: nn.Module, batch: ProxyBatch, settings: ProxySettings, generator: torch.Generator) -> float:
    """Multiply-accumulates of one image's forward pass through the Conv and Linear layers.

    Conv: output elements x (in_channels / groups) x kernel area; Linear: in x out (Abdelfattah
    et al. 2021, NAS-Bench-Suite-Zero: FLOPs baseline). Norms, pools and adds are not counted.
    """
    total = 0
    for m, _, out in _ran(model, batch.x[:1]):
        if isinstance(m, _ConvNd):
            total += out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)
        elif isinstance(m, nn.Linear):
            total += out.numel() * m.in_features
    return float(total)


def l2_norm(model: nn.Module, batch: ProxyBatch, settings: ProxySettings, generator: torch.Generator) -> float:
    """Sum over the Conv/Linear layers that run of the Frobenius norm of the weight, ``sum_l ||W_l||``
    (NAS-Bench-Suite-Zero, Krishnakumar et al. NeurIPS 2022, the ``l2_norm`` baseline)."""
    seen = {id(m): m.weight for m, _, _ in _ran(model, batch.x[:1]) if isinstance(m, (_ConvNd, nn.Linear))}
    return _fsum(w.detach().to(torch.float64).norm() for w in seen.values())


# ----------------------------------------------------------------------------- gradient proxies


def grad_norm(model: nn.Module, batch: ProxyBatch, settings: ProxySettings, generator: torch.Generator) -> float:
    """``sum_l ||dL/dW_l||``: Frobenius norm of each layer's loss gradient, summed (Abdelfattah
    et al., ICLR 2021, "grad_norm"). L: cross-entropy on the task labels (module doc)."""
    return _fsum(g.to(torch.float64).norm() for _, g in _loss_grads(model, batch))


def plain(model: nn.Module, batch: ProxyBatch, settings: ProxySettings, generator: torch.Generator) -> float:
    """``sum theta * dL/dtheta`` over all weights (Abdelfattah et al., ICLR 2021, "plain";
    Mozer & Smolensky 1989's first-order saliency without the absolute value)."""
    return _fsum((p.to(torch.float64) * g.to(torch.float64)).sum() for p, g in _loss_grads(model, batch))


def snip(model: nn.Module, batch: ProxyBatch, settings: ProxySettings, generator: torch.Generator) -> float:
    """``sum |theta * dL/dtheta|``: SNIP connection sensitivity (Lee et al., "SNIP: Single-shot
    Network Pruning based on Connection Sensitivity", ICLR 2019), summed over all weights as
    a network score (Abdelfattah et al., ICLR 2021)."""
    return _fsum((p.to(torch.float64) * g.to(torch.float64)).abs().sum() for p, g in _loss_grads(model, batch))


def grasp(model: nn.Module, batch: ProxyBatch, settings: ProxySettings, generator: torch.Generator) -> float:
    """``sum -theta * (H g)``: GraSP (Wang et al., "Picking Winning Tickets Before Training by
    Preserving Gradient Flow", ICLR 2020), H the Hessian and g the gradient of L, summed over
    all weights (Abdelfattah et al., ICLR 2021). ``H g`` by double backward of ``g_const . g``."""
    weights = [p for _, p in _weights(model)]
    grads = torch.autograd.grad(_loss(model, batch), weights, create_graph=True, allow_unused=True)
    used = [(p, g) for p, g in zip(weights, grads) if g is not None]
    z = sum((g * g.detach()).sum() for _, g in used)
    hg = torch.autograd.grad(z, [p for p, _ in used], allow_unused=True)
    return _fsum((-p.detach().to(torch.float64) * h.to(torch.float64)).sum()
                 for (p, _), h in zip(used, hg) if h is not None)


def fisher(model: nn.Module, batch: ProxyBatch, settings: ProxySettings, generator: torch.Generator) -> float:
    """Fisher information of the activations (Theis et al. 2018; Turner et al., "BlockSwap",
    ICLR 2020; as a NAS score, Abdelfattah et al., ICLR 2021): for the output ``a`` of every
    Conv/Linear layer that runs and ``g = dL/da``, per channel ``c``
    ``0.5 * mean_n (sum_{h,w} a[n,c,h,w] g[n,c,h,w])^2``, summed over channels and layers."""
    acts: list[Tensor] = []

    def keep(m: nn.Module, i: tuple[Tensor, ...], out: Tensor) -> None:
        acts.append(out)

    layers = [m for m in model.modules() if isinstance(m, (_ConvNd, nn.Linear))]
    with _hooks(layers, keep):
        loss = _loss(model, batch)
    grads = torch.autograd.grad(loss, acts, allow_unused=True)
    total = []
    for a, g in zip(acts, grads):
        if g is None:  # an output the loss does not depend on carries no information
            continue
        prod = (a.detach().to(torch.float64) * g.to(torch.float64))
        per_channel = prod.flatten(2).sum(-1) if prod.dim() > 2 else prod  # (N, C)
        total.append((0.5 * per_channel.pow(2).mean(0)).sum())
    return _fsum(total)


def synflow(model: nn.Module, batch: ProxyBatch, settings: ProxySettings, generator: torch.Generator) -> float:
    """SynFlow (Tanaka et al., "Pruning neural networks without any data by iteratively
    conserving synaptic flow", NeurIPS 2020): ``R = 1^T f_{|theta|}(1)``, the summed output of
    the network with every parameter replaced by its absolute value on an all-ones input (one
    image of the batch's shape), in float64; score ``sum |theta * dR/dtheta|`` over the
    weights. Norm layers are bypassed (module doc). The model itself is not changed.
    """
    from torch.func import functional_call

    names = {n for n, _ in _weights(model)}
    state = {n: p.detach().to(torch.float64).abs().requires_grad_(n in names) for n, p in model.named_parameters()}
    state.update({n: b.to(torch.float64) if b.is_floating_point() else b for n, b in model.named_buffers()})
    ones = torch.ones((1, *batch.x.shape[1:]), dtype=torch.float64, device=batch.x.device)
    norms = [m for m in model.modules() if isinstance(m, _NORM_TYPES)]
    with _hooks(norms, lambda m, i, o: i[0]):
        out = functional_call(model, state, (ones,))
    used = [n for n in names if n in state]
    grads = torch.autograd.grad(out.sum(), [state[n] for n in used], allow_unused=True)
    return _fsum((state[n].detach() * g).abs().sum() for n, g in zip(used, grads) if g is not None)


# ----------------------------------------------------------------------------- activation proxies


def jacov(model: nn.Module, batch: ProxyBatch, settings: ProxySettings, generator: torch.Generator) -> float:
    """Jacobian covariance (Mellor et al., "Neural Architecture Search without Training",
    arXiv:2006.04647 v1): J (M, D) the input gradients of each sample's summed logits, C their
    correlation matrix with eigenvalues v; score ``-sum_i (log(v_i + k) + 1 / (v_i + k))``,
    k = 1e-5 (symmetric eigenvalues; NaN when a Jacobian row is constant)."""
    corr = torch.corrcoef(_input_jacobian(model, batch.x))
    if not bool(torch.isfinite(corr).all()):
        return math.nan
    v = torch.linalg.eigvalsh(corr)
    return -float((torch.log(v + JACOBIAN_EPS) + 1.0 / (v + JACOBIAN_EPS)).sum())


def epe_nas(model: nn.Module, batch: ProxyBatch, settings: ProxySettings, generator: torch.Generator) -> float:
    """EPE-NAS (Lopes et al., "EPE-NAS: Efficient Performance Estimation Without Training for
    Neural Architecture Search", ICANN 2021): per class c, ``s_c = sum_ij log(|C_c[i,j]| + k)``
    with C_c the correlation matrix of the input Jacobians (as ``jacov``) of the class's
    samples (a one-sample class: C_c = [[1]]); score ``sum_c |s_c|``, k = 1e-5. Classes are
    the (task, label) pairs of the batch (module doc)."""
    jac = _input_jacobian(model, batch.x)
    ids = batch.class_ids().to(jac.device)
    total = []
    for c in torch.unique(ids):
        rows = jac[ids == c]
        corr = torch.corrcoef(rows) if rows.shape[0] > 1 else torch.ones(1, 1, dtype=jac.dtype, device=jac.device)
        total.append(torch.log(corr.abs() + JACOBIAN_EPS).sum().abs())
    return _fsum(total)


def nwot(model: nn.Module, batch: ProxyBatch, settings: ProxySettings, generator: torch.Generator) -> float:
    """NASWOT (Mellor et al., "Neural Architecture Search without Training", ICML 2021): c_n the
    binary code of every ReLU unit (on/off) for sample n, ``K = c c^T + (1-c)(1-c)^T`` (units
    minus Hamming distance); score ``log |det K|`` (slogdet, float64)."""
    from kernels.regions import sign_patterns

    codes = sign_patterns(model, batch.x, packed=False).to(torch.float64)
    k = codes @ codes.T + (1.0 - codes) @ (1.0 - codes).T
    return float(torch.linalg.slogdet(k).logabsdet)


def zen(model: nn.Module, batch: ProxyBatch, settings: ProxySettings, generator: torch.Generator) -> float:
    """Zen-score (Lin et al., "Zen-NAS: A Zero-Shot NAS for High-Performance Image
    Recognition", ICCV 2021): x, e ~ N(0, I) of the batch's shape (drawn from ``generator``,
    x first), f the feature map entering the last global pooling (the output when there is
    none), ``Delta = mean_n sum |f(x_n) - f(x_n + alpha e_n)|``; score
    ``log Delta + sum_norm log sqrt(mean sigma^2)`` with sigma^2 the variances each norm layer
    divides by on x (module doc). No gradients."""
    shape = tuple(batch.x.shape)
    x = torch.randn(shape, generator=generator).to(batch.x.device)
    e = torch.randn(shape, generator=generator).to(batch.x.device)
    pools = [m for m in model.modules() if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool1d))]
    norms = [m for m in model.modules() if isinstance(m, _NORM_TYPES)]
    feats: list[Tensor] = []
    variances: list[Tensor] = []

    def norm_var(m: nn.Module, i: tuple[Tensor, ...]) -> None:
        a = i[0].detach().to(torch.float64)
        if isinstance(m, nn.GroupNorm):
            v = a.reshape(a.shape[0], m.num_groups, -1).var(-1, unbiased=False)
        elif isinstance(m, nn.LayerNorm):
            v = a.reshape(a.shape[0], -1).var(-1, unbiased=False)
        else:  # BatchNorm / InstanceNorm style: per channel over the batch and positions
            v = a.transpose(0, 1).reshape(a.shape[1], -1).var(-1, unbiased=False)
        variances.append(v.mean())

    def features(inp: Tensor) -> Tensor:
        feats.clear()
        with _hooks(pools, lambda m, i: feats.append(i[0]), pre=True):
            out = model(inp)
        return (feats[-1] if feats else out).to(torch.float64)

    with torch.no_grad():
        with _hooks(norms, norm_var, pre=True):
            f_x = features(x)
        f_e = features(x + settings.zen_alpha * e)
    delta = (f_x - f_e).abs().flatten(1).sum(1).mean()
    return float(torch.log(delta)) + _fsum(0.5 * torch.log(v) for v in variances)


# ----------------------------------------------------------------------------- kernel proxies (wrappers)


def _theta(model: nn.Module, batch: ProxyBatch, settings: ProxySettings) -> Tensor:
    from kernels.ntk import empirical_ntk

    return empirical_ntk(model, batch.x, output=settings.kernel_output, params=settings.kernel_params,
                         backend=settings.kernel_backend)


def cn_ntk(model: nn.Module, batch: ProxyBatch, settings: ProxySettings, generator: torch.Generator) -> float:
    """Condition number of the empirical NTK Theta on the batch (TE-NAS: Chen et al., "Neural
    Architecture Search on ImageNet in Four GPU Hours", ICLR 2021); lower is better."""
    from kernels.spectral import condition_number

    return condition_number(_theta(model, batch, settings))


def _cn_meta(algorithm: str, finite: bool) -> ProxyFn:
    def fn(model: nn.Module, batch: ProxyBatch, settings: ProxySettings, generator: torch.Generator) -> float:
        from kernels.meta import meta_ntk
        from kernels.ntk import anil_inner_kernel, head_features
        from kernels.spectral import condition_number

        if settings.kernel_output != "sum":
            raise ValueError("the MetaNTK proxies need kernel_output = 'sum' (task indices address samples)")
        theta = _theta(model, batch, settings)
        inner = None
        if algorithm == "anil":
            inner = anil_inner_kernel(head_features(model, batch.x), batch.ways)
        t = settings.finite_inner_time if finite else getattr(settings, f"{algorithm}_inner_time")
        reg = getattr(settings, f"{algorithm}_reg")
        return condition_number(meta_ntk(theta, batch.tasks, inner=inner, inner_time=t, reg=reg))

    fn.__name__ = f"cn_metantk_{algorithm}{'_finite' if finite else ''}"
    fn.__doc__ = (f"Condition number of the MetaNTK Phi ({algorithm.upper()} inner kernel, inner time "
                  f"{'settings.finite_inner_time' if finite else f'settings.{algorithm}_inner_time'}; Wang et "
                  "al., 'Global Convergence of MAML and Theory-Inspired Neural Architecture Search for "
                  "Few-Shot Learning', CVPR 2022, eq. 10-11); lower is better.")
    return fn


def regions(model: nn.Module, batch: ProxyBatch, settings: ProxySettings, generator: torch.Generator) -> float:
    """Number of linear regions of the thin region supernet over ``batch.region_x`` (TE-NAS,
    Chen et al., ICLR 2021; counted exactly by ``kernels.regions``); higher is better."""
    from kernels.regions import count_linear_regions

    if batch.region_x is None:
        raise ValueError("the regions proxy needs ProxyBatch.region_x (linear-region inputs)")
    return float(count_linear_regions(model, batch.region_x, batch_size=settings.region_batch))


_PAPER_ZC = "Abdelfattah et al., Zero-Cost Proxies for Lightweight NAS, ICLR 2021"
_CVPR22 = "Wang et al., CVPR 2022"
_TENAS = "Chen et al., TE-NAS, ICLR 2021"
# name -> (function, network, uses labels, citation); directions: kernels.proxy_names.
_TABLE: dict[str, tuple[ProxyFn, str, bool, str]] = {
    "cn_metantk_maml": (_cn_meta("maml", False), "kernel", False, _CVPR22),
    "cn_metantk_anil": (_cn_meta("anil", False), "kernel", False, _CVPR22),
    "cn_metantk_maml_finite": (_cn_meta("maml", True), "kernel", False, _CVPR22),
    "cn_metantk_anil_finite": (_cn_meta("anil", True), "kernel", False, _CVPR22),
    "cn_ntk": (cn_ntk, "ntk", False, _TENAS),
    "regions": (regions, "regions", False, _TENAS),
    "synflow": (synflow, "kernel", False, "Tanaka et al., NeurIPS 2020"),
    "snip": (snip, "kernel", True, "Lee et al., ICLR 2019"),
    "grasp": (grasp, "kernel", True, "Wang et al., ICLR 2020"),
    "fisher": (fisher, "kernel", True, "Turner et al., ICLR 2020"),
    "grad_norm": (grad_norm, "kernel", True, _PAPER_ZC),
    "jacov": (jacov, "kernel", False, "Mellor et al., arXiv:2006.04647v1"),
    "nwot": (nwot, "kernel", False, "Mellor et al., ICML 2021"),
    "zen": (zen, "kernel", False, "Lin et al., ICCV 2021"),
    "epe_nas": (epe_nas, "kernel", True, "Lopes et al., ICANN 2021"),
    "l2_norm": (l2_norm, "kernel", False, "Krishnakumar et al., NeurIPS 2022"),
    "plain": (plain, "kernel", True, _PAPER_ZC),
    "params": (params, "kernel", False, _PAPER_ZC),
    "flops": (flops, "kernel", False, _PAPER_ZC),
}
PROXIES: dict[str, Proxy] = {name: Proxy(fn, PROXY_DIRECTIONS[name], network, labels, ref)
                             for name, (fn, network, labels, ref) in _TABLE.items()}
if tuple(PROXIES) != PROXY_NAMES:  # one list of names (kernels.proxy_names); fail at import
    raise ImportError(f"kernels.proxies and kernels.proxy_names disagree: {sorted(set(PROXIES) ^ set(PROXY_NAMES))}")



def get_proxy(name: str) -> Proxy:
    try:
        return PROXIES[name]
    except KeyError:
        raise KeyError(f"unknown proxy {name!r}; valid: {', '.join(PROXY_NAMES)}") from None


def compute_proxy(name: str, model: nn.Module, batch: ProxyBatch, settings: ProxySettings,
                  generator: torch.Generator) -> float:
    """The value of proxy ``name`` (a float; NaN or +-inf where the definition gives one)."""
    return float(get_proxy(name).fn(model, batch, settings, generator))
