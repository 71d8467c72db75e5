"""Few-shot evaluation of a pre-trained network: frozen features + per-episode logistic regression.

Protocol of RFS (Tian et al. 2020) as used by the paper: the penultimate (global-average
pooled) features of the trained network, L2-normalised, are frozen; for every N-way
K-shot episode a multinomial logistic regression with an L2 penalty (C = 1) is fitted on
the support set and scored on the query set; results are the mean accuracy over the
episodes and its 95% Student-t interval. Episodes come from the stored, seeded episode
list (``trainers.episodes``) so every method is evaluated on the same tasks.

The regression. sklearn's ``LogisticRegression(C=C, solver="lbfgs")`` (multinomial for
more than two classes) minimises, per episode with support ``X`` (S, D) and labels ``y``,

    f(W, b) = C * sum_i CE(softmax(x_i W + b), y_i) + 1/2 ||W||_F^2,    W (D, n), b (n,)

with the intercept unpenalised. Here all episodes of a batch are fitted at once in float64
by Newton's method. Two exact reductions keep it small:

1. Representer reduction: the loss depends on W only through X W and the penalty is
   rotation invariant, so the optimum lies in the row space of X. With the reduced QR
   ``X^T = Q R`` (Q (D, k) orthonormal, k = min(S, D)), ``W = Q Z`` and the problem
   becomes the same regression on the k-dimensional features ``X Q = R^T`` with
   ``||W|| = ||Z||``. For 5-way 5-shot and D = 640 that is 5*25 + 5 unknowns instead of
   5*640 + 5, so the exact Hessian is cheap.
2. Softmax shift: adding a constant to every intercept changes nothing, so the Newton
   system fixes ``b_n = 0`` (making the Hessian positive definite); the returned
   intercept is re-centred to sum to zero, the solution sklearn's lbfgs reaches from
   its zero start.

Each Newton step solves the (k+1)n-1 system by batched Cholesky with an Armijo
backtracking line search; the objective is strongly convex in Z and strictly convex in
b once every class has a support example, so the iteration converges quadratically to
the unique optimum (the probabilities are unique; W and the centred b are too).
For n = 2 this is the two-column multinomial model, not sklearn's binary model (whose
optimum corresponds to the multinomial one with C doubled).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.augment import Normalization, make_augment, resize, to_float
from trainers.seeds import derive_seed
from trainers.stats import mean_confidence_interval  # re-exported: callers import it from here

__all__ = [
    "evaluate_episodes",
    "evaluate_model",
    "extract_features",
    "fit_logistic_regression",
    "mean_confidence_interval",
    "predict_logits",
]

# Memory for one batch of Hessians (float64) when the episode batch is chosen automatically.
_HESSIAN_BUDGET_BYTES = 256 * 2**20


# --------------------------------------------------------------------------- features


def extract_features(
    model: nn.Module,
    images: Tensor,
    *,
    device: torch.device | str,
    normalization: Normalization,
    batch_size: int = 256,
    image_size: int | None = None,
) -> Tensor:
    """L2-normalised penultimate features ``model.forward_features`` of uint8 images.

    ``images``: uint8 (N, C, H, W) on any device, moved per batch. Returns float32 (N, D)
    on the CPU. The model runs in eval mode under ``no_grad`` (its mode is restored after).
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(
            f"extract_features: expected uint8 images (N, C, H, W), got {images.dtype} "
            f"{tuple(images.shape)}"
        )
    if batch_size < 1:
        raise ValueError(f"extract_features: batch_size={batch_size} must be >= 1")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    out: list[Tensor] = []
    try:
        with torch.no_grad():
            for chunk in images.split(batch_size):
                x = to_float(chunk.to(device, non_blocking=True), normalization, image_size=image_size)
                out.append(_features(model, x).cpu())
    finally:
        model.train(was_training)
    if not out:
        return torch.zeros(0, 0)
    return torch.cat(out)


