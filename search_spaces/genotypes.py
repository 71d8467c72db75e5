"""Genotypes of the MetaNAS few-shot cell space: data type, parsing, registry, sampling.

A cell has two inputs (c_{k-2}, c_{k-1}) and three intermediate nodes; node i may read every
earlier state, i.e. input indices 0..i+1 (0 = c_{k-2}, 1 = c_{k-1}, j >= 2 = node j-2). The
supernet has 2 + 3 + 4 = 9 edges per cell in the order of `EDGE_INPUTS`; a genotype keeps
two of them per node, each with one op. The cell output concatenates nodes 2, 3, 4.

`Genotype` keeps the DARTS field names (`normal`, `normal_concat`, `reduce`, `reduce_concat`)
in the nested per-node form `((op, input), (op, input))`. Strings are parsed with `ast`
(literal values only, never `eval`); the flat DARTS form (6 pairs per cell) is accepted.
"""
from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from search_spaces.ops import PRIMITIVES

NODES = 3
INPUTS_PER_NODE = 2
CONCAT: tuple[int, ...] = (2, 3, 4)
CELL_TYPES: tuple[str, ...] = ("normal", "reduce")

# Supernet edge e -> (node, input index). Edges 0-1 feed node 0, 2-4 node 1, 5-8 node 2.
EDGE_INPUTS: tuple[tuple[int, int], ...] = tuple(
    (node, inp) for node in range(NODES) for inp in range(node + 2)
)
EDGES_PER_CELL = len(EDGE_INPUTS)  # 9
# Node i's edges are EDGE_INPUTS[NODE_EDGES[i][0]:NODE_EDGES[i][1]]: (0, 2), (2, 5), (5, 9).
NODE_EDGES: tuple[tuple[int, int], ...] = tuple(
    (sum(k + 2 for k in range(node)), sum(k + 2 for k in range(node + 1))) for node in range(NODES)
)

MAX_STRING_CHARS = 20_000  # a genotype string is ~400 chars; bounds the ast parse

Pair = tuple[str, int]
Node = tuple[Pair, Pair]
Cell = tuple[Node, Node, Node]


class GenotypeError(ValueError):
    """A genotype that is not in the search space or a string/JSON that is not a genotype."""


def edge_index(node: int, inp: int) -> int:
    """Supernet edge index of the edge `inp -> node` (inverse of `EDGE_INPUTS`)."""
    if not 0 <= node < NODES or not 0 <= inp <= node + 1:
        raise GenotypeError(f"no edge from input {inp} to node {node}: node i reads inputs 0..i+1")
    return NODE_EDGES[node][0] + inp


def _coerce_cell(cell_type: str, cell: Any) -> Cell:
    """Validate one cell and return it as nested tuples; accepts the flat DARTS form."""
    if isinstance(cell, (str, bytes)) or not isinstance(cell, Sequence):
        raise GenotypeError(f"{cell_type}: expected a list of {NODES} nodes, got {type(cell).__name__}")
    cell = list(cell)
    # Flat DARTS form: [(op, in), (op, in), ...] with 2 pairs per node.
    if len(cell) == NODES * INPUTS_PER_NODE and all(
        isinstance(p, Sequence) and not isinstance(p, str) and len(p) == 2 and isinstance(p[0], str)
        for p in cell
    ):
        cell = [cell[i:i + INPUTS_PER_NODE] for i in range(0, len(cell), INPUTS_PER_NODE)]
    if len(cell) != NODES:
        raise GenotypeError(
            f"{cell_type}: expected {NODES} nodes (or {NODES * INPUTS_PER_NODE} flat pairs), "
            f"got {len(cell)}"
        )
    nodes = []
    for i, node in enumerate(cell):
        where = f"{cell_type} node {i}"
        if isinstance(node, (str, bytes)) or not isinstance(node, Sequence):
            raise GenotypeError(f"{where}: expected a list of {INPUTS_PER_NODE} (op, input) pairs, got {node!r}")
        if len(node) != INPUTS_PER_NODE:
            raise GenotypeError(
                f"{where}: expected exactly {INPUTS_PER_NODE} inputs, got {len(node)}: {list(node)!r}"
            )
        pairs = []
        for pair in node:
            if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
                raise GenotypeError(f"{where}: expected an (op, input) pair, got {pair!r}")
            op, inp = pair
            if not isinstance(op, str):
                raise GenotypeError(f"{where}: op name must be a string, got {op!r}")
            if op not in PRIMITIVES:
                raise GenotypeError(f"{where}: unknown op {op!r}; valid ops: {', '.join(PRIMITIVES)}")
            if isinstance(inp, bool) or not isinstance(inp, int):
                raise GenotypeError(f"{where}: input index must be an int, got {inp!r}")
            if not 0 <= inp <= i + 1:
                raise GenotypeError(
                    f"{where}: input index {inp} out of range; node {i} reads 0..{i + 1} "
                    f"(0 = c_{{k-2}}, 1 = c_{{k-1}}, j >= 2 = node j-2)"
                )
            pairs.append((op, inp))
        if pairs[0][1] == pairs[1][1]:
            raise GenotypeError(
                f"{where}: both inputs read state {pairs[0][1]}; the two inputs of a node must be "
                f"distinct edges of the search space"
            )
        nodes.append(tuple(pairs))
    return tuple(nodes)  # type: ignore[return-value]


