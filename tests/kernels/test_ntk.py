"""Empirical NTK: every backend against the per-sample loop oracle; refusals; ANIL head kernel."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from kernels import anil_inner_kernel, empirical_ntk, head_features
from kernels.ntk import DEFAULT_BACKEND, NTK_BACKENDS, get_backend, select_parameters

FAST = sorted(b for b in NTK_BACKENDS if b != "loop")




class SmallCNN(nn.Module):
    """Conv layers of every flavour the backends must handle, GroupNorm, a linear head."""

    def __init__(self, k: int = 3, norm: str = "group", padding_mode: str = "reflect") -> None:
        super().__init__()

        def norm_layer(c: int) -> nn.Module:
            return nn.GroupNorm(2, c) if norm == "group" else nn.BatchNorm2d(c)

        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), norm_layer(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2, bias=False), norm_layer(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding="same", dilation=2, groups=8), nn.ReLU(),
            nn.Conv2d(8, 6, (1, 3), padding=(0, 1), padding_mode=padding_mode,
                      bias=False), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.classifier = nn.Linear(6, k)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def _cnn(norm: str = "group", dtype: torch.dtype = torch.float32,
         backend: str = "loop") -> tuple[nn.Module, torch.Tensor]:
    """SmallCNN with randomised norm parameters/statistics and a batch of 5 inputs.

    Opacus refuses reflect padding (its conv rule ignores padding_mode), so its model
    uses zero padding."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)  # default module init only; all data below uses the generator
    padding_mode = "zeros" if backend == "opacus" else "reflect"
    model = SmallCNN(norm=norm, padding_mode=padding_mode).to(dtype)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.GroupNorm | nn.BatchNorm2d) and m.affine:
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g, dtype=dtype))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g, dtype=dtype))
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g, dtype=dtype))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g, dtype=dtype))
    x = torch.randn(5, 3, 8, 8, generator=g, dtype=dtype)
    return model, x


# (output, params) checked on the supernet: every combination.
SUPERNET_CASES = [(o, p) for o in ("sum", "full") for p in ("weights", "all")]


@pytest.fixture(scope="module")
def supernet_case():
    """Tiny GroupNorm supernet and its loop-oracle kernels for every (output, params).

    C=18, not 4: with C <= 16 every GroupNorm group is a single channel, normalised over
    H x W, so the pooled features are identically zero and the weight kernel is pure
    rounding noise (no backend could agree with another on it).
    """
    from search_spaces.supernet import Supernet

    torch.manual_seed(0)
    model = Supernet(C=18, num_classes=2, cells=2, norm="group", reductions=(1,))
    x = torch.randn(3, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    refs = {(o, p): empirical_ntk(model, x, output=o, params=p, backend="loop")
            for o, p in SUPERNET_CASES}
    return model, x, refs


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("output", ["sum", "full"])
@pytest.mark.parametrize("params", ["weights", "all"])
def test_backends_match_loop_on_cnn(backend, output, params):
    model, x = _cnn(backend=backend)
    ref = empirical_ntk(model, x, output=output, params=params, backend="loop")
    K = empirical_ntk(model, x, output=output, params=params, backend=backend)
    k = 3
    assert K.dtype == torch.float64
    assert K.shape == ((5, 5) if output == "sum" else (5 * k, 5 * k))
    assert _rel(K, ref) < 1e-6
    assert torch.equal(K, K.T)


@pytest.mark.parametrize("backend", FAST)
def test_backends_exact_in_float64(backend):
    model, x = _cnn(dtype=torch.float64, backend=backend)
    ref = empirical_ntk(model, x, output="full", params="all", backend="loop")
    assert _rel(empirical_ntk(model, x, output="full", params="all", backend=backend), ref) < 1e-12


@pytest.mark.slow
@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("output, params", SUPERNET_CASES)
def test_backends_match_loop_on_supernet(supernet_case, backend, output, params):
    model, x, refs = supernet_case
    K = empirical_ntk(model, x, output=output, params=params, backend=backend)
    assert _rel(K, refs[(output, params)]) < 1e-6


def test_full_kernel_is_sample_major_and_sums_to_sum_kernel(supernet_case):
    """Theta_sum(n, m) = sum_{c, c'} Theta_full(n k + c, m k + c')."""
    _, _, refs = supernet_case
    full, summed = refs[("full", "weights")], refs[("sum", "weights")]
    n, k = summed.shape[0], full.shape[0] // summed.shape[0]
    assert _rel(full.reshape(n, k, n, k).sum(dim=(1, 3)), summed) < 1e-6


@pytest.mark.parametrize("backend", sorted(NTK_BACKENDS))
def test_eval_mode_batchnorm_is_accepted(backend):
    model, x = _cnn(norm="batch", backend=backend)
    model.eval()
    ref = empirical_ntk(model, x, params="weights", backend="loop")
    assert _rel(empirical_ntk(model, x, params="weights", backend=backend), ref) < 1e-6
    assert not model.training


def test_eval_mode_batchnorm_affine_parameters_hooks():
    model, x = _cnn(norm="batch")
    model.eval()
    ref = empirical_ntk(model, x, output="full", params="all", backend="loop")
    assert _rel(empirical_ntk(model, x, output="full", params="all", backend="hooks"), ref) < 1e-6


@pytest.mark.parametrize("backend", sorted(NTK_BACKENDS))
def test_train_mode_batchnorm_is_refused(backend):
    model, x = _cnn(norm="batch")
    model.train()
    with pytest.raises(ValueError, match="norm='group'"):
        empirical_ntk(model, x, backend=backend)


def test_batchnorm_without_running_stats_is_refused_in_eval():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False),
                          nn.Flatten(), nn.LazyLinear(2))
    x = torch.randn(3, 3, 5, 5)
    model(x)
    model.eval()
    with pytest.raises(ValueError, match="running statistics"):
        empirical_ntk(model, x)


