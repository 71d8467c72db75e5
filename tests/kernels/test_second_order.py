"""MetaNTK by definition (kernels.second_order) against the composite formula (kernels.meta)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from kernels.meta import meta_ntk
from kernels.ntk import empirical_ntk
from kernels.second_order import second_order_meta_ntk, select_params, stack_tasks
from trainers.maml import ReLUMLP

F64 = torch.float64


@pytest.fixture
def one_thread():
    """Tiny matrices: one torch thread (2 threads on a busy 2-core box were 10-20x slower);
    the previous count is restored."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


class LinearInFeatures(nn.Module):
    """f(x) = W tanh(A x) + b with A frozen: linear in its parameters (W, b), so MAML's
    meta-output has no second-order terms and the composite MetaNTK is exact."""

    def __init__(self, d: int, features: int, out: int, gen: torch.Generator) -> None:
        super().__init__()
        self.register_buffer("A", torch.randn(features, d, generator=gen, dtype=F64))
        self.head = nn.Linear(features, out, dtype=F64)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(out, features, generator=gen, dtype=F64))
            self.head.bias.copy_(torch.randn(out, generator=gen, dtype=F64))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.tanh(x @ self.A.T), torch.ones(x.shape[0], 1, dtype=F64)], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(x @ self.A.T))


def _tasks(gen: torch.Generator, n_tasks: int = 3, n_q: int = 3, n_s: int = 4, d: int = 5):
    return [(torch.randn(n_q, d, generator=gen, dtype=F64), torch.randn(n_s, d, generator=gen, dtype=F64))
            for _ in range(n_tasks)]


@pytest.mark.parametrize("inner_steps", [0, 1, 3])
def test_linear_model_equals_composite_formula_exactly(inner_steps: int) -> None:
    gen = torch.Generator().manual_seed(0)
    model = LinearInFeatures(5, 7, 1, gen)
    pairs = _tasks(gen)
    support_y = [torch.randn(4, 1, generator=gen, dtype=F64) for _ in pairs]
    x, index = stack_tasks(pairs)
    feats = model.features(x)
    theta = feats @ feats.T
    got = second_order_meta_ntk(model, pairs, inner_lr=0.1, inner_steps=inner_steps, support_y=support_y)
    want = meta_ntk(theta, index, inner_lr=0.1, inner_steps=inner_steps, reg=0.0)
    assert float((got - want).abs().max()) <= 1e-8 * float(want.abs().max())


def test_linear_model_with_several_outputs_is_sample_major() -> None:
    """k outputs: rows are (sample, output) pairs, sample-major; the NTK is (phi phi^T) kron I_k."""
    gen = torch.Generator().manual_seed(1)
    k = 2
    model = LinearInFeatures(5, 6, k, gen)
    pairs = _tasks(gen, n_tasks=2)
    x, index = stack_tasks(pairs)
    feats = model.features(x)
    theta = torch.kron(feats @ feats.T, torch.eye(k, dtype=F64))
    expand = [(torch.stack([q * k + c for c in range(k)], 1).reshape(-1),
               torch.stack([s * k + c for c in range(k)], 1).reshape(-1)) for q, s in index]
    got = second_order_meta_ntk(model, pairs, inner_lr=0.07, inner_steps=2)
    want = meta_ntk(theta, expand, inner_lr=0.07, inner_steps=2, reg=0.0)
    assert float((got - want).abs().max()) <= 1e-8 * float(want.abs().max())


def test_zero_inner_steps_is_the_ntk_over_queries() -> None:
    gen = torch.Generator().manual_seed(2)
    model = ReLUMLP(5, 32, 2, generator=gen)
    pairs = _tasks(gen, n_tasks=2)
    x_q = torch.cat([q for q, _ in pairs])
    got = second_order_meta_ntk(model, pairs, inner_lr=0.1, inner_steps=0)
    torch.testing.assert_close(got, empirical_ntk(model, x_q, params="all"), rtol=1e-10, atol=1e-10)


def _mlp_error(width: int, seed: int) -> float:
    gen = torch.Generator().manual_seed(100 + seed)
    pairs = _tasks(gen, n_tasks=2, n_q=3, n_s=3, d=4)
    support_y = [torch.randn(3, generator=gen, dtype=F64) for _ in pairs]
    model = ReLUMLP(4, width, 1, generator=torch.Generator().manual_seed(seed))
    x, index = stack_tasks(pairs)
    theta = empirical_ntk(model, x, params="all")
    composite = meta_ntk(theta, index, inner_lr=0.05, inner_steps=2, reg=0.0)
    definition = second_order_meta_ntk(model, pairs, inner_lr=0.05, inner_steps=2, support_y=support_y)
    return float((composite - definition).norm() / definition.norm())


def test_mlp_composite_error_is_small_and_shrinks_with_width(one_thread: None) -> None:
    """Second-order terms and the drift of the Jacobian through the inner loop are
    O(1/sqrt(width)): averaged over 3 networks, 64x the width must cut the error >= 2x."""
    narrow = sum(_mlp_error(32, s) for s in range(3)) / 3
    wide = sum(_mlp_error(2048, s) for s in range(3)) / 3
    assert wide < 0.02
    assert wide < narrow / 2, (narrow, wide)


def test_weights_only_keeps_biases_fixed() -> None:
    """params='weights' differentiates (and adapts) only the Linear weights: with no inner
    step it is the weight-only NTK; with inner steps it differs from params='all'."""
    gen = torch.Generator().manual_seed(3)
    model = ReLUMLP(4, 16, 1, bias_var=0.5, generator=gen)
    pairs = _tasks(gen, n_tasks=2, d=4)
    assert set(select_params(model, "weights")) == {"layers.0.weight", "layers.1.weight"}
    x_q = torch.cat([q for q, _ in pairs])
    plain = second_order_meta_ntk(model, pairs, inner_lr=0.05, inner_steps=0, params="weights")
    torch.testing.assert_close(plain, empirical_ntk(model, x_q, params="weights", backend="func"))
    got = second_order_meta_ntk(model, pairs, inner_lr=0.05, inner_steps=2, params="weights")
    full = second_order_meta_ntk(model, pairs, inner_lr=0.05, inner_steps=2, params="all")
    assert got.shape == full.shape == (6, 6)
    torch.testing.assert_close(got, got.T)
    assert float((full - got).norm()) > 1e-3 * float(full.norm())


def test_stack_tasks_layout() -> None:
    a, b = torch.zeros(2, 3), torch.ones(4, 3)
    c, d = 2 * torch.ones(1, 3), 3 * torch.ones(3, 3)
    x, index = stack_tasks([(a, b), (c, d)])
    assert x.shape == (10, 3)
    assert [q.tolist() for q, _ in index] == [[0, 1], [6]]
    assert [s.tolist() for _, s in index] == [[2, 3, 4, 5], [7, 8, 9]]


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(tasks_x=[]), ValueError, "empty"),
    (dict(inner_steps=-1), ValueError, "inner_steps"),
    (dict(inner_lr=-0.1), ValueError, "inner_lr"),
    (dict(params="biases"), KeyError, "params"),
    (dict(support_y=[torch.zeros(3)]), ValueError, "support_y"),
])
def test_bad_input_raises(kwargs: dict, error: type, match: str) -> None:
    gen = torch.Generator().manual_seed(4)
    model = ReLUMLP(5, 8, 1, generator=gen)
    args = dict(tasks_x=_tasks(gen, n_tasks=2), inner_lr=0.1, inner_steps=1)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        second_order_meta_ntk(model, args.pop("tasks_x"), **args)