def _coerce_concat(cell_type: str, concat: Any) -> tuple[int, ...]:
    if isinstance(concat, range):
        concat = list(concat)
    if isinstance(concat, (str, bytes)) or not isinstance(concat, Sequence):
        raise GenotypeError(f"{cell_type}_concat: expected {list(CONCAT)}, got {concat!r}")
    if tuple(concat) != CONCAT or any(isinstance(c, bool) for c in concat):
        raise GenotypeError(
            f"{cell_type}_concat: expected {list(CONCAT)} (the cell output concatenates its "
            f"{NODES} nodes), got {list(concat)!r}"
        )
    return CONCAT


@dataclass(frozen=True)
class Genotype:
    """A discrete cell pair. Lists are accepted and stored as tuples; validated on creation.

    normal / reduce: 3 nodes, each 2 distinct `(op, input)` pairs, node i reading 0..i+1.
    normal_concat / reduce_concat: (2, 3, 4).
    """

    normal: Cell
    normal_concat: tuple[int, ...]
    reduce: Cell
    reduce_concat: tuple[int, ...]

    def __post_init__(self) -> None:
        # Frozen: normalise via object.__setattr__ once, before anyone can see the instance.
        for cell_type in CELL_TYPES:
            object.__setattr__(self, cell_type, _coerce_cell(cell_type, getattr(self, cell_type)))
            concat_field = f"{cell_type}_concat"
            object.__setattr__(self, concat_field, _coerce_concat(cell_type, getattr(self, concat_field)))

    # ----- constructors -------------------------------------------------------------------

    @classmethod
    def from_edges(cls, normal: Mapping[int, str], reduce: Mapping[int, str]) -> "Genotype":
        """Build from selected supernet edges: `{edge index (0..8): op name}` per cell type.

        Each mapping must select exactly 2 edges per node (edge groups (0,2), (2,5), (5,9) of
        `EDGE_INPUTS`). Pairs are ordered by edge index, i.e. by input index.
        """
        cells = {}
        for cell_type, edges in (("normal", normal), ("reduce", reduce)):
            if not isinstance(edges, Mapping):
                raise GenotypeError(f"from_edges: {cell_type} must map edge index -> op, got {type(edges).__name__}")
            for e, op in edges.items():
                if isinstance(e, bool) or not isinstance(e, int) or not 0 <= e < EDGES_PER_CELL:
                    raise GenotypeError(f"from_edges: {cell_type} edge {e!r} is not an edge index 0..{EDGES_PER_CELL - 1}")
                if op not in PRIMITIVES:
                    raise GenotypeError(
                        f"from_edges: {cell_type} edge {e}: unknown op {op!r}; valid ops: {', '.join(PRIMITIVES)}"
                    )
            nodes = []
            for node, (lo, hi) in enumerate(NODE_EDGES):
                chosen = sorted(e for e in edges if lo <= e < hi)
                if len(chosen) != INPUTS_PER_NODE:
                    raise GenotypeError(
                        f"from_edges: {cell_type} node {node} needs exactly {INPUTS_PER_NODE} of edges "
                        f"{lo}..{hi - 1}, got {chosen}"
                    )
                nodes.append(tuple((edges[e], EDGE_INPUTS[e][1]) for e in chosen))
            cells[cell_type] = tuple(nodes)
        return cls(cells["normal"], CONCAT, cells["reduce"], CONCAT)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Genotype":
        """From `{"normal": ..., "normal_concat": ..., "reduce": ..., "reduce_concat": ...}`.

        The concat fields may be omitted (default (2, 3, 4)); other keys are an error.
        """
        if not isinstance(data, Mapping):
            raise GenotypeError(f"genotype: expected a mapping with keys normal/reduce, got {type(data).__name__}")
        fields = ("normal", "normal_concat", "reduce", "reduce_concat")
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise GenotypeError(f"genotype: unknown keys {unknown}; expected {list(fields)}")
        missing = [k for k in ("normal", "reduce") if k not in data]
        if missing:
            raise GenotypeError(f"genotype: missing keys {missing}; expected {list(fields)}")
        return cls(data["normal"], data.get("normal_concat", CONCAT),
                   data["reduce"], data.get("reduce_concat", CONCAT))

    @classmethod
    def from_str(cls, text: str) -> "Genotype":
        """Parse the DARTS repr (nested or flat) or a JSON object, without evaluating code.

        Accepted: `Genotype(normal=[[('op', 0), ('op', 1)], ...], normal_concat=[2, 3, 4],
        reduce=..., reduce_concat=range(2, 5))`, the same with positional arguments, and the
        `to_json` text. Only literals (and `range(int, int)` for the concat) are allowed.
        """
        if not isinstance(text, str):
            raise GenotypeError(f"genotype string: expected str, got {type(text).__name__}")
        text = text.strip()
        if len(text) > MAX_STRING_CHARS:
            raise GenotypeError(f"genotype string too long ({len(text)} chars > {MAX_STRING_CHARS})")
        if text.startswith("{"):
            return cls.from_json(text)
        try:
            tree = ast.parse(text, mode="eval")
        except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
            raise GenotypeError(f"not a genotype string (syntax error: {exc}): {text[:80]!r}") from exc
        call = tree.body
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "Genotype"):
            raise GenotypeError(
                f"not a genotype string: expected 'Genotype(normal=..., normal_concat=..., "
                f"reduce=..., reduce_concat=...)', got {text[:80]!r}"
            )
        fields = ("normal", "normal_concat", "reduce", "reduce_concat")
        if len(call.args) > len(fields):
            raise GenotypeError(f"genotype string: at most {len(fields)} positional arguments, got {len(call.args)}")
        values: dict[str, Any] = {}
        for name, node in zip(fields, call.args):
            values[name] = _literal(name, node)
        for kw in call.keywords:
            if kw.arg is None:
                raise GenotypeError("genotype string: '**' arguments are not allowed")
            if kw.arg in values:
                raise GenotypeError(f"genotype string: argument {kw.arg!r} given twice")
            values[kw.arg] = _literal(kw.arg, kw.value)
        return cls.from_dict(values)

    @classmethod
    def from_json(cls, text: str) -> "Genotype":
        """Inverse of `to_json`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GenotypeError(f"genotype JSON is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    # ----- serialisation ------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: cells as lists of lists of [op, input]."""
        return {
            "normal": [[[op, i] for op, i in node] for node in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [[[op, i] for op, i in node] for node in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_str(self) -> str:
        """The DARTS-style repr, nested per node; `Genotype.from_str` inverts it."""
        def cell(c: Cell) -> str:
            return repr([list(node) for node in c])

        return (
            f"Genotype(normal={cell(self.normal)}, normal_concat={list(self.normal_concat)}, "
            f"reduce={cell(self.reduce)}, reduce_concat={list(self.reduce_concat)})"
        )

    def __str__(self) -> str:
        return self.to_str()

    def to_edges(self) -> dict[str, dict[int, str]]:
        """`{cell type: {edge index: op}}`, the inverse of `from_edges`."""
        return {
            cell_type: {
                edge_index(node, inp): op
                for node, pairs in enumerate(getattr(self, cell_type))
                for op, inp in pairs
            }
            for cell_type in CELL_TYPES
        }

    def ops(self) -> tuple[str, ...]:
        """All op names used by both cells (with repeats), normal first."""
        return tuple(op for cell_type in CELL_TYPES for node in getattr(self, cell_type) for op, _ in node)


def _literal(name: str, node: ast.expr) -> Any:
    """A literal value from an AST node; `range(int, int)` allowed (DARTS concat)."""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range"
            and not node.keywords and 1 <= len(node.args) <= 2):
        bounds = [_literal(name, a) for a in node.args]
        if all(isinstance(b, int) and not isinstance(b, bool) and abs(b) < 100 for b in bounds):
            return list(range(*bounds))
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, RecursionError) as exc:
        raise GenotypeError(
            f"genotype string: argument {name!r} must be a literal (lists, tuples, strings, ints), "
            f"got {ast.unparse(node)[:80]!r}"
        ) from exc


# ----- registry ---------------------------------------------------------------------------

# Published MetaNAS cells (boschresearch/metanas, REFERENCE.md "Published MetaNAS cells").
METANAS_IN_V2 = Genotype(
    normal=((("conv_1x5_5x1", 0), ("conv_3x3", 1)),
            (("conv_3x3", 0), ("sep_conv_3x3", 2)),
            (("dil_conv_3x3", 1), ("conv_1x5_5x1", 3))),
    normal_concat=CONCAT,
    reduce=((("sep_conv_3x3", 0), ("conv_3x3", 1)),
            (("conv_3x3", 0), ("sep_conv_3x3", 2)),
            (("conv_3x3", 0), ("dil_conv_3x3", 1))),
    reduce_concat=CONCAT,
)

METANAS_OG_V2 = Genotype(
    normal=((("dil_conv_3x3", 0), ("sep_conv_3x3", 1)),
            (("avg_pool_3x3", 0), ("sep_conv_3x3", 1)),
            (("conv_1x5_5x1", 0), ("conv_3x3", 2))),
    normal_concat=CONCAT,
    reduce=((("skip_connect", 0), ("sep_conv_3x3", 1)),
            (("conv_3x3", 0), ("dil_conv_3x3", 1)),
            (("dil_conv_3x3", 0), ("conv_1x5_5x1", 2))),
    reduce_concat=CONCAT,
)


def _uniform_cell(op: str) -> Cell:
    """Every node reads c_{k-2} and c_{k-1} through `op` (a simple fixed baseline)."""
    return tuple(((op, 0), (op, 1)) for _ in range(NODES))  # type: ignore[return-value]


GENOTYPES: dict[str, Genotype] = {
    "metanas_in_v2": METANAS_IN_V2,  # MetaNAS, miniImageNet
    "metanas_og_v2": METANAS_OG_V2,  # MetaNAS, Omniglot
    # Simple baselines (not published cells): all-sep-conv and a parameter-free pool/skip cell
    # (cheapest network of the space: only preprocessing, stem and head have weights).
    "all_sep_conv_3x3": Genotype(_uniform_cell("sep_conv_3x3"), CONCAT, _uniform_cell("sep_conv_3x3"), CONCAT),
    "pool_skip": Genotype(
        normal=((("max_pool_3x3", 0), ("skip_connect", 1)),
                (("avg_pool_3x3", 0), ("skip_connect", 2)),
                (("max_pool_3x3", 1), ("avg_pool_3x3", 3))),
        normal_concat=CONCAT,
        reduce=((("max_pool_3x3", 0), ("avg_pool_3x3", 1)),
                (("skip_connect", 0), ("max_pool_3x3", 2)),
                (("avg_pool_3x3", 1), ("skip_connect", 3))),
        reduce_concat=CONCAT,
    ),
}

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


def get_genotype(name: str) -> Genotype:
    """Registry lookup; KeyError listing the valid names."""
    if name not in GENOTYPES:
        raise KeyError(f"unknown genotype {name!r}: valid names are {', '.join(GENOTYPES)}")
    return GENOTYPES[name]


def resolve_genotype(spec: str | Path | Genotype) -> Genotype:
    """A registry name, a genotype string (DARTS repr or JSON), or a path to a JSON/text file."""
    if isinstance(spec, Genotype):
        return spec
    if isinstance(spec, Path):
        return load_genotype(spec)
    if not isinstance(spec, str):
        raise GenotypeError(f"genotype spec: expected a name, string or path, got {type(spec).__name__}")
    text = spec.strip()
    if text in GENOTYPES:
        return GENOTYPES[text]
    if text.startswith("Genotype(") or text.startswith("{"):
        return Genotype.from_str(text)
    path = Path(text).expanduser()
    if path.is_file():
        return load_genotype(path)
    if text.endswith(".json") or "/" in text or "\\" in text:
        raise FileNotFoundError(f"genotype file {text!r} does not exist (expected a JSON file written by to_json)")
    if _NAME_RE.match(text):
        raise KeyError(
            f"unknown genotype {text!r}: not a registry name ({', '.join(GENOTYPES)}), "
            f"an existing file, or a genotype string"
        )
    return Genotype.from_str(text)


def load_genotype(path: str | Path) -> Genotype:
    """Read a genotype file: JSON (`to_json`) or a genotype string (`to_str`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"genotype file {str(path)!r} does not exist")
    try:
        return Genotype.from_str(path.read_text())
    except GenotypeError as exc:
        raise GenotypeError(f"{path}: {exc}") from exc


def sample_genotype(generator: torch.Generator) -> Genotype:
    """Uniform sample of the space: per node 2 distinct inputs among its earlier states (a
    uniform unordered pair) and, per kept edge, an op uniform over `PRIMITIVES`.

    Draws on `generator`'s device; normal cell first, then reduce; deterministic per seed.
    """
    cells = []
    for _ in CELL_TYPES:
        nodes = []
        for i in range(NODES):
            inputs = sorted(torch.randperm(i + 2, generator=generator, device=generator.device)[:2].tolist())
            ops = torch.randint(len(PRIMITIVES), (2,), generator=generator, device=generator.device).tolist()
            nodes.append(tuple((PRIMITIVES[o], j) for o, j in zip(ops, inputs)))
        cells.append(tuple(nodes))
    return Genotype(cells[0], CONCAT, cells[1], CONCAT)