@pytest.mark.parametrize("backend", sorted(NTK_BACKENDS))
def test_no_side_effects(backend):
    """No hooks, grads, Opacus attributes or mode changes left behind; precision restored."""
    model, x = _cnn(backend=backend)
    model.eval()
    prev_precision = torch.get_float32_matmul_precision()
    prev_tf32 = torch.backends.cudnn.allow_tf32
    try:
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True
        empirical_ntk(model, x, output="full", backend=backend)
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cudnn.allow_tf32 is True
        assert torch.backends.cudnn.enabled is True
    finally:
        torch.set_float32_matmul_precision(prev_precision)
        torch.backends.cudnn.allow_tf32 = prev_tf32
    for m in model.modules():
        assert not m._forward_hooks and not m._backward_hooks and not m._forward_pre_hooks
        assert not m.training
        assert not hasattr(m, "activations") and not hasattr(m, "autograd_grad_sample_hooks")
    for p in model.parameters():
        assert p.grad is None and not hasattr(p, "grad_sample") and p.requires_grad


def test_default_backend_and_registry():
    assert DEFAULT_BACKEND in NTK_BACKENDS
    assert set(NTK_BACKENDS) == {"hooks", "ghost", "func", "opacus", "loop"}
    with pytest.raises(KeyError, match="valid backends: .*loop"):
        get_backend("nope")
    model, x = _cnn()
    with pytest.raises(KeyError, match="hooks"):
        empirical_ntk(model, x, backend="jax")


@pytest.mark.parametrize("kwargs, match", [
    (dict(output="logits"), "output"),
    (dict(params="biases"), "params"),
    (dict(backend="func", chunk_size=0), "chunk_size"),
])
def test_bad_arguments_raise(kwargs, match):
    model, x = _cnn()
    with pytest.raises(ValueError, match=match):
        empirical_ntk(model, x, **kwargs)


def test_func_backend_chunking_does_not_change_the_kernel():
    model, x = _cnn()
    a = empirical_ntk(model, x, backend="func", chunk_size=2)
    b = empirical_ntk(model, x, backend="func", chunk_size=64)
    assert _rel(a, b) < 1e-6


