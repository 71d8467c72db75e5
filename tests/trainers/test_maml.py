"""MAML trainer and the Theorem-2 kernel-regression prediction (trainers.maml)."""
from __future__ import annotations

import math

import pytest
import torch

from kernels.analytic import analytic_ntk
from kernels.meta import meta_ntk
from kernels.second_order import stack_tasks
from trainers.maml import (
    ReLUMLP,
    gd_filter,
    kernel_regression_prediction,
    linearised_adaptation,
    meta_outputs,
    predicted_losses,
    sample_sinusoid_tasks,
    train_maml,
)

F64 = torch.float64


@pytest.fixture
def one_thread():
    """Tiny matrices: one torch thread (2 threads on a busy 2-core box were 10-20x slower);
    the previous count is restored."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_relumlp_shapes_determinism_and_parameters() -> None:
    a = ReLUMLP(3, 8, 2, out=2, generator=_gen(1))
    b = ReLUMLP(3, 8, 2, out=2, generator=_gen(1))
    x = torch.randn(5, 3, generator=_gen(2), dtype=F64)
    assert a(x).shape == (5, 2) and a(x).dtype == F64
    torch.testing.assert_close(a(x), b(x))
    assert [n for n, _ in a.named_parameters()] == ["layers.0.weight", "layers.1.weight", "layers.2.weight"]
    with_bias = ReLUMLP(3, 8, 1, bias_var=0.1, generator=_gen(1))
    assert {n for n, _ in with_bias.named_parameters()} >= {"biases.0", "biases.1"}
    assert not torch.equal(ReLUMLP(3, 8, 1, generator=_gen(3))(x), ReLUMLP(3, 8, 1, generator=_gen(4))(x))


@pytest.mark.parametrize("kwargs", [dict(width=0), dict(depth=-1), dict(d=2.5), dict(weight_var=0.0),
                                    dict(bias_var=-1.0)])
def test_relumlp_bad_arguments(kwargs: dict) -> None:
    args = dict(d=3, width=4, depth=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match="ReLUMLP"):
        ReLUMLP(**args)


def test_sinusoid_tasks_are_seeded_and_on_the_sphere() -> None:
    t1 = sample_sinusoid_tasks(3, d=6, n_support=4, n_query=2, generator=_gen(5))
    t2 = sample_sinusoid_tasks(3, d=6, n_support=4, n_query=2, generator=_gen(5))
    assert len(t1) == 3 and t1[0].x_support.shape == (4, 6) and t1[0].y_query.shape == (2,)
    torch.testing.assert_close(t1[2].y_support, t2[2].y_support)
    torch.testing.assert_close(t1[0].x_query.norm(dim=1), torch.full((2,), math.sqrt(6), dtype=F64))
    assert float(t1[0].y_support.abs().max()) <= 2.0
    with pytest.raises(ValueError, match="n_query"):
        sample_sinusoid_tasks(1, d=2, n_support=1, n_query=0, generator=_gen())


@pytest.mark.parametrize("steps", [0, 1, 5])
def test_gd_filter_is_the_sum_of_gradient_steps(steps: int) -> None:
    v = torch.randn(4, 2, generator=_gen(6), dtype=F64)
    m = v @ v.T  # rank 2: singular
    lr = 0.1
    want = sum((lr * torch.linalg.matrix_power(torch.eye(4, dtype=F64) - lr * m, k) for k in range(steps)),
               torch.zeros(4, 4, dtype=F64))
    torch.testing.assert_close(gd_filter(m, lr, steps), want, rtol=1e-10, atol=1e-12)


def test_gd_filter_converged_is_the_pseudo_inverse() -> None:
    v = torch.randn(5, 3, generator=_gen(7), dtype=F64)
    m = v @ v.T
    torch.testing.assert_close(gd_filter(m, 0.0, None), torch.linalg.pinv(m, hermitian=True), rtol=1e-8, atol=1e-8)
    lr = 0.5 / float(torch.linalg.eigvalsh(m).max())
    far = gd_filter(m, lr, 20000)
    torch.testing.assert_close(far @ m, torch.linalg.pinv(m, hermitian=True) @ m, rtol=1e-8, atol=1e-8)


def test_meta_outputs_without_inner_steps_are_plain_outputs() -> None:
    model = ReLUMLP(4, 16, 1, generator=_gen(8))
    tasks = sample_sinusoid_tasks(2, d=4, n_support=3, n_query=2, generator=_gen(9))
    params = {n: p.detach().requires_grad_(True) for n, p in model.named_parameters()}
    out = meta_outputs(model, params, tasks, inner_lr=0.1, inner_steps=0)
    torch.testing.assert_close(out, model(torch.cat([t.x_query for t in tasks])).reshape(-1))


def _linear_setup(inner_steps: int):
    """A depth-0 ReLUMLP is linear in its weights: MAML is exactly the kernel dynamics."""
    d = 6
    gen = _gen(10)
    train = sample_sinusoid_tasks(3, d=d, n_support=3, n_query=2, generator=gen)
    test = sample_sinusoid_tasks(2, d=d, n_support=3, n_query=2, generator=gen)
    model = ReLUMLP(d, 1, 0, generator=_gen(11))
    x, index = stack_tasks([(t.x_query, t.x_support) for t in train + test])
    y = torch.cat([torch.cat([t.y_query, t.y_support]) for t in train + test])
    theta = analytic_ntk(x, None, 0)  # exact for a linear model
    with torch.no_grad():
        f0 = model(x).reshape(-1)
    inner_lr = 0.3 / float(torch.linalg.eigvalsh(theta).max())
    phi = meta_ntk(theta, index, inner_lr=inner_lr, inner_steps=inner_steps, reg=0.0)
    g = torch.cat([linearised_adaptation(theta[q][:, s], theta[s][:, s], f0[q], f0[s], y[s],
                                         inner_lr=inner_lr, inner_steps=inner_steps) for q, s in index])
    return model, train, test, phi, g, inner_lr


@pytest.mark.parametrize("inner_steps", [1, 2])
def test_linear_model_maml_matches_theorem_2_exactly(inner_steps: int) -> None:
    model, train, test, phi, g, inner_lr = _linear_setup(inner_steps)
    q = 6  # training queries: 3 tasks x 2
    y_train = torch.cat([t.y_query for t in train])
    outer_lr = 0.9 / float(torch.linalg.eigvalsh(phi[:q, :q]).max())
    steps = 40
    result = train_maml(model, train, inner_lr=inner_lr, inner_steps=inner_steps, outer_lr=outer_lr, outer_steps=steps)
    # Theorem 1 for a linear model: the loss curve is exactly the kernel one.
    torch.testing.assert_close(result.losses, predicted_losses(phi[:q, :q], g[:q], y_train, outer_lr=outer_lr,
                                                               outer_steps=steps), rtol=1e-8, atol=1e-14)
    # Theorem 2 (eq. 12 at finite t): trained meta-outputs on new tasks.
    params = {n: p.clone().requires_grad_(True) for n, p in result.params.items()}
    trained = meta_outputs(model, params, test, inner_lr=inner_lr, inner_steps=inner_steps).detach()
    pred = kernel_regression_prediction(phi[:q, :q], phi[q:, :q], g[:q], y_train, g[q:], outer_lr=outer_lr,
                                        outer_steps=steps)
    torch.testing.assert_close(trained, pred, rtol=1e-9, atol=1e-9)
    # And the linear meta-outputs at init are exactly the G terms.
    params0 = {n: p.detach().requires_grad_(True) for n, p in model.named_parameters()}
    torch.testing.assert_close(meta_outputs(model, params0, train + test, inner_lr=inner_lr,
                                            inner_steps=inner_steps).detach(), g, rtol=1e-10, atol=1e-10)


def test_converged_prediction_interpolates_training_targets() -> None:
    _, train, _, phi, g, _ = _linear_setup(1)
    y_train = torch.cat([t.y_query for t in train])
    fit = kernel_regression_prediction(phi[:6, :6], phi[:6, :6], g[:6], y_train, g[:6])
    torch.testing.assert_close(fit, y_train, rtol=1e-8, atol=1e-8)
    with pytest.raises(ValueError, match="outer_lr"):
        kernel_regression_prediction(phi[:6, :6], phi[:6, :6], g[:6], y_train, g[:6], outer_steps=3)


def test_maml_loss_decreases_on_a_relu_network(one_thread: None) -> None:
    d = 16
    tasks = sample_sinusoid_tasks(3, d=d, n_support=3, n_query=3, generator=_gen(12))
    x, index = stack_tasks([(t.x_query, t.x_support) for t in tasks])
    theta = analytic_ntk(x, None, 1)
    inner_lr = 0.5 / float(torch.linalg.eigvalsh(theta).max())
    phi = meta_ntk(theta, index, inner_lr=inner_lr, inner_steps=1, reg=0.0)
    outer_lr = 1.0 / float(torch.linalg.eigvalsh(phi).max())
    model = ReLUMLP(d, 256, 1, generator=_gen(13))
    result = train_maml(model, tasks, inner_lr=inner_lr, inner_steps=1, outer_lr=outer_lr, outer_steps=30)
    losses = result.losses
    assert losses.shape == (31,)
    assert float(losses[-1]) < 1e-3 * float(losses[0])
    assert bool((losses[1:] <= losses[:-1] * 1.001).all())  # monotone up to rounding
    # The model passed in is untouched: training is functional.
    assert not torch.equal(result.params["layers.0.weight"], model.layers[0].weight)


def test_maml_reports_divergence() -> None:
    tasks = sample_sinusoid_tasks(2, d=4, n_support=2, n_query=2, generator=_gen(14))
    with pytest.raises(ValueError, match="outer_lr"):
        train_maml(ReLUMLP(4, 8, 1, generator=_gen(15)), tasks, inner_lr=0.01, inner_steps=1, outer_lr=1e6,
                   outer_steps=200)
    with pytest.raises(ValueError, match="outer_steps"):
        train_maml(ReLUMLP(4, 8, 1), tasks, inner_lr=0.01, inner_steps=1, outer_lr=0.1, outer_steps=-1)
