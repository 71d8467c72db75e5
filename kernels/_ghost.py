"""Ghost Gram: a layer's contribution to the NTK Gram without per-sample weight gradients.

For a Linear layer with middle dims or a Conv2d (unfolded), sample ``n`` has input
columns ``A_n`` (L x D_in) and output gradients ``dY_n`` (L x D_out) per group, and its
weight gradient is ``g_n = dY_n^T A_n`` (D_out x D_in). Then

    <g_n, g_m> = sum_{l, l'} (dY_n[l] . dY_m[l']) (A_n[l] . A_m[l'])

(summed over the groups of a grouped conv): two (n L) x (n L) Gram matrices multiplied
elementwise and summed over the position pairs. Cost ~ n^2 L^2 (D_in + D_out + 1) per group
and block, against N L D_in D_out (the per-sample gradients) + n^2 D_in D_out (their Gram)
for materialising: cheaper where positions are few and the layer is wide (the linear head:
L = 1), dearer for every convolution with many positions. ``ghost_is_cheaper`` is the rule.

Accuracy: ``A`` and ``dY`` are promoted to float64 before any product, so the contribution
is float64-accurate (more so than materialising, which rounds ``g_n`` to float32 first).
Several calls of one module (records) are one longer position axis: ``g_n`` sums over them.

``blocks``: the batch is ``blocks`` equal groups of ``n`` samples (batched candidates) and
only the diagonal blocks (blocks, n, n) are wanted.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LayerShape", "ghost_cost", "materialize_cost", "ghost_is_cheaper", "layer_shape",
           "ghost_columns", "ghost_gram", "GHOST_MAX_ELEMENTS"]

# Largest (blocks x groups x (n L)^2) float64 intermediate the rule allows (2 GiB for the
# two of them): beyond it the ghost route is refused whatever its flop count.
GHOST_MAX_ELEMENTS = 2 ** 27


@dataclass(frozen=True)
class LayerShape:
    """What the cost rule needs of one weight: per-block samples ``n``, ``blocks``,
    positions ``L`` (summed over the module's calls), per-group ``d_in`` / ``d_out``, and
    ``groups``."""

    n: int
    blocks: int
    positions: int
    d_in: int
    d_out: int
    groups: int = 1


def ghost_cost(s: LayerShape) -> int:
    """Multiply-adds of the ghost route: two (nL x nL) Grams and their elementwise product."""
    nl = s.n * s.positions
    return s.blocks * s.groups * nl * nl * (s.d_in + s.d_out + 1)


def materialize_cost(s: LayerShape) -> int:
    """Multiply-adds of materialising: the per-sample gradients, then their Gram blocks."""
    weights = s.groups * s.d_in * s.d_out
    return s.blocks * s.n * s.positions * weights + s.blocks * s.n * s.n * weights


def ghost_is_cheaper(s: LayerShape, max_elements: int = GHOST_MAX_ELEMENTS) -> bool:
    """True when the ghost route costs fewer multiply-adds and its intermediate fits."""
    elements = s.blocks * s.groups * (s.n * s.positions) ** 2
    return elements <= max_elements and ghost_cost(s) < materialize_cost(s)


def _conv_columns(m: nn.Conv2d, a: Tensor) -> Tensor:
    """Unfolded conv input as (N, G, L, C_in/G * kh * kw)."""
    from kernels._persample import conv2d_padded

    a, padding = conv2d_padded(m, a)
    cols = F.unfold(a, m.kernel_size, dilation=m.dilation, padding=padding, stride=m.stride)
    N, D, L = cols.shape
    return cols.reshape(N, m.groups, D // m.groups, L).transpose(2, 3)


def ghost_columns(m: nn.Module, a: Tensor, dy: Tensor) -> tuple[Tensor, Tensor]:
    """(A, dY) of one call of a Linear or Conv2d: (N, G, L, D_in) and (N, G, L, D_out)."""
    N = a.shape[0]
    if isinstance(m, nn.Conv2d):
        G = m.groups
        dy = dy.reshape(N, G, m.out_channels // G, -1).transpose(2, 3)
        return _conv_columns(m, a), dy
    if isinstance(m, nn.Linear):
        return a.reshape(N, 1, -1, a.shape[-1]), dy.reshape(N, 1, -1, dy.shape[-1])
    raise TypeError(f"no ghost rule for {type(m).__name__} (Linear and Conv2d weights only)")


def layer_shape(m: nn.Module, a_shapes: list[torch.Size], dy_shapes: list[torch.Size],
                blocks: int) -> LayerShape:
    """The ``LayerShape`` of a Linear / Conv2d weight from its calls' input and output shapes,
    without unfolding anything."""
    N = a_shapes[0][0]
    if isinstance(m, nn.Conv2d):
        G = m.groups
        positions = sum(s[2] * s[3] for s in dy_shapes)
        d_in = m.in_channels // G * m.kernel_size[0] * m.kernel_size[1]
        return LayerShape(N // blocks, blocks, positions, d_in, m.out_channels // G, G)
    if isinstance(m, nn.Linear):
        positions = sum(s.numel() // (s[0] * s[-1]) for s in dy_shapes)
        return LayerShape(N // blocks, blocks, positions, m.in_features, m.out_features, 1)
    raise TypeError(f"no ghost rule for {type(m).__name__} (Linear and Conv2d weights only)")


def ghost_gram(A: Tensor, dY: Tensor, blocks: int = 1) -> Tensor:
    """Diagonal Gram blocks of the per-sample weight gradients ``dY_n^T A_n``, float64.

    A: (N, G, L, D_in); dY: (N, G, L, D_out); N = blocks * n. Returns (blocks, n, n).
    """
    N, G, L, _ = A.shape
    n = N // blocks

    def gram(t: Tensor) -> Tensor:  # (N, G, L, D) -> (blocks, G, nL, nL), float64
        t = t.to(torch.float64).reshape(blocks, n, G, L, -1).permute(0, 2, 1, 3, 4)
        t = t.reshape(blocks, G, n * L, -1)
        return t @ t.transpose(-1, -2)

    prod = gram(A)
    prod.mul_(gram(dY))
    return prod.sum(1).reshape(blocks, n, L, n, L).sum(dim=(2, 4))
