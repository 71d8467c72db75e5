"""Number of linear regions of a ReLU network over a batch of inputs (TE-NAS's expressivity score).

A ReLU network is piecewise linear; inputs with the same on/off pattern of every ReLU unit
lie in the same linear region. ``count_linear_regions`` returns the exact number of distinct
sign patterns over the batch (design section 3): every ``nn.ReLU`` module gets a forward hook
for the duration of the call only, each output is reduced to its sign bits ``out > 0``
(flattened per sample, concatenated over ReLU calls in call order), the bits are packed
into int64 words (63 bits each) and the distinct rows are counted with ``torch.unique``:
O(N * F / 63) memory and O(N log N) comparisons for N samples and F units.

``count_linear_regions_pairwise`` is the reference's O(N^2) method, for comparison: with
the 0/1 pattern matrix ``S`` (N, F), the Hamming distances ``D = S (1-S)^T + (1-S) S^T``;
sample i's pattern occurs ``m_i = #{j : D_ij = 0}`` times, and the count is
``sum_i 1 / m_i``. Here it runs in float64 (integer-exact up to 2^53), not the
reference's fp16 (whose integers are exact only up to 2048).

The model runs in its current mode under ``no_grad``. With train-mode BatchNorm (the
reference's thin supernet) the patterns depend on which samples share a forward pass, so
``batch_size`` is part of the definition: the reference forwards 3 batches of 1000 and
counts the distinct patterns over all 3000 samples (``batch_size=1000``).
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

__all__ = ["count_linear_regions", "count_linear_regions_pairwise", "sign_patterns",
           "pack_bits"]

_WORD_BITS = 63  # bits per int64 word, leaving the sign bit clear


def pack_bits(bits: Tensor) -> Tensor:
    """Pack a (N, F) bool matrix into (N, ceil(F / 63)) int64 words, row order preserved.

    Two rows are equal iff their packed rows are equal.
    """
    N, F = bits.shape
    words = max(1, -(-F // _WORD_BITS))
    padded = torch.zeros(N, words * _WORD_BITS, dtype=torch.int64, device=bits.device)
    padded[:, :F] = bits.to(torch.int64)
    weights = torch.pow(torch.tensor(2, dtype=torch.int64, device=bits.device),
                        torch.arange(_WORD_BITS, dtype=torch.int64, device=bits.device))
    return (padded.view(N, words, _WORD_BITS) * weights).sum(dim=-1)


def _batches(n: int, size: int | None) -> Iterator[slice]:
    step = n if size is None else size
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def sign_patterns(model: nn.Module, x: Tensor, *, batch_size: int | None = None,
                  packed: bool = True) -> Tensor:
    """ReLU sign patterns of every sample of ``x``.

    x: (N, ...). Forwards ``x`` in batches of ``batch_size`` (None: one batch) in the model's
    current mode under no_grad. Returns (N, ceil(F / 63)) int64 words if ``packed`` else
    the (N, F) bool matrix, F = total number of ReLU output units per sample.
    Hooks are registered on every ``nn.ReLU`` for this call only and removed afterwards,
    even on error.
    """
    if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[0] < 1:
        raise ValueError("x must be a non-empty (N, ...) tensor of inputs")
    if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
        raise ValueError(f"batch_size must be None or an int >= 1, got {batch_size!r}")
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    if not relus:
        raise ValueError(f"{type(model).__name__} has no nn.ReLU modules: linear regions are "
                         "counted from the sign patterns of nn.ReLU outputs")
    current: list[Tensor] = []

    def record(module: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
        # Bits taken now: a later in-place op cannot change what this ReLU produced.
        current.append((out > 0).flatten(1))

    rows: list[Tensor] = []
    handles = [m.register_forward_hook(record) for m in relus]
    try:
        with torch.no_grad():
            for sl in _batches(x.shape[0], batch_size):
                current.clear()
                model(x[sl])
                if not current:
                    raise ValueError("no nn.ReLU module ran in model(x); nothing to count")
                bits = torch.cat(current, dim=1)
                rows.append(pack_bits(bits) if packed else bits)
    finally:
        for h in handles:
            h.remove()
        current.clear()
    if len({r.shape[1] for r in rows}) != 1:
        raise ValueError("the number of ReLU units differs between batches; the model's "
                         "ReLU layout must not depend on the batch")
    return torch.cat(rows)


def count_linear_regions(model: nn.Module, x: Tensor, *, batch_size: int | None = None) -> int:
    """Exact number of distinct ReLU sign patterns over the samples of ``x``.

    x: (N, ...). batch_size: samples per forward pass (None: all at once; matters only for
    batch-coupled models such as train-mode BatchNorm, see module docstring).
    Returns an int in [1, N].
    """
    words = sign_patterns(model, x, batch_size=batch_size, packed=True)
    if words.shape[1] == 1:
        return int(torch.unique(words[:, 0]).numel())
    return int(torch.unique(words, dim=0).shape[0])


def count_linear_regions_pairwise(model: nn.Module, x: Tensor, *, batch_size: int | None = None,
                                  block: int = 1024) -> int:
    """The reference's O(N^2) pattern-matrix count (float64, exact); for comparison only.

    Same patterns as ``count_linear_regions``; the (N, N) distance matrix is formed
    ``block`` rows at a time. Returns an int.
    """
    S = sign_patterns(model, x, batch_size=batch_size, packed=False).to(torch.float64)
    notS = 1.0 - S
    total = torch.zeros((), dtype=torch.float64, device=S.device)
    for start in range(0, S.shape[0], block):
        rows = slice(start, start + block)
        D = S[rows] @ notS.T + notS[rows] @ S.T  # Hamming distances (exact integers)
        multiplicity = (D == 0).sum(dim=1).to(torch.float64)
        total += (1.0 / multiplicity).sum()
    return int(round(float(total)))