def _features(model: nn.Module, x: Tensor) -> Tensor:
    """``forward_features`` flattened to (B, D) float32 and L2-normalised along D."""
    f = model.forward_features(x).flatten(1).to(torch.float32)
    return F.normalize(f, dim=1)


# ----------------------------------------------------------------- logistic regression


def _check_fit_inputs(X: Tensor, y: Tensor, n_classes: int, C: float) -> None:
    if X.dim() != 3:
        raise ValueError(
            f"fit_logistic_regression: X must be (episodes, support, features), got {tuple(X.shape)}"
        )
    if y.shape != X.shape[:2]:
        raise ValueError(
            f"fit_logistic_regression: y must have shape {tuple(X.shape[:2])} to match X, "
            f"got {tuple(y.shape)}"
        )
    if y.dtype != torch.int64:
        raise ValueError(f"fit_logistic_regression: y must be int64 labels, got {y.dtype}")
    if n_classes < 2:
        raise ValueError(f"fit_logistic_regression: n_classes={n_classes} must be >= 2")
    if not (math.isfinite(C) and C > 0):
        raise ValueError(f"fit_logistic_regression: C={C} must be a positive number")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ValueError(
            f"fit_logistic_regression: labels must lie in 0..{n_classes - 1}, got "
            f"{int(y.min())}..{int(y.max())}"
        )
    if not bool(torch.isfinite(X).all()):
        raise ValueError(
            "fit_logistic_regression: features contain NaN or inf (did training diverge?)"
        )
    counts = F.one_hot(y, n_classes).sum(dim=1)  # (E, n)
    missing = (counts == 0).any(dim=1)
    if bool(missing.any()):
        first = int(missing.nonzero()[0])
        raise ValueError(
            f"fit_logistic_regression: episode {first} has no support example of class(es) "
            f"{(counts[first] == 0).nonzero().flatten().tolist()}; without one the intercept "
            "has no finite optimum. Sample episodes with every class in the support set"
        )


def _objective(theta: Tensor, A: Tensor, Y: Tensor, C: float, k: int) -> Tensor:
    """f per episode. theta (E, k+1, n) = [Z; b]; A (E, S, k+1) = [X Q, 1]; Y one-hot (E, S, n)."""
    logits = A @ theta
    ce = torch.logsumexp(logits, dim=2) - (logits * Y).sum(dim=2)  # (E, S)
    return C * ce.sum(dim=1) + 0.5 * theta[:, :k].pow(2).sum(dim=(1, 2))


def _grad_hess(theta: Tensor, A: Tensor, Y: Tensor, C: float, k: int) -> tuple[Tensor, Tensor]:
    """Gradient (E, P) and Hessian (E, P, P) of f w.r.t. the free entries of theta.

    Free entries: theta (E, k+1, n) flattened class-major (index c*(k+1) + a) without the
    last one (b_n = 0), so P = (k+1)*n - 1. The loss Hessian
    ``C * sum_s (a_s a_s^T) kron (diag(p_s) - p_s p_s^T)`` is formed as
    ``C * (blockdiag_c(A^T diag(p_c) A) - V^T V)`` with ``V[s, (c, a)] = p_sc a_sa``: two
    batched matmuls and no (E, S, k+1, n, n) temporary.
    """
    e, s, k1 = A.shape
    n = theta.shape[2]
    p = torch.softmax(A @ theta, dim=2)  # (E, S, n)
    grad = C * A.transpose(1, 2) @ (p - Y)  # (E, k+1, n)
    grad[:, :k] += theta[:, :k]
    v = (p.unsqueeze(3) * A.unsqueeze(2)).reshape(e, s, n * k1)  # (E, S, n*(k+1))
    hess = torch.bmm(v.transpose(1, 2), v).neg_()  # (E, n*(k+1), n*(k+1))
    diag_blocks = (v.transpose(1, 2) @ A).view(e, n, k1, k1)  # A^T diag(p_c) A per class
    for c in range(n):
        hess[:, c * k1:(c + 1) * k1, c * k1:(c + 1) * k1] += diag_blocks[:, c]
    hess *= C
    # The L2 penalty on Z: every (c, a) with a < k; the intercept rows a = k are free.
    penalised = (torch.arange(n * k1, device=A.device) % k1 != k).to(hess.dtype)
    hess.diagonal(dim1=1, dim2=2).add_(penalised)
    free = k1 * n - 1
    grad_flat = grad.transpose(1, 2).reshape(e, n * k1)
    return grad_flat[:, :free], hess[:, :free, :free]


