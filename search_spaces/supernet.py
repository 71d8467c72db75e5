"""The MetaNAS few-shot supernet with per-edge op masks (pruned by the search, paper Alg. 1).

Macro structure (design section 4): stem conv3x3 + norm (C_stem = C, stem multiplier 1),
`cells` cells with reductions at `cells // 3` and `2 * cells // 3` (spatial /2, channels x2),
`lastact` = norm + ReLU (the paper's search model, `NASNetworkDARTS.lastact`; `lastact=False`
omits it, as the evaluation network `search_spaces.network.Network` does), global average
pooling, linear head. With `norm="group"` the pooled features are means of ReLU outputs of a
GroupNorm: non-negative and informative even with one channel per group. Cell
preprocessing as DARTS: `FactorizedReduce` on c_{k-2} when the previous cell reduced,
ReLU-conv1x1-norm otherwise.

Each of a cell's 9 edges (`EDGE_INPUTS`) is a mixed edge holding all 7 ops; its output is
the MEAN OVER THE ACTIVE OPS. A masked op is not executed at all, so it contributes exactly
zero and costs nothing. Masks are per cell type (`"normal"`, `"reduce"`), a bool tensor
(9, 7) each (op order = `PRIMITIVES`), shared by all cells of that type. An edge with no
active op is a REMOVED edge: it contributes nothing to its node (the search's edge-selection
step scores the supernet with one edge removed, as TE-NAS); every node must keep at least one
active incoming edge. Masks are a plain attribute read at forward time (`set_masks`), or can
be given per call (`forward(x, masks)`), so one module scores many candidates. With
`genotype_masks(g)` the supernet computes exactly the genotype's cells (shared weights).

Norms default to `affine=False` as in DARTS search; `norm="group"` gives the
sample-independent supernet used for NTK kernels.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from search_spaces.genotypes import CELL_TYPES, EDGE_INPUTS, EDGES_PER_CELL, NODE_EDGES, NODES, Genotype
from search_spaces.ops import PRIMITIVES, FactorizedReduce, ReLUConvNorm, make_norm, make_op

__all__ = [
    "CELL_TYPES", "EDGES_PER_CELL", "EDGE_INPUTS", "HeadedSupernet", "Masks", "MixedEdge", "SearchCell", "Supernet",
    "full_masks", "genotype_masks", "validate_masks", "reduction_indices", "resolve_reductions",
    "stack_cells", "thin_supernet", "parameter_count",
]

Masks = Mapping[str, torch.Tensor]
NUM_OPS = len(PRIMITIVES)


def full_masks() -> dict[str, torch.Tensor]:
    """All ops active: `{"normal": ones(9, 7, bool), "reduce": ones(9, 7, bool)}` (CPU)."""
    return {t: torch.ones(EDGES_PER_CELL, NUM_OPS, dtype=torch.bool) for t in CELL_TYPES}


def genotype_masks(genotype: Genotype) -> dict[str, torch.Tensor]:
    """Masks with exactly the genotype's ops active on its edges; other edges removed.

    The supernet under these masks computes the genotype's cells (2 edges per node, one op
    each) with the supernet's weights.
    """
    masks = {t: torch.zeros(EDGES_PER_CELL, NUM_OPS, dtype=torch.bool) for t in CELL_TYPES}
    for cell_type, edges in genotype.to_edges().items():
        for e, op in edges.items():
            masks[cell_type][e, PRIMITIVES.index(op)] = True
    return masks


def validate_masks(masks: Masks) -> dict[str, torch.Tensor]:
    """Check `masks` and return a CPU bool copy `{cell type: (9, 7)}`.

    Raises ValueError when a cell type is missing or unknown, a tensor is not bool (9, 7), or
    a node has no active incoming edge (its output would be undefined). Edges without an
    active op are allowed: they are removed (contribute nothing).
    """
    if not isinstance(masks, Mapping):
        raise ValueError(f"masks: expected a dict {{'normal': (9, 7) bool, 'reduce': (9, 7) bool}}, got {type(masks).__name__}")
    if set(masks) != set(CELL_TYPES):
        raise ValueError(f"masks: expected keys {list(CELL_TYPES)}, got {sorted(masks)}")
    out = {}
    for cell_type in CELL_TYPES:
        m = masks[cell_type]
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
            raise ValueError(
                f"masks[{cell_type!r}]: expected a bool tensor of shape ({EDGES_PER_CELL}, {NUM_OPS}), "
                f"got {getattr(m, 'dtype', type(m).__name__)}"
            )
        if tuple(m.shape) != (EDGES_PER_CELL, NUM_OPS):
            raise ValueError(
                f"masks[{cell_type!r}]: expected shape ({EDGES_PER_CELL}, {NUM_OPS}) "
                f"(edges x ops in PRIMITIVES order), got {tuple(m.shape)}"
            )
        m = m.detach().to("cpu", copy=True)
        for node, (lo, hi) in enumerate(NODE_EDGES):
            if not bool(m[lo:hi].any()):
                raise ValueError(
                    f"masks[{cell_type!r}]: node {node} has no active op on any of its edges "
                    f"{lo}..{hi - 1}; every node must keep >= 1 active incoming edge"
                )
        out[cell_type] = m
    return out


def reduction_indices(cells: int) -> tuple[int, ...]:
    """Indices of the reduction cells: `cells // 3` and `2 * cells // 3` (deduplicated)."""
    return tuple(sorted({cells // 3, 2 * cells // 3}))


def resolve_reductions(cells: int, reductions: Sequence[int] | None, owner: str) -> tuple[int, ...]:
    """The sorted reduction indices (`reduction_indices(cells)` when None); ValueError if out of range."""
    out = tuple(sorted(set(reductions))) if reductions is not None else reduction_indices(cells)
    if any(not 0 <= r < cells for r in out):
        raise ValueError(f"{owner}: reduction indices {out} out of range 0..{cells - 1}")
    return out


def stack_cells(make_cell: Callable[[int, int, int, bool, bool], nn.Module], C_in: int, C: int, cells: int,
                reductions: Sequence[int]) -> tuple[nn.ModuleList, int]:
    """The macro skeleton shared by the supernet and the fixed network (one place for it).

    Cell i gets (C_prev_prev, C_prev, C_curr, reduction, reduction_prev); channels double at
    each reduction, and a cell's output has `cell.multiplier * C_curr` channels. `C_in` is
    what the stem emits. Returns the cells and the channels of the last cell's output.
    """
    stacked = nn.ModuleList()
    C_prev_prev = C_prev = C_in
    C_curr, reduction_prev = C, False
    for i in range(cells):
        reduction = i in reductions
        if reduction:
            C_curr *= 2
        cell = make_cell(C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
        stacked.append(cell)
        reduction_prev = reduction
        C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
    return stacked, C_prev


class MixedEdge(nn.Module):
    """All 7 ops of one edge; output = mean of the active ops' outputs. (N,C,H,W) -> (N,C,H',W')."""

    def __init__(self, C: int, stride: int, norm: str, affine: bool) -> None:
        super().__init__()
        self.ops = nn.ModuleList(make_op(name, C, stride, norm, affine) for name in PRIMITIVES)

    def forward(self, x: torch.Tensor, active: Sequence[int],
                weights: torch.Tensor | None = None) -> torch.Tensor | None:
        """`active`: indices into PRIMITIVES; inactive ops are not run. None when `active` is
        empty (a removed edge: the caller adds nothing).

        `weights` (N, 7): per-sample op weights (mask / number of active ops of that sample's
        candidate; see `Supernet.sample_masks`); `active` is then the union over samples, and a
        sample whose weight for an op is 0 gets exactly no contribution from it."""
        if not active:
            return None
        if weights is None:
            out = self.ops[active[0]](x)
            for i in active[1:]:
                out = out + self.ops[i](x)
            return out / len(active) if len(active) > 1 else out
        out = None
        for i in active:
            h = self.ops[i](x) * weights[:, i].view(-1, 1, 1, 1)
            out = h if out is None else out + h
        return out


