"""Spectral scores of kernels: the condition number used to rank architectures.

TE-NAS / MetaNTK-NAS score a network by the condition number of its (Meta)NTK,
``CN = lambda_max / lambda_min`` (paper Sec. 5; design section 3). The reference took
float32 eigenvalues, had no guard for ``lambda_min <= 0`` (negative "condition numbers")
and mapped NaN to the magic value 1e5. Here the eigenvalues are float64 and every
degenerate case is the explicit value ``inf``: a kernel that is singular, indefinite
(a PSD kernel with a negative eigenvalue is numerically singular) or not finite is
infinitely ill-conditioned, never a sentinel.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["condition_number", "eigenvalues"]


def _check_square(K: Tensor, name: str = "K") -> None:
    if not isinstance(K, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(K).__name__}; "
                         "pass the kernel matrix as a tensor")
    if K.dim() != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"{name} must be a square 2-D matrix, got shape {tuple(K.shape)}; "
                         "pass the (N, N) kernel")
    if K.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(K.shape)}); a kernel needs at least one sample")
    if K.is_complex() or not K.is_floating_point():
        raise ValueError(f"{name} must be a real floating-point matrix, got dtype {K.dtype}")


def eigenvalues(K: Tensor) -> Tensor:
    """Ascending float64 eigenvalues of the symmetric part of ``K``.

    K: (N, N) real. Returns (N,) float64 on K's device. ``K`` is symmetrised,
    ``(K + K^T) / 2``, first: a kernel assembled in floating point is symmetric only up
    to rounding, and ``eigvalsh`` reads just one triangle.
    """
    _check_square(K)
    K64 = K.detach().to(torch.float64)
    return torch.linalg.eigvalsh(0.5 * (K64 + K64.T))


def condition_number(K: Tensor) -> float:
    """Condition number ``lambda_max / lambda_min`` of a symmetric PSD kernel.

    K: (N, N) real (any float dtype; computed in float64 on K's device).
    Returns a Python float >= 1, or ``math.inf`` when any entry of ``K`` is not finite
    or when ``lambda_min <= 0`` (singular or indefinite: for a kernel that should be PSD,
    a non-positive smallest eigenvalue means it is numerically singular).
    Raises ValueError when ``K`` is not a non-empty square real 2-D tensor.
    """
    _check_square(K)
    if not bool(torch.isfinite(K).all()):
        return math.inf
    lam = eigenvalues(K)
    lam_min, lam_max = float(lam[0]), float(lam[-1])
    if not (lam_min > 0.0) or not math.isfinite(lam_max):
        return math.inf
    return lam_max / lam_min