def fit_logistic_regression(
    X: Tensor,
    y: Tensor,
    n_classes: int,
    *,
    C: float = 1.0,
    max_iter: int = 100,
    tol: float = 1e-10,
) -> tuple[Tensor, Tensor]:
    """Fit one L2-penalised multinomial logistic regression per episode, all at once.

    ``X``: (E, S, D) support features; ``y``: (E, S) int64 labels in 0..n_classes-1, every
    class present in every episode. Minimises ``C * sum_i CE(x_i W + b, y_i) + ||W||^2 / 2``
    (sklearn's ``LogisticRegression(C, solver="lbfgs")`` objective, multinomial) by batched
    Newton's method in float64 on X's device (see the module docstring for the reduction).
    An episode stops when its gradient max-norm is <= ``tol * max(1, C * S * max|x|)`` or
    its Newton decrement reaches the rounding level of f (after a last full step);
    ``RuntimeError`` if some episode needs more than ``max_iter`` Newton steps.

    Returns ``W`` (E, D, n) and ``b`` (E, n) in float64, ``b`` centred to sum to zero.
    Query logits: ``predict_logits(X_query, W, b)``.
    """
    _check_fit_inputs(X, y, n_classes, C)
    X = X.to(torch.float64)
    e, s, d = X.shape
    n = n_classes
    # Representer reduction: X^T = Q R, features X Q = R^T (E, S, k).
    q, r = torch.linalg.qr(X.transpose(1, 2), mode="reduced")  # q (E, D, k), r (E, k, S)
    k = q.shape[2]
    A = torch.cat([r.transpose(1, 2), X.new_ones(e, s, 1)], dim=2)  # (E, S, k+1)
    Y = F.one_hot(y, n).to(torch.float64)
    theta = X.new_zeros(e, k + 1, n)
    # Gradient tolerance relative to the gradient's natural scale C * S * max|feature|,
    # as sklearn's tol applies to its C * S-scaled objective.
    tol_abs = tol * (C * s * A.abs().amax(dim=(1, 2))).clamp_min(1.0)  # (E,)
    active = torch.ones(e, dtype=torch.bool, device=X.device)
    converged = False
    for _ in range(max_iter):
        ids = active.nonzero().flatten()
        if ids.numel() == 0:
            converged = True
            break
        if ids.numel() == e:  # no copies while every episode is still running
            th, a, yy = theta, A, Y
        else:
            th, a, yy = theta[ids], A[ids], Y[ids]
        grad, hess = _grad_hess(th, a, yy, C, k)
        chol = torch.linalg.cholesky(hess)
        step = -torch.cholesky_solve(grad.unsqueeze(2), chol).squeeze(2)  # (E', P)
        # Back to (E', k+1, n) from the class-major flat layout, with b_n's step 0.
        step_full = torch.cat([step, step.new_zeros(step.shape[0], 1)], dim=1)
        step_full = step_full.view(-1, n, k + 1).transpose(1, 2)
        f0 = _objective(th, a, yy, C, k)
        slope = (grad * step).sum(dim=1)  # -(Newton decrement)^2 < 0
        # Done: gradient small, or the predicted decrease is at f's rounding level (then the
        # full Newton step is taken: quadratic convergence, no line search needed).
        small_gradient = grad.abs().amax(dim=1) <= tol_abs[ids]
        rounding = -slope <= 64 * torch.finfo(f0.dtype).eps * f0.abs().clamp_min(1.0)
        t = torch.ones_like(f0)
        search = ~(small_gradient | rounding)
        for _ in range(40):  # Armijo backtracking, per episode, for the others
            f1 = _objective(th + t.view(-1, 1, 1) * step_full, a, yy, C, k)
            bad = search & (f1 > f0 + 1e-4 * t * slope)
            if not bool(bad.any()):
                break
            t = torch.where(bad, t * 0.5, t)
        t = torch.where(small_gradient, torch.zeros_like(t), t)
        theta[ids] = th + t.view(-1, 1, 1) * step_full
        active[ids[small_gradient | rounding]] = False
    else:
        converged = not bool(active.any())
    if not converged:
        raise RuntimeError(
            f"fit_logistic_regression: {int(active.sum())} of {e} episode(s) not converged after "
            f"{max_iter} Newton steps; raise max_iter or tol (features badly scaled? use "
            "L2-normalised features)"
        )
    W = q @ theta[:, :k]  # (E, D, n)
    b = theta[:, k]
    b = b - b.mean(dim=1, keepdim=True)
    return W, b


