"""Scoped full-float32 precision for kernel code (no TF32 anywhere inside the scope).

Torch enables TF32 cuDNN convolutions by default (``torch.backends.cudnn.allow_tf32``;
``cudnn.conv.fp32_precision == "tf32"``) and Ampere/Hopper GPUs then round conv inputs to
a 10-bit mantissa: Jacobians lose ~3 digits and condition numbers above ~1e4 become noise
(design section 3). Kernel code runs inside :func:`full_fp32`, which turns TF32 off for
cuDNN and for float32 matmuls and restores the caller's settings afterwards, even on error.
On CPU it changes nothing observable.
"""
from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["full_fp32"]


@contextmanager
def full_fp32() -> Iterator[None]:
    """Context manager: TF32 off for cuDNN and float32 matmuls, previous settings restored."""
    cudnn = torch.backends.cudnn
    # cudnn.flags() has non-None defaults (enabled=False!): pass None for every flag we do
    # not mean to change, whatever this torch version's signature is.
    keep = {name: None for name in inspect.signature(cudnn.flags).parameters}
    keep["allow_tf32"] = False
    previous_matmul = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with cudnn.flags(**keep):
            yield
    finally:
        torch.set_float32_matmul_precision(previous_matmul)
