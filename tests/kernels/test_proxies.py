"""Zero-cost proxies: each against a value computed by hand (NumPy formulas written here,
independently of kernels.proxies) on a tiny network; registry, purity, masks, kernel wrappers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from kernels import proxies as P
from kernels.meta import meta_ntk
from kernels.ntk import anil_inner_kernel, empirical_ntk, head_features
from kernels.regions import count_linear_regions
from kernels.spectral import condition_number
from search_spaces.supernet import Supernet, full_masks, thin_supernet

K_EPS = P.JACOBIAN_EPS
SETTINGS = P.ProxySettings()
WAYS, D, H = 2, 4, 8


def _batch(x: torch.Tensor, ways: int = WAYS, tasks: int = 2, region_x: torch.Tensor | None = None) -> P.ProxyBatch:
    """`tasks` tasks, each: `ways` queries then `ways` supports, class by class (1 per class)."""
    per = 2 * ways
    idx = [(torch.arange(t * per, t * per + ways), torch.arange(t * per + ways, (t + 1) * per)) for t in range(tasks)]
    labels = torch.arange(ways).repeat(2 * tasks)
    return P.ProxyBatch(x, labels, idx, ways, region_x)


@pytest.fixture()
def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(D, H, bias=False), nn.ReLU(), nn.Linear(H, WAYS, bias=False))


@pytest.fixture()
def batch() -> P.ProxyBatch:
    return _batch(torch.randn(8, 1, 2, 2, generator=torch.Generator().manual_seed(1)))


def _np(mlp: nn.Module, batch: P.ProxyBatch) -> dict[str, np.ndarray]:
    """Forward and backward of the 2-layer MLP by hand (float64)."""
    W1 = mlp[1].weight.detach().double().numpy()
    W2 = mlp[3].weight.detach().double().numpy()
    x = batch.x.reshape(len(batch.x), -1).double().numpy()
    a = x @ W1.T
    r = np.maximum(a, 0)
    z = r @ W2.T
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    Y = np.eye(WAYS)[batch.labels.numpy()]
    dz = (p - Y) / len(x)            # d mean-CE / d logits
    da = (dz @ W2) * (a > 0)
    return {"W1": W1, "W2": W2, "x": x, "a": a, "r": r, "z": z, "dz": dz, "da": da,
            "G1": da.T @ x, "G2": dz.T @ r}


def _run(name: str, model: nn.Module, batch: P.ProxyBatch, seed: int = 0) -> float:
    return P.compute_proxy(name, model, batch, SETTINGS, torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- hand-computed values


def test_size_proxies_by_hand(mlp, batch) -> None:
    assert _run("params", mlp, batch) == D * H + H * WAYS
    assert _run("flops", mlp, batch) == D * H + H * WAYS  # one MAC per weight for a linear layer
    h = _np(mlp, batch)
    assert _run("l2_norm", mlp, batch) == pytest.approx(np.linalg.norm(h["W1"]) + np.linalg.norm(h["W2"]), rel=1e-12)


def test_flops_of_a_conv_by_hand() -> None:
    conv = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(3 * 5 * 5, WAYS))
    b = _batch(torch.randn(8, 2, 5, 5))
    assert _run("flops", conv, b) == 3 * 5 * 5 * (2 * 9) + 75 * WAYS
    assert _run("params", conv, b) == 3 * 2 * 9 + 75 * WAYS + WAYS  # the Linear bias counts


def test_gradient_proxies_by_hand(mlp, batch) -> None:
    h = _np(mlp, batch)
    assert _run("grad_norm", mlp, batch) == pytest.approx(np.linalg.norm(h["G1"]) + np.linalg.norm(h["G2"]), rel=1e-5)
    assert _run("plain", mlp, batch) == pytest.approx((h["W1"] * h["G1"]).sum() + (h["W2"] * h["G2"]).sum(),
                                                       rel=1e-5, abs=1e-9)
    assert _run("snip", mlp, batch) == pytest.approx(np.abs(h["W1"] * h["G1"]).sum() + np.abs(h["W2"] * h["G2"]).sum(),
                                                      rel=1e-5)
    fisher = sum((0.5 * (act * grad) ** 2).mean(0).sum() for act, grad in ((h["a"], h["da"]), (h["z"], h["dz"])))
    assert _run("fisher", mlp, batch) == pytest.approx(fisher, rel=1e-5)


def test_grasp_of_a_linear_classifier_by_hand(batch) -> None:
    torch.manual_seed(3)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(D, WAYS, bias=False))
    W = lin[1].weight.detach().double().numpy()
    x = batch.x.reshape(8, -1).double().numpy()
    z = x @ W.T
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = ((p - np.eye(WAYS)[batch.labels.numpy()]) / 8).T @ x
    # Hessian of the mean cross-entropy of softmax(W x) applied to g:
    # (1/N) sum_n [(diag p_n - p_n p_n^T) g x_n] x_n^T
    hg = sum(np.outer((np.diag(pn) - np.outer(pn, pn)) @ g @ xn, xn) for pn, xn in zip(p, x)) / 8
    assert _run("grasp", lin, batch) == pytest.approx(-(W * hg).sum(), rel=1e-4)


def test_fisher_of_a_conv_sums_positions_before_squaring() -> None:
    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.Flatten(), nn.Linear(2 * 4, WAYS, bias=False))
    b = _batch(torch.randn(8, 1, 2, 2))
    w = net[0].weight.detach().double().reshape(2)
    x = b.x.double()[:, 0]                              # (8, 2, 2)
    a = w.view(1, 2, 1, 1) * x.unsqueeze(1)              # conv output (8, 2, 2, 2)
    z = a.reshape(8, -1) @ net[2].weight.detach().double().T
    dz = (torch.softmax(z, 1) - torch.eye(WAYS, dtype=torch.float64)[b.labels]) / 8
    da = (dz @ net[2].weight.detach().double()).reshape(8, 2, 2, 2)
    expected = (0.5 * (a * da).sum((2, 3)).pow(2).mean(0)).sum() + (0.5 * (z * dz).pow(2).mean(0)).sum()
    assert _run("fisher", net, b) == pytest.approx(float(expected), rel=1e-5)


def test_synflow_of_a_positive_two_layer_net_is_twice_its_output(mlp, batch) -> None:
    # With |W| and an all-ones input every ReLU is active: R = 1^T |W2| |W1| 1 and each layer's
    # sum |W * dR/dW| equals R (Euler's theorem for a function linear in each layer).
    h = _np(mlp, batch)
    R = np.abs(h["W2"]).sum(0) @ np.abs(h["W1"]) @ np.ones(D)
    assert _run("synflow", mlp, batch) == pytest.approx(2 * R, rel=1e-12)


def test_synflow_bypasses_norm_layers(mlp, batch) -> None:
    with_norm = nn.Sequential(mlp[0], mlp[1], nn.LayerNorm(H, elementwise_affine=False), mlp[2], mlp[3])
    assert _run("synflow", with_norm, batch) == _run("synflow", mlp, batch)


def _jacobians(h: dict[str, np.ndarray]) -> np.ndarray:
    # d(sum of logits)/dx_n = W1^T diag(a_n > 0) W2^T 1
    return np.stack([h["W1"].T @ ((an > 0) * (h["W2"].T @ np.ones(WAYS))) for an in h["a"]])


def test_jacov_by_hand(mlp, batch) -> None:
    v = np.linalg.eigvalsh(np.corrcoef(_jacobians(_np(mlp, batch))))
    assert _run("jacov", mlp, batch) == pytest.approx(-np.sum(np.log(v + K_EPS) + 1 / (v + K_EPS)), rel=1e-6)


def test_epe_nas_groups_by_task_and_label(mlp, batch) -> None:
    J = _jacobians(_np(mlp, batch))
    expected = 0.0
    for task in range(2):
        for label in range(WAYS):
            rows = [task * 2 * WAYS + label, task * 2 * WAYS + WAYS + label]  # its query and its support
            r = np.corrcoef(J[rows])[0, 1]
            expected += abs(2 * math.log(1 + K_EPS) + 2 * math.log(abs(r) + K_EPS))
    assert _run("epe_nas", mlp, batch) == pytest.approx(expected, rel=1e-6)
    assert batch.class_ids().tolist() == [0, 1, 0, 1, 2, 3, 2, 3]


def test_nwot_by_hand(batch) -> None:
    torch.manual_seed(6)
    wide = nn.Sequential(nn.Flatten(), nn.Linear(D, 64, bias=False), nn.ReLU(), nn.Linear(64, WAYS, bias=False))
    c = (batch.x.reshape(8, -1).double().numpy() @ wide[1].weight.detach().double().numpy().T > 0).astype(np.float64)
    K = c @ c.T + (1 - c) @ (1 - c).T  # units minus Hamming distance
    sign, logdet = np.linalg.slogdet(K)
    assert np.isfinite(logdet) and sign != 0
    assert _run("nwot", wide, batch) == pytest.approx(logdet, rel=1e-9)


def test_zen_by_hand_without_norms(mlp, batch) -> None:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(tuple(batch.x.shape), generator=g)
    e = torch.randn(tuple(batch.x.shape), generator=g)
    h = _np(mlp, batch)

    def f(inp: torch.Tensor) -> np.ndarray:
        return np.maximum(inp.reshape(8, -1).double().numpy() @ h["W1"].T, 0) @ h["W2"].T

    delta = np.abs(f(x) - f(x + SETTINGS.zen_alpha * e)).sum(1).mean()
    assert _run("zen", mlp, batch, seed=7) == pytest.approx(math.log(delta), rel=1e-6)


def test_zen_adds_the_log_std_of_each_norm_and_reads_features_before_pooling() -> None:
    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.GroupNorm(2, 4), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, WAYS))
    b = _batch(torch.randn(8, 1, 4, 4))
    g = torch.Generator().manual_seed(2)
    x, e = torch.randn(8, 1, 4, 4, generator=g), torch.randn(8, 1, 4, 4, generator=g)
    w = net[0].weight.detach().double()

    def pre_pool(inp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = torch.nn.functional.conv2d(inp.double(), w, padding=1).reshape(8, 2, -1)  # 2 groups of 2 channels
        mu, var = c.mean(-1, keepdim=True), c.var(-1, unbiased=False, keepdim=True)
        return torch.relu((c - mu) / torch.sqrt(var + 1e-5)), var

    fx, var = pre_pool(x)
    fe, _ = pre_pool(x + 0.01 * e)
    expected = math.log(float((fx - fe).abs().reshape(8, -1).sum(1).mean())) + 0.5 * math.log(float(var.mean()))
    assert _run("zen", net, b, seed=2) == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------- kernel wrappers


@pytest.fixture(scope="module")
def supernet() -> Supernet:
    torch.manual_seed(0)
    net = Supernet(4, WAYS, 2, in_channels=1, norm="group")
    net.train()
    return net


@pytest.fixture(scope="module")
def sbatch() -> P.ProxyBatch:
    g = torch.Generator().manual_seed(3)
    return _batch(torch.randn(8, 1, 8, 8, generator=g), region_x=torch.randn(50, 1, 3, 3, generator=g))


@pytest.mark.parametrize("algorithm", ["maml", "anil"])
def test_metantk_wrappers_equal_the_kernels(supernet, sbatch, algorithm: str) -> None:
    theta = empirical_ntk(supernet, sbatch.x)
    inner = anil_inner_kernel(head_features(supernet, sbatch.x), WAYS) if algorithm == "anil" else None
    # a short inner time: with the paper's lastact the support eigenvalues are large enough
    # that exp(-t s) vanishes (t = inf and t = 2 give the same digits) for longer times
    settings = P.ProxySettings(finite_inner_time=1e-3, **{f"{algorithm}_reg": 1e-4})
    for suffix, t in (("", math.inf), ("_finite", 1e-3)):
        expected = condition_number(meta_ntk(theta, sbatch.tasks, inner=inner, inner_time=t, reg=1e-4))
        got = P.compute_proxy(f"cn_metantk_{algorithm}{suffix}", supernet, sbatch, settings, torch.Generator())
        assert got == pytest.approx(expected, rel=1e-9)
    assert P.compute_proxy(f"cn_metantk_{algorithm}", supernet, sbatch, settings, torch.Generator()) != \
        P.compute_proxy(f"cn_metantk_{algorithm}_finite", supernet, sbatch, settings, torch.Generator())


def test_ntk_and_regions_wrappers_equal_the_kernels(supernet, sbatch) -> None:
    assert _run("cn_ntk", supernet, sbatch) == pytest.approx(condition_number(empirical_ntk(supernet, sbatch.x)), rel=1e-9)
    thin = thin_supernet(in_channels=1)
    settings = P.ProxySettings(region_batch=25)
    expected = count_linear_regions(thin, sbatch.region_x, batch_size=25)
    assert P.compute_proxy("regions", thin, sbatch, settings, torch.Generator()) == expected
    with pytest.raises(ValueError, match="region_x"):
        _run("regions", thin, _batch(sbatch.x))


# ----------------------------------------------------------------------------- registry, purity, masks


def test_unknown_proxy_lists_valid_names() -> None:
    with pytest.raises(KeyError, match="valid: cn_metantk_maml.*synflow.*flops"):
        P.get_proxy("synflwo")


def test_every_standard_proxy_is_registered_with_its_direction() -> None:
    for name in ("synflow", "snip", "grasp", "fisher", "grad_norm", "jacov", "nwot", "zen", "epe_nas", "l2_norm",
                 "plain", "params", "flops", "regions"):
        assert P.get_proxy(name).higher_is_better
    for name in ("cn_metantk_maml", "cn_metantk_anil", "cn_metantk_maml_finite", "cn_metantk_anil_finite", "cn_ntk"):
        assert not P.get_proxy(name).higher_is_better
    assert {p.network for p in P.PROXIES.values()} == set(P.NETWORKS)


@pytest.mark.parametrize("name", [n for n in P.PROXY_NAMES if P.get_proxy(n).network in ("kernel", "ntk")])
def test_proxies_leave_the_model_untouched_and_are_deterministic(supernet, sbatch, name: str) -> None:
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    first = _run(name, supernet, sbatch, seed=11)
    second = _run(name, supernet, sbatch, seed=11)
    assert first == second or (math.isnan(first) and math.isnan(second))
    assert not math.isnan(first)
    for k, v in supernet.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in supernet.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in supernet.modules())


def test_pruned_ops_count_for_nothing(supernet, sbatch) -> None:
    from search_spaces.ops import PRIMITIVES

    masks = full_masks()
    op = PRIMITIVES.index("conv_3x3")
    cell = supernet.cells[0]
    masks[cell.cell_type][0, op] = False
    # a mask applies to every cell of its type
    edge_ops = [c.edges[0].ops[op] for c in supernet.cells if c.cell_type == cell.cell_type]
    pruned_params = [p for m in edge_ops for p in m.parameters()]
    try:
        supernet.set_masks(masks)
        assert _run("params", supernet, sbatch) == _run("params", Supernet(4, WAYS, 2, in_channels=1, norm="group"),
                                                          sbatch) - sum(p.numel() for p in pruned_params)
        grads_used = {id(p) for p, _ in P._loss_grads(supernet, sbatch)}
        assert not grads_used & {id(p) for p in pruned_params}
    finally:
        supernet.set_masks(full_masks())


def test_batch_labels_must_fit_the_head() -> None:
    with pytest.raises(ValueError, match="0..1"):
        P.ProxyBatch(torch.zeros(2, 1), torch.tensor([0, 2]), [(torch.tensor([0]), torch.tensor([1]))], 2)


def test_kernel_batch_labels_are_task_local_classes() -> None:
    from trainers.data import load_split
    from trainers.episodes import sample_kernel_batch

    split = load_split("synthetic", None, "train", train_classes=8, images_per_class=6)
    kb = sample_kernel_batch(split, tasks=2, ways=3, shots=2, queries=1, image_size=16,
                             generator=torch.Generator().manual_seed(0))
    for q, s in kb.tasks:
        idx = torch.cat([q, s])
        real = split.labels[kb.source[idx]]
        local = kb.labels[idx]
        # same task-local label <=> same class of the split, within a task
        assert (real.unsqueeze(0) == real.unsqueeze(1)).equal(local.unsqueeze(0) == local.unsqueeze(1))
        assert sorted(local.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