def predict_logits(X: Tensor, W: Tensor, b: Tensor) -> Tensor:
    """Logits ``X W + b``: X (E, Q, D), W (E, D, n), b (E, n) -> (E, Q, n) float64."""
    return X.to(W.dtype) @ W + b.unsqueeze(1)


# ------------------------------------------------------------------------- episodes


def _episode_tensors(episodes: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Stack an episode list into support (E, S), support labels (E, S), query (E, Q), query labels (E, Q).

    Accepts ``trainers.episodes.EpisodeList`` (stacked tensors or a sequence of ``Episode``).
    """
    names = ("support", "support_labels", "query", "query_labels")
    if all(isinstance(getattr(episodes, nm, None), Tensor) for nm in names):
        tensors = [getattr(episodes, nm) for nm in names]
        if all(t.dim() == 2 for t in tensors):
            return tuple(t.long() for t in tensors)  # type: ignore[return-value]
    items: Sequence[Any] = list(episodes)
    if not items:
        raise ValueError("evaluate_episodes: the episode list is empty; sample some episodes")
    try:
        stacked = [torch.stack([torch.as_tensor(getattr(ep, nm)) for ep in items]).long() for nm in names]
    except RuntimeError as exc:
        raise ValueError(
            f"evaluate_episodes: episodes differ in size ({exc}); evaluate lists of one "
            "(ways, shots, queries) setting at a time"
        ) from exc
    return tuple(stacked)  # type: ignore[return-value]


def _auto_episode_batch(support_size: int, dim: int, n: int) -> int:
    k = min(support_size, dim)
    params = (k + 1) * n
    per_episode = 8 * params * params * 3  # Hessian, Cholesky factor and einsum temporaries
    return max(1, _HESSIAN_BUDGET_BYTES // per_episode)


def _check_episode_labels(labels: Tensor | None, idx: Tensor, ep_labels: Tensor, what: str) -> None:
    """Each episode label must stand for one class of the split (catches mismatched lists)."""
    if labels is None:
        return
    n = int(ep_labels.max()) + 1
    true = labels[idx]  # (E, S)
    # For each (episode, episode-class), min and max of the split label must agree.
    big = torch.iinfo(torch.int64).max
    lo = torch.full((idx.shape[0], n), big, dtype=torch.int64).scatter_reduce(
        1, ep_labels, true, reduce="amin")
    hi = torch.full((idx.shape[0], n), -1, dtype=torch.int64).scatter_reduce(
        1, ep_labels, true, reduce="amax")
    if bool(((lo != hi) & (hi >= 0)).any()):
        raise ValueError(
            f"evaluate_episodes: {what} labels of the episode list disagree with the split's "
            "labels (one episode class maps to several split classes); the list was sampled "
            "from another split: sample it from this split's labels"
        )


def _check_split_labels(
    episodes: Any, labels: Tensor, support: Tensor, support_y: Tensor, query: Tensor, query_y: Tensor
) -> None:
    """The episode list must come from the split whose ``labels`` (N,) are given.

    ``EpisodeList.check_labels`` compares a hash of the split's labels (exact); other
    episode containers get the weaker check that each episode class is one split class.
    """
    check = getattr(episodes, "check_labels", None)
    if callable(check):
        check(labels)
        return
    _check_episode_labels(labels.cpu(), support, support_y, "support")
    _check_episode_labels(labels.cpu(), query, query_y, "query")


def _accuracies(
    support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor, n: int, C: float,
    fit_device: torch.device | None = None,
) -> Tensor:
    """Query accuracy per episode: support (E, S, D), (E, S); query (E, Q, D), (E, Q) -> (E,).

    The fit runs on ``fit_device`` (default: the support features' device).
    """
    dev = support_x.device if fit_device is None else fit_device
    W, b = fit_logistic_regression(support_x.to(dev), support_y.to(dev), n, C=C)
    pred = predict_logits(query_x.to(dev), W, b).argmax(dim=2)
    return (pred == query_y.to(dev)).to(torch.float64).mean(dim=1).cpu()


def evaluate_episodes(
    features: Tensor,
    labels: Tensor | None,
    episodes: Any,
    *,
    C: float = 1.0,
    batch: int | None = None,
    progress: bool = True,
    fit_device: torch.device | str | None = None,
) -> Tensor:
    """Per-episode query accuracy of logistic regression on frozen features.

    ``features``: (N, D) (L2-normalised, from ``extract_features``) indexed by the episodes;
    ``labels``: the split's (N,) labels, used only to check that the episode list belongs
    to this split (``None`` skips the check); ``episodes``: an ``EpisodeList``.
    ``batch``: episodes fitted together (default: as many as fit a 256 MiB Hessian budget).
    ``fit_device``: where the float64 fits run (default: the features' device; a GPU helps
    with large support sets such as 5x augmented 5-shot).
    Returns float64 (E,) accuracies in [0, 1], in episode order.
    """
    support, support_y, query, query_y = _episode_tensors(episodes)
    n_total = features.shape[0]
    for name, idx in (("support", support), ("query", query)):
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n_total):
            raise ValueError(
                f"evaluate_episodes: {name} indices reach {int(idx.max())} but there are only "
                f"{n_total} feature rows; extract features for the split the episodes index"
            )
    if labels is not None:
        _check_split_labels(episodes, labels, support, support_y, query, query_y)
    n = int(support_y.max()) + 1
    batch = batch or _auto_episode_batch(support.shape[1], features.shape[1], n)
    dev = None if fit_device is None else torch.device(fit_device)
    from trainers.progress import progress_bar

    accs = []
    with progress_bar(support.shape[0], "episodes", "ep", enabled=progress) as bar:
        for start in range(0, support.shape[0], batch):
            sl = slice(start, start + batch)
            accs.append(_accuracies(features[support[sl]], support_y[sl], features[query[sl]],
                                    query_y[sl], n, C, dev))
            bar.update(accs[-1].numel())
    return torch.cat(accs)


def evaluate_model(
    model: nn.Module,
    split: Any,
    episodes: Any,
    *,
    device: torch.device | str,
    normalization: Normalization | None = None,
    augment: str | None = None,
    support_augment: int = 0,
    seed: int = 0,
    C: float = 1.0,
    batch_size: int = 256,
    image_size: int | None = None,
    episode_batch: int | None = None,
    progress: bool = True,
) -> Tensor:
    """Per-episode accuracies (E,) of ``model``'s frozen features on ``split``'s episodes.

    Features are extracted once for every image the episodes use. ``support_augment=k > 0``
    replaces each support set by ``k`` augmented copies (augmentation ``augment``, e.g.
    the training one; the paper uses k = 5), drawn from a generator seeded by
    ``(seed, episode index)`` so results do not depend on batching; queries stay plain.
    The logistic regressions run on ``device`` too.
    ``normalization`` defaults to ``trainers.data.NORMALIZATION[split.dataset]``.
    """
    if support_augment < 0:
        raise ValueError(f"evaluate_model: support_augment={support_augment} must be >= 0")
    if support_augment and augment is None:
        raise ValueError(
            "evaluate_model: support_augment > 0 needs augment=<name> (e.g. the training "
            "recipe's augmentation, such as 'rfs84')"
        )
    if normalization is None:
        from trainers.data import NORMALIZATION  # KeyError listing the datasets if unknown

        normalization = NORMALIZATION[split.dataset]
    device = torch.device(device)
    support, support_y, query, query_y = _episode_tensors(episodes)
    n_images = split.images.shape[0]
    if max(int(support.max()), int(query.max())) >= n_images:
        raise ValueError(
            f"evaluate_model: episodes index images up to {max(int(support.max()), int(query.max()))}"
            f" but split {getattr(split, 'split', '?')!r} has {n_images}; sample episodes from this split"
        )
    _check_split_labels(episodes, split.labels, support, support_y, query, query_y)
    used = torch.cat([query.flatten()] + ([] if support_augment else [support.flatten()])).unique()
    position = torch.full((n_images,), -1, dtype=torch.int64)
    position[used] = torch.arange(used.numel())
    feats = extract_features(model, split.images[used], device=device, normalization=normalization,
                             batch_size=batch_size, image_size=image_size)
    n = int(support_y.max()) + 1
    if not support_augment:
        remapped = _RemappedEpisodes(position[support], support_y, position[query], query_y)
        return evaluate_episodes(feats, None, remapped, C=C, batch=episode_batch, progress=progress,
                                 fit_device=device)

    aug = make_augment(augment, normalization)  # type: ignore[arg-type]
    s_aug = support.shape[1] * support_augment
    batch = episode_batch or _auto_episode_batch(s_aug, feats.shape[1], n)
    from trainers.progress import progress_bar

    accs = []
    was_training = model.training
    model.eval()
    try:
        with progress_bar(support.shape[0], "episodes", "ep", enabled=progress) as bar:
            for start in range(0, support.shape[0], batch):
                stop = min(start + batch, support.shape[0])
                xs = torch.stack([
                    _augmented_support_features(model, split.images[support[e]], aug,
                                                derive_seed(seed, e), support_augment, device,
                                                batch_size, image_size)
                    for e in range(start, stop)
                ])  # (e, S*k, D)
                ys = support_y[start:stop].repeat(1, support_augment)
                accs.append(_accuracies(xs, ys, feats[position[query[start:stop]]],
                                        query_y[start:stop], n, C, device))
                bar.update(stop - start)
    finally:
        model.train(was_training)
    return torch.cat(accs)


class _RemappedEpisodes:
    """Stacked episode tensors whose indices point into a compact feature matrix."""

    def __init__(self, support: Tensor, support_labels: Tensor, query: Tensor, query_labels: Tensor):
        self.support, self.support_labels = support, support_labels
        self.query, self.query_labels = query, query_labels


def _augmented_support_features(
    model: nn.Module,
    images: Tensor,
    augment: Any,
    seed: int,
    copies: int,
    device: torch.device,
    batch_size: int,
    image_size: int | None,
) -> Tensor:
    """Features of ``copies`` augmented versions of one support set: (S, ...) uint8 -> (S*copies, D).

    Row order: copy-major (all S images of copy 0, then copy 1, ...), matching
    ``support_y.repeat(1, copies)``.
    """
    gen = torch.Generator().manual_seed(seed)
    out = []
    with torch.no_grad():
        for chunk in images.repeat(copies, 1, 1, 1).split(batch_size):
            x = augment(chunk.to(device), gen)
            if image_size is not None:
                x = resize(x, image_size)
            out.append(_features(model, x))
    return torch.cat(out).cpu()
