"""The fixed network built from a genotype, trained with the RFS recipe (design section 6).

Same macro structure as the supernet (stem conv3x3 + norm with C channels, reductions at
`cells // 3` and `2 * cells // 3`, GAP, linear head; no final BN-ReLU, no auxiliary head), but
each node holds only the genotype's two ops. Norms are BatchNorm with affine parameters.

Drop-path (DARTS): during training, each non-identity op output is zeroed per sample with
probability `drop_path_prob` and scaled by 1 / (1 - p) otherwise. `drop_path_prob` is a plain
attribute (the trainer ramps it with the epochs); `generator` (optional) makes the drop
masks reproducible: they are drawn on the generator's device, then moved to the input's.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from search_spaces.genotypes import CELL_TYPES, Genotype
from search_spaces.ops import FactorizedReduce, Identity, ReLUConvNorm, make_norm, make_op
from search_spaces.supernet import parameter_count, resolve_reductions, stack_cells

__all__ = ["Network", "FixedCell", "drop_path", "parameter_count"]


def drop_path(x: torch.Tensor, drop_prob: float,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero whole samples of x (N, ...) with prob. `drop_prob`, scale the rest by 1/(1-p).

    Draws from `generator` (on its device) when given, else from torch's default generator
    of x's device.
    """
    if drop_prob <= 0.0:
        return x
    if not drop_prob < 1.0:
        raise ValueError(f"drop_path: drop_prob must be in [0, 1), got {drop_prob}")
    keep = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    if generator is not None:
        u = torch.rand(shape, generator=generator, device=generator.device).to(x.device)
    else:
        u = torch.rand(shape, device=x.device)
    mask = (u < keep).to(x.dtype)
    return x * mask / keep


class FixedCell(nn.Module):
    """One genotype cell: (s0, s1) -> concat of nodes `concat`, (N, len(concat) * C, H', W')."""

    def __init__(self, genotype: Genotype, C_prev_prev: int, C_prev: int, C: int,
                 reduction: bool, reduction_prev: bool, norm: str = "batch",
                 affine: bool = True) -> None:
        super().__init__()
        self.reduction = reduction
        cell_type = CELL_TYPES[1] if reduction else CELL_TYPES[0]
        nodes = getattr(genotype, cell_type)
        self.concat: tuple[int, ...] = getattr(genotype, f"{cell_type}_concat")
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(C_prev_prev, C, norm, affine)
        else:
            self.preprocess0 = ReLUConvNorm(C_prev_prev, C, 1, 1, 0, norm, affine)
        self.preprocess1 = ReLUConvNorm(C_prev, C, 1, 1, 0, norm, affine)
        self.inputs: tuple[int, ...] = tuple(inp for node in nodes for _, inp in node)
        self.ops = nn.ModuleList(
            make_op(op, C, 2 if reduction and inp < 2 else 1, norm, affine)
            for node in nodes for op, inp in node
        )
        self.multiplier = len(self.concat)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(0, len(self.ops), 2):
            node = None
            for k in (i, i + 1):
                h = self.ops[k](states[self.inputs[k]])
                if self.training and drop_prob > 0.0 and not isinstance(self.ops[k], Identity):
                    h = drop_path(h, drop_prob, generator)
                node = h if node is None else node + h
            states.append(node)
        return torch.cat([states[j] for j in self.concat], dim=1)


class Network(nn.Module):
    """Fixed network of `genotype`: (N, in_channels, H, W) -> logits (N, num_classes).

    Args:
        genotype: the normal and reduction cells.
        C: initial channels (48 in the paper; stem multiplier 1).
        num_classes: base classes of the pre-training head (64 miniImageNet).
        cells: number of cells (5 or 8).
        in_channels: image channels.
        drop_path_prob: DARTS drop-path probability (settable attribute; 0 disables).
        norm: "batch" (training) or "group".
        generator: optional generator for reproducible drop-path masks.
        reductions: override the reduction indices (default `cells // 3`, `2 * cells // 3`).
    """

    def __init__(self, genotype: Genotype, C: int, num_classes: int, cells: int, *,
                 in_channels: int = 3, drop_path_prob: float = 0.0, norm: str = "batch",
                 generator: torch.Generator | None = None,
                 reductions: Sequence[int] | None = None) -> None:
        super().__init__()
        if not isinstance(genotype, Genotype):
            raise ValueError(f"Network: expected a Genotype, got {type(genotype).__name__}")
        if cells < 1 or C < 1 or num_classes < 1 or in_channels < 1:
            raise ValueError(
                f"Network: cells, C, num_classes, in_channels must be >= 1, got {cells}, {C}, "
                f"{num_classes}, {in_channels}"
            )
        self.genotype = genotype
        self.C, self.num_classes, self.num_cells = C, num_classes, cells
        self.drop_path_prob = drop_path_prob
        self.generator = generator
        self.reductions = resolve_reductions(cells, reductions, "Network")
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False),
                                  make_norm(C, norm, affine=True))
        self.cells, C_prev = stack_cells(
            lambda cpp, cp, c, red, red_prev: FixedCell(genotype, cpp, cp, c, red, red_prev, norm),
            C, C, cells, self.reductions)
        self.feature_dim = C_prev
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    @property
    def drop_path_prob(self) -> float:
        return self._drop_path_prob

    @drop_path_prob.setter
    def drop_path_prob(self, value: float) -> None:
        if not 0.0 <= float(value) < 1.0:
            raise ValueError(f"Network.drop_path_prob must be in [0, 1), got {value}")
        self._drop_path_prob = float(value)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """GAP features feeding the head (used for few-shot evaluation): (N, feature_dim)."""
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob, self.generator)
        return self.global_pooling(s1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))
