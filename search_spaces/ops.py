"""Candidate operations of the MetaNAS few-shot search space (design section 4).

Seven ops, no `none` candidate (the paper's pruning never considers it). `PRIMITIVES` fixes
their order: the op index used by every (9, 7) edge mask of the supernet.

Semantics (MetaNAS / reference, with the shape conventions made exact):

- `max_pool_3x3`, `avg_pool_3x3`: 3x3 pool, padding 1 (avg excludes the padding), then norm.
- `skip_connect`: identity at stride 1; `FactorizedReduce` at stride 2.
- `conv_1x5_5x1`: ReLU, 1x5 conv, 5x1 conv, norm. At stride 2 the 1x5 conv carries the stride
  on BOTH axes and the 5x1 conv has stride 1, as the reference (MetaNAS `FacConv`): the output
  size is that of a 3x3/stride-2/padding-1 conv, ceil(H/2) x ceil(W/2). (This harness used
  to split the stride, (1, 2) then (2, 1); that sees every input row, the reference's skips
  every other row before the 5x1 conv. Changed to the reference's for the search and the
  evaluation network alike.)
- `conv_3x3`: ReLU, depthwise 3x3, pointwise 1x1, norm. NOTE: this is a *separable* conv, as in
  MetaNAS (its `conv_3x3` is one separable block), not a dense 3x3 conv.
- `sep_conv_3x3`: the `conv_3x3` block twice (the first carries the stride, the second has
  stride 1).
- `dil_conv_3x3`: the separable block with a depthwise 3x3 of dilation 2, padding 2.

Every op maps (N, C, H, W) to (N, C, H, W) at stride 1 and to (N, C, ceil(H/2), ceil(W/2)) at
stride 2 (odd sizes included: the thin linear-region supernet sees 3x3 inputs).

`norm` switch: `"batch"` = `BatchNorm2d(C, affine=affine)`; `"group"` =
`GroupNorm(g, C, affine=affine)` with `g` = the largest divisor of C not above min(16, C)
(the reference's `min(16, C)` whenever that divides C; see `group_count`), which is
sample-independent and therefore valid for per-sample gradients (NTK kernels). Search supernets use `affine=False` as DARTS;
the fixed training `Network` uses `affine=True`. With the init of `search_spaces.init`
(weight 1, bias 0) both give the same function at initialisation.

All ReLUs are `nn.ReLU(inplace=False)` modules: linear-region hooks find them by type and read
their outputs, which an in-place ReLU downstream could overwrite.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

PRIMITIVES: tuple[str, ...] = (
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "conv_1x5_5x1",
    "conv_3x3",
    "sep_conv_3x3",
    "dil_conv_3x3",
)

NORMS: tuple[str, ...] = ("batch", "group")

MAX_GROUPS = 16


def group_count(C: int, max_groups: int = MAX_GROUPS) -> int:
    """Number of GroupNorm groups for C channels: the largest divisor of C not above
    min(16, C), i.e. the reference's `GroupNorm(min(16, C), C)` wherever that is defined.

    The reference's rule fails (GroupNorm needs C % groups == 0) for channel counts such as
    24 or 40 that reduced-scale runs produce; the largest divisor is the nearest defined
    choice. At the paper's C = 48 every layer (48, 96, 144, 192, ... channels) gets 16 groups.

    History: this used to be capped at C // 2 (at least 2 channels per group) because,
    without the final norm + ReLU (`lastact`), one channel per group zeroes every channel's
    spatial mean and the pooled features with it (the kernel was rounding noise; backends
    disagreed by 50%). With `lastact` the pooled features are means of ReLU outputs and the
    cap is no longer needed. Measured (`benchmarks/bench_groupnorm.py`: 3-cell kernel
    supernet with lastact, 30 images 32x32, 4 weight draws, max over the hooks / func /
    opacus / loop backends in float32 against a float64 evaluation): relative Frobenius
    error of the NTK 2.5e-8 / 4.6e-6 / 2.6e-6 at C = 4 / 8 / 16 with this rule, 4.7e-8 /
    1.1e-6 / 2.2e-6 with the old cap; condition number error at most 1.4e-4 relative with
    either rule (the paper-scale figure is 3-5e-6 for the NTK), far below the 1e-3 rounding
    of the reference's deltas. Neither rule is more accurate, so the reference's is kept.
    """
    if C < 1:
        raise ValueError(f"group_count: channel count must be >= 1, got {C}")
    return max(g for g in range(1, min(max_groups, C) + 1) if C % g == 0)


def make_norm(C: int, norm: str = "batch", affine: bool = False) -> nn.Module:
    """Normalisation layer for C channels: `"batch"` (BatchNorm2d) or `"group"` (GroupNorm)."""
    if norm == "batch":
        return nn.BatchNorm2d(C, affine=affine)
    if norm == "group":
        return nn.GroupNorm(group_count(C), C, affine=affine)
    raise ValueError(f"unknown norm {norm!r}: expected one of {NORMS}")


def _check_stride(stride: int) -> None:
    if stride not in (1, 2):
        raise ValueError(f"op stride must be 1 or 2, got {stride!r}")


class Identity(nn.Module):
    """`skip_connect` at stride 1. A named class so drop-path can recognise and spare it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class ReLUConvNorm(nn.Module):
    """ReLU, dense conv (no bias), norm: the DARTS `ReLUConvBN` (cell preprocessing)."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
                 norm: str = "batch", affine: bool = False) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            make_norm(C_out, norm, affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class FactorizedReduce(nn.Module):
    """Halve H and W: ReLU, two 1x1 stride-2 convs on x and on x shifted by one pixel, concat, norm.

    (N, C_in, H, W) -> (N, C_out, ceil(H/2), ceil(W/2)). The shifted branch pads one zero
    row/column at the bottom/right first so odd sizes work (DARTS' version fails on them);
    for even sizes it equals DARTS' `x[:, :, 1:, 1:]`. C_out may be odd: the branches get
    C_out // 2 and C_out - C_out // 2 channels.
    """

    def __init__(self, C_in: int, C_out: int, norm: str = "batch", affine: bool = False) -> None:
        super().__init__()
        if C_out < 2:
            raise ValueError(f"FactorizedReduce needs C_out >= 2 (one channel per branch), got {C_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out - C_out // 2, 1, stride=2, padding=0, bias=False)
        self.norm = make_norm(C_out, norm, affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        return self.norm(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


class PoolNorm(nn.Module):
    """3x3 max or average pool (padding 1; average excludes padding), then norm."""

    def __init__(self, kind: str, C: int, stride: int, norm: str = "batch",
                 affine: bool = False) -> None:
        super().__init__()
        if kind == "max":
            self.pool: nn.Module = nn.MaxPool2d(3, stride=stride, padding=1)
        elif kind == "avg":
            self.pool = nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
        else:
            raise ValueError(f"PoolNorm kind must be 'max' or 'avg', got {kind!r}")
        self.norm = make_norm(C, norm, affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.pool(x))


class FactorizedConv(nn.Module):
    """`conv_1x5_5x1`: ReLU, 1x5 conv (stride s on both axes), 5x1 conv (stride 1), norm.

    (N, C_in, H, W) -> (N, C_out, ceil(H/s), ceil(W/s)); the stride placement is the
    reference's (MetaNAS `FacConv`)."""

    def __init__(self, C_in: int, C_out: int, length: int, stride: int, norm: str = "batch",
                 affine: bool = False) -> None:
        super().__init__()
        pad = length // 2
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, (1, length), stride=stride, padding=(0, pad), bias=False),
            nn.Conv2d(C_in, C_out, (length, 1), stride=1, padding=(pad, 0), bias=False),
            make_norm(C_out, norm, affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class SeparableBlock(nn.Module):
    """ReLU, depthwise kxk conv (stride, dilation), pointwise 1x1 conv, norm.

    This single block is the search space's `conv_3x3` (separable, as in MetaNAS) and, with
    dilation 2, `dil_conv_3x3`.
    """

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
                 dilation: int = 1, norm: str = "batch", affine: bool = False) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding,
                      dilation=dilation, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, padding=0, bias=False),
            make_norm(C_out, norm, affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class SepConv(nn.Module):
    """`sep_conv_3x3`: two separable blocks; the first carries the stride, the second stride 1."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
                 norm: str = "batch", affine: bool = False) -> None:
        super().__init__()
        self.op = nn.Sequential(
            SeparableBlock(C_in, C_in, kernel_size, stride, padding, norm=norm, affine=affine),
            SeparableBlock(C_in, C_out, kernel_size, 1, padding, norm=norm, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


def _skip(C: int, stride: int, norm: str, affine: bool) -> nn.Module:
    return Identity() if stride == 1 else FactorizedReduce(C, C, norm, affine)


OpFactory = Callable[[int, int, str, bool], nn.Module]

# name -> factory(C, stride, norm, affine). Order and names match PRIMITIVES.
OPS: dict[str, OpFactory] = {
    "max_pool_3x3": lambda C, stride, norm, affine: PoolNorm("max", C, stride, norm, affine),
    "avg_pool_3x3": lambda C, stride, norm, affine: PoolNorm("avg", C, stride, norm, affine),
    "skip_connect": _skip,
    "conv_1x5_5x1": lambda C, stride, norm, affine: FactorizedConv(C, C, 5, stride, norm, affine),
    "conv_3x3": lambda C, stride, norm, affine: SeparableBlock(C, C, 3, stride, 1, 1, norm, affine),
    "sep_conv_3x3": lambda C, stride, norm, affine: SepConv(C, C, 3, stride, 1, norm, affine),
    "dil_conv_3x3": lambda C, stride, norm, affine: SeparableBlock(C, C, 3, stride, 2, 2, norm, affine),
}
assert tuple(OPS) == PRIMITIVES


def check_op_name(name: str) -> str:
    """Return `name` if it is a known op, else raise KeyError listing the valid names."""
    if name not in OPS:
        raise KeyError(f"unknown op {name!r}: valid ops are {', '.join(PRIMITIVES)}")
    return name


def make_op(name: str, C: int, stride: int, norm: str = "batch", affine: bool = False) -> nn.Module:
    """Build op `name` on C channels: (N, C, H, W) -> (N, C, H', W'), H' = H or ceil(H/2).

    Args:
        name: one of `PRIMITIVES` (KeyError listing them otherwise).
        C: channels in and out (>= 1; >= 2 for `skip_connect` at stride 2).
        stride: 1 or 2.
        norm: "batch" or "group" (see module docstring).
        affine: learnable norm weight/bias (False in search supernets, True in `Network`).
    """
    check_op_name(name)
    _check_stride(stride)
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}: expected one of {NORMS}")
    if C < 1:
        raise ValueError(f"op {name!r}: channel count must be >= 1, got {C}")
    return OPS[name](C, stride, norm, affine)