class SearchCell(nn.Module):
    """Supernet cell: (s0, s1) -> concat of 3 nodes, (N, 3*C, H', W')."""

    def __init__(self, C_prev_prev: int, C_prev: int, C: int, reduction: bool,
                 reduction_prev: bool, norm: str, affine: bool) -> None:
        super().__init__()
        self.reduction = reduction
        self.cell_type = "reduce" if reduction else "normal"
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(C_prev_prev, C, norm, affine)
        else:
            self.preprocess0 = ReLUConvNorm(C_prev_prev, C, 1, 1, 0, norm, affine)
        self.preprocess1 = ReLUConvNorm(C_prev, C, 1, 1, 0, norm, affine)
        self.edges = nn.ModuleList(
            MixedEdge(C, 2 if reduction and inp < 2 else 1, norm, affine) for _, inp in EDGE_INPUTS
        )
        self.multiplier = NODES

    def forward(self, s0: torch.Tensor, s1: torch.Tensor,
                active: Sequence[Sequence[int]], weights: torch.Tensor | None = None) -> torch.Tensor:
        """`active[e]`: active op indices of edge e (9 lists); `weights` (N, 9, 7) per-sample op
        weights when candidates are batched (see `Supernet.sample_masks`)."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        e = 0
        for _ in range(NODES):
            node = None
            for j in range(len(states)):
                h = self.edges[e](states[j], active[e], None if weights is None else weights[:, e])
                if h is not None:
                    node = h if node is None else node + h
                e += 1
            states.append(node)
        return torch.cat(states[2:], dim=1)


class Supernet(nn.Module):
    """MetaNAS supernet: (N, in_channels, H, W) -> logits (N, num_classes).

    Args:
        C: initial channels (48 in the paper); stem outputs C channels.
        num_classes: head width.
        cells: number of cells (5 or 8 in the paper).
        in_channels: image channels.
        norm: "batch" or "group" (see `search_spaces.ops`).
        stem: False feeds the raw input to both inputs of the first cell (thin supernet).
        affine: learnable norm parameters (False: DARTS search convention).
        reductions: override the reduction cell indices (default `reduction_indices(cells)`).
        lastact: end with norm + ReLU before pooling (True: the paper's search model).
    """

    def __init__(self, C: int, num_classes: int, cells: int, *, in_channels: int = 3,
                 norm: str = "batch", stem: bool = True, affine: bool = False,
                 reductions: Sequence[int] | None = None, lastact: bool = True) -> None:
        super().__init__()
        if cells < 1:
            raise ValueError(f"Supernet: cells must be >= 1, got {cells}")
        if C < 1 or num_classes < 1 or in_channels < 1:
            raise ValueError(
                f"Supernet: C, num_classes, in_channels must be >= 1, got {C}, {num_classes}, {in_channels}"
            )
        self.C, self.num_classes, self.num_cells, self.norm = C, num_classes, cells, norm
        self.reductions = resolve_reductions(cells, reductions, "Supernet")
        if stem:
            self.stem: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, C, 3, padding=1, bias=False), make_norm(C, norm, affine)
            )
        else:
            self.stem = nn.Identity()
        self.cells, C_prev = stack_cells(
            lambda cpp, cp, c, red, red_prev: SearchCell(cpp, cp, c, red, red_prev, norm, affine),
            C if stem else in_channels, C, cells, self.reductions)
        self.feature_dim = C_prev
        # The paper's search model ends with `lastact` = norm + ReLU before pooling (its
        # `NASNetworkDARTS.lastact`); the ReLU is a module so the region counter hooks it.
        self.lastact: nn.Module = (
            nn.Sequential(make_norm(C_prev, norm, affine), nn.ReLU(inplace=False)) if lastact else nn.Identity()
        )
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        self.masks: dict[str, torch.Tensor] = full_masks()
        # Batched candidates (GPU scoring): bool (B, 2, 9, 7) = one mask per candidate for
        # [normal, reduce]; the batch holds B equal-size contiguous groups of samples, group b
        # computed as if `masks` were candidate b's. None: the stored `masks` for every sample.
        self.sample_masks: torch.Tensor | None = None

    def set_masks(self, masks: Masks) -> None:
        """Validate and store masks `{cell type: bool (9, 7)}` (a CPU copy)."""
        self.masks = validate_masks(masks)

    def get_masks(self) -> dict[str, torch.Tensor]:
        """A copy of the current masks."""
        return {t: m.clone() for t, m in self.masks.items()}

    def _active(self, masks: Masks | None) -> dict[str, list[list[int]]]:
        m = self.masks if masks is None else validate_masks(masks)
        return {t: [torch.nonzero(row).flatten().tolist() for row in m[t]] for t in CELL_TYPES}

    def _sample_weights(self, n: int) -> tuple[dict[str, list[list[int]]], dict[str, torch.Tensor]]:
        """Union of active ops over the batched candidates and per-sample op weights (n, 9, 7)."""
        sm = self.sample_masks
        if sm is None or sm.dim() != 4 or tuple(sm.shape[1:]) != (2, EDGES_PER_CELL, NUM_OPS) or sm.dtype != torch.bool:
            raise ValueError("sample_masks must be a bool tensor (B, 2, 9, 7)")
        if n % sm.shape[0]:
            raise ValueError(f"batch of {n} samples is not {sm.shape[0]} equal groups (one per candidate)")
        union = sm.any(dim=0).cpu()
        active = {t: [torch.nonzero(row).flatten().tolist() for row in union[i]] for i, t in enumerate(CELL_TYPES)}
        w = sm.to(torch.float32)
        w = w / w.sum(dim=-1, keepdim=True).clamp(min=1.0)
        w = w.repeat_interleave(n // sm.shape[0], dim=0)
        return active, {t: w[:, i] for i, t in enumerate(CELL_TYPES)}

    def forward_features(self, x: torch.Tensor, masks: Masks | None = None) -> torch.Tensor:
        """Pooled features feeding the head: (N, in_channels, H, W) -> (N, feature_dim)."""
        weights: dict[str, torch.Tensor] | None = None
        if self.sample_masks is not None and masks is None:
            active, weights = self._sample_weights(x.shape[0])
            weights = {t: w.to(device=x.device, dtype=x.dtype) for t, w in weights.items()}
        else:
            active = self._active(masks)
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, active[cell.cell_type], None if weights is None else weights[cell.cell_type])
        return self.global_pooling(self.lastact(s1)).flatten(1)

    def forward(self, x: torch.Tensor, masks: Masks | None = None) -> torch.Tensor:
        """Logits (N, num_classes); `masks` overrides the stored masks for this call only."""
        return self.classifier(self.forward_features(x, masks))


class HeadedSupernet(nn.Module):
    """A supernet's body (stem, cells, lastact, pooling) under another linear head:
    (N, in_channels, H, W) -> (N, num_classes).

    The reference's plain-NTK (TE-NAS ablation) differentiates the network's own head over
    the base classes while its MetaNTK uses a fresh `ways` head; this gives one body both.
    The body's modules are children of this module (hooks, `.to`, parameter selection see
    them) but the supernet's own `classifier` is not, so its weights are not differentiated.
    Masks are the supernet's (`supernet.set_masks` / `sample_masks`).
    """

    def __init__(self, supernet: Supernet, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"HeadedSupernet: num_classes must be >= 1, got {num_classes}")
        self.stem, self.cells, self.lastact = supernet.stem, supernet.cells, supernet.lastact
        self.global_pooling = supernet.global_pooling
        self._supernet = (supernet,)  # a tuple: not registered, so its classifier stays out
        self.classifier = nn.Linear(supernet.feature_dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The supernet's pooled features (N, feature_dim) under its current masks."""
        return self._supernet[0].forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))


def thin_supernet(in_channels: int = 1, norm: str = "batch", *, num_classes: int = 1) -> Supernet:
    """The linear-region supernet (TE-NAS / reference): C=1, one normal then one reduction
    cell, no stem (the raw input feeds both inputs of the first cell), and the final norm +
    ReLU (`lastact`, whose ReLU the region counter hooks too). Used in train mode with
    BatchNorm as the reference, on (N, in_channels, 3, 3) crops."""
    return Supernet(1, num_classes, 2, in_channels=in_channels, norm=norm, stem=False,
                    reductions=(1,))


def parameter_count(model: nn.Module, *, exclude_head: bool = False) -> int:
    """Number of parameters (sum of numel); `exclude_head` drops `model.classifier`."""
    total = sum(p.numel() for p in model.parameters())
    if exclude_head:
        head = getattr(model, "classifier", None)
        if head is None:
            raise ValueError(f"parameter_count: {type(model).__name__} has no .classifier to exclude")
        total -= sum(p.numel() for p in head.parameters())
    return total