def test_parameter_selection():
    model, _ = _cnn(norm="batch")
    weights = select_parameters(model, "weights")
    convs_and_linears = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert [id(p) for p in weights] == [id(p) for p in convs_and_linears]
    assert len(select_parameters(model, "all")) == len(list(model.parameters()))
    frozen = nn.Linear(3, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no parameters requiring grad"):
        select_parameters(frozen, "weights")


def test_opacus_refuses_non_zero_padding_mode():
    model, x = _cnn()  # reflect padding
    with pytest.raises(ValueError, match="padding_mode='reflect'"):
        empirical_ntk(model, x, backend="opacus")


def test_hooks_backend_refuses_unsupported_layers():
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Flatten(), nn.Linear(3 * 4, 2))
    x = torch.randn(3, 2, 6)
    with pytest.raises(ValueError, match="backend='func'"):
        empirical_ntk(model, x, backend="hooks")
    ref = empirical_ntk(model, x, backend="loop")  # the other backends handle it
    assert _rel(empirical_ntk(model, x, backend="func"), ref) < 1e-6


def test_non_logit_output_raises():
    model = nn.Sequential(nn.Conv2d(3, 2, 3))  # (N, 2, H, W), not (N, k)
    with pytest.raises(ValueError, match=r"\(N, k\) logits"):
        empirical_ntk(model, torch.randn(2, 3, 5, 5), backend="hooks")


def test_anil_inner_kernel_is_head_ntk():
    """k phi phi^T equals the NTK of the summed logits restricted to the head weights."""
    model, x = _cnn()
    phi = head_features(model, x)
    assert phi.shape == (5, 6) and not phi.requires_grad
    rows = []
    for n in range(x.shape[0]):
        (g,) = torch.autograd.grad(model(x[n:n + 1]).sum(), [model.classifier.weight])
        rows.append(g.flatten().double())
    J = torch.stack(rows)
    K = anil_inner_kernel(phi, n_logits=3)
    assert K.dtype == torch.float64
    assert _rel(K, J @ J.T) < 1e-6


def test_anil_inner_kernel_and_head_features_validate():
    with pytest.raises(ValueError, match="n_logits"):
        anil_inner_kernel(torch.randn(3, 4), 0)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        anil_inner_kernel(torch.randn(3), 2)
    with pytest.raises(ValueError, match="forward_features"):
        head_features(nn.Linear(3, 2), torch.randn(2, 3))


class _FrozenBranch(nn.Module):
    """A conv used once under no_grad and once normally: only the second use counts."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.classifier = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            frozen = self.conv(x)
        h = self.conv(x) + frozen
        return self.classifier(h.mean(dim=(2, 3)))


@pytest.mark.parametrize("backend", ["hooks", "func"])
def test_uses_under_no_grad_contribute_nothing(backend):
    torch.manual_seed(0)
    model = _FrozenBranch()
    x = torch.randn(4, 2, 5, 5)
    ref = empirical_ntk(model, x, output="full", backend="loop")
    assert _rel(empirical_ntk(model, x, output="full", backend=backend), ref) < 1e-6


@pytest.mark.parametrize("conv, size", [
    (dict(in_channels=3, out_channels=4, kernel_size=3, padding=1), 4),              # unfold + bmm
    (dict(in_channels=3, out_channels=4, kernel_size=3, padding=1), 13),             # grouped trick
    (dict(in_channels=4, out_channels=4, kernel_size=(1, 5), padding=(0, 2), stride=(1, 2)), 24),
    (dict(in_channels=4, out_channels=4, kernel_size=3, padding=2, dilation=2, groups=4), 12),
    (dict(in_channels=4, out_channels=6, kernel_size=3, padding="same", groups=2, padding_mode="circular"), 12),
])
def test_per_sample_conv_gradients_match_autograd(conv, size):
    """Both per-sample Conv2d rules (small outputs: unfold + bmm; else grouped conv)."""
    from kernels._persample import _grad_conv2d

    g = torch.Generator().manual_seed(7)
    torch.manual_seed(7)
    m = nn.Conv2d(**conv, bias=True).double()
    a = torch.randn(3, conv["in_channels"], size, size, generator=g, dtype=torch.float64)
    y = m(a)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    for name in ("weight", "bias"):
        expected = torch.stack([
            torch.autograd.grad(m(a[n:n + 1]), getattr(m, name), dy[n:n + 1])[0].flatten()
            for n in range(3)])
        got = _grad_conv2d(m, name, a, dy)
        assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12)
