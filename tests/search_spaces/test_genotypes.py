"""Genotype validation, parsing (never eval), JSON round trips, edges, registry, sampling."""
from __future__ import annotations

import json
import os

import pytest
import torch

from search_spaces.genotypes import (
    CONCAT, EDGE_INPUTS, GENOTYPES, NODE_EDGES, Genotype, GenotypeError, get_genotype,
    resolve_genotype, sample_genotype,
)
from search_spaces.ops import PRIMITIVES

IN_V2 = GENOTYPES["metanas_in_v2"]


def test_published_cells_match_reference():
    g = get_genotype("metanas_in_v2")
    assert g.normal == ((("conv_1x5_5x1", 0), ("conv_3x3", 1)),
                        (("conv_3x3", 0), ("sep_conv_3x3", 2)),
                        (("dil_conv_3x3", 1), ("conv_1x5_5x1", 3)))
    assert g.reduce[2] == (("conv_3x3", 0), ("dil_conv_3x3", 1))
    og = get_genotype("metanas_og_v2")
    assert og.reduce[0] == (("skip_connect", 0), ("sep_conv_3x3", 1))
    assert og.normal[1] == (("avg_pool_3x3", 0), ("sep_conv_3x3", 1))
    assert g.normal_concat == g.reduce_concat == (2, 3, 4)


@pytest.mark.parametrize("name", sorted(GENOTYPES))
def test_round_trips(name):
    g = GENOTYPES[name]
    assert Genotype.from_str(g.to_str()) == g
    assert Genotype.from_json(g.to_json()) == g
    assert Genotype.from_str(g.to_json(indent=2)) == g
    assert resolve_genotype(g.to_str()) == g
    assert resolve_genotype(name) is g
    assert Genotype.from_edges(**g.to_edges()) == g
    assert hash(g) == hash(Genotype.from_str(str(g)))


def test_edge_layout():
    assert EDGE_INPUTS == ((0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (2, 3))
    assert NODE_EDGES == ((0, 2), (2, 5), (5, 9))


def test_flat_darts_form_and_range_concat():
    flat = ("Genotype(normal=[('conv_1x5_5x1', 0), ('conv_3x3', 1), ('conv_3x3', 0), "
            "('sep_conv_3x3', 2), ('dil_conv_3x3', 1), ('conv_1x5_5x1', 3)], normal_concat=range(2, 5), "
            "reduce=[('sep_conv_3x3', 0), ('conv_3x3', 1), ('conv_3x3', 0), ('sep_conv_3x3', 2), "
            "('conv_3x3', 0), ('dil_conv_3x3', 1)], reduce_concat=[2, 3, 4])")
    assert Genotype.from_str(flat) == IN_V2
    positional = f"Genotype({list(map(list, IN_V2.normal))}, [2, 3, 4], {list(map(list, IN_V2.reduce))}, (2, 3, 4))"
    assert Genotype.from_str(positional) == IN_V2


def test_lists_are_frozen_to_tuples():
    g = Genotype([[["conv_3x3", 0], ["conv_3x3", 1]]] * 3, [2, 3, 4], [[("skip_connect", 0), ("conv_3x3", 1)]] * 3, range(2, 5))
    assert isinstance(g.normal, tuple) and isinstance(g.normal[0][0], tuple)
    assert g.reduce_concat == CONCAT
    with pytest.raises(AttributeError):
        g.normal = ()  # type: ignore[misc]


def _cell(**replace):
    nodes = [[("conv_3x3", 0), ("conv_3x3", 1)], [("conv_3x3", 0), ("conv_3x3", 2)], [("conv_3x3", 1), ("conv_3x3", 3)]]
    for key, value in replace.items():
        nodes[int(key[1:])] = value
    return nodes


@pytest.mark.parametrize("normal,concat,match", [
    (_cell()[:2], CONCAT, "expected 3 nodes"),
    (_cell() + [[("conv_3x3", 0), ("conv_3x3", 1)]], CONCAT, "expected 3 nodes"),
    (_cell(n1=[("conv_3x3", 0)]), CONCAT, "exactly 2 inputs"),
    (_cell(n1=[("conv_3x3", 0), ("conv_3x3", 1), ("conv_3x3", 2)]), CONCAT, "exactly 2 inputs"),
    (_cell(n0=[("conv_3x3", 0), ("conv_3x3", 2)]), CONCAT, "node 0: input index 2 out of range; node 0 reads 0..1"),
    (_cell(n2=[("conv_3x3", 4), ("conv_3x3", 1)]), CONCAT, "node 2: input index 4 out of range"),
    (_cell(n1=[("conv_3x3", -1), ("conv_3x3", 1)]), CONCAT, "out of range"),
    (_cell(n1=[("conv_3x3", True), ("conv_3x3", 1)]), CONCAT, "must be an int"),
    (_cell(n1=[("conv_3x3", "0"), ("conv_3x3", 1)]), CONCAT, "must be an int"),
    (_cell(n1=[("none", 0), ("conv_3x3", 1)]), CONCAT, "unknown op 'none'; valid ops: max_pool_3x3"),
    (_cell(n1=[(3, 0), ("conv_3x3", 1)]), CONCAT, "op name must be a string"),
    (_cell(n1=[("conv_3x3", 1), ("sep_conv_3x3", 1)]), CONCAT, "distinct"),
    (_cell(n1=[("conv_3x3",), ("conv_3x3", 1)]), CONCAT, r"\(op, input\) pair"),
    (_cell(n1="conv_3x3"), CONCAT, "list of 2"),
    ("conv_3x3", CONCAT, "list of 3 nodes"),
    (_cell(), (2, 3), "normal_concat: expected"),
    (_cell(), (1, 2, 3), "normal_concat: expected"),
])
def test_validation_errors(normal, concat, match):
    with pytest.raises(GenotypeError, match=match):
        Genotype(normal, concat, _cell(), CONCAT)


def test_validation_names_the_cell():
    with pytest.raises(GenotypeError, match="reduce node 0"):
        Genotype(_cell(), CONCAT, _cell(n0=[("conv_3x3", 0), ("conv_3x3", 2)]), CONCAT)


@pytest.mark.parametrize("text", [
    "__import__('os').system('touch /tmp/pwned_metantk')",
    "Genotype(normal=__import__('os').system('touch /tmp/pwned_metantk'), normal_concat=[2,3,4], reduce=[], reduce_concat=[2,3,4])",
    "Genotype(normal=[x for x in ()], normal_concat=[2,3,4], reduce=[], reduce_concat=[2,3,4])",
    "Genotype(**{'normal': []})",
    "open('/etc/passwd').read()",
    "Genotype(normal=range(10**9), normal_concat=[2], reduce=[], reduce_concat=[])",
    "lambda: 0",
    "Genotype(normal=[[('conv_3x3', 0), ('conv_3x3', 1)]]",  # syntax error
    "",
    "Genotype(" * 5000,
])
def test_from_str_never_evaluates(text):
    with pytest.raises(ValueError):
        Genotype.from_str(text)
    assert not os.path.exists("/tmp/pwned_metantk")


@pytest.mark.parametrize("text,match", [
    ('{"normal": []}', "missing keys"),
    ('{"normal": [], "reduce": [], "extra": 1}', "unknown keys"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not a genotype string"),
])
def test_json_errors(text, match):
    with pytest.raises(GenotypeError, match=match):
        Genotype.from_str(text) if not text.startswith("{") else Genotype.from_json(text)


def test_resolve_genotype_file_and_errors(tmp_path):
    path = tmp_path / "cell.json"
    path.write_text(IN_V2.to_json())
    assert resolve_genotype(str(path)) == IN_V2
    txt = tmp_path / "cell.txt"
    txt.write_text(IN_V2.to_str() + "\n")
    assert resolve_genotype(str(txt)) == IN_V2
    with pytest.raises(KeyError, match="metanas_in_v2"):
        resolve_genotype("no_such_cell")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        resolve_genotype(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"normal": [], "reduce": []}))
    with pytest.raises(GenotypeError, match="bad.json"):
        resolve_genotype(str(bad))
    with pytest.raises(KeyError, match="valid names"):
        get_genotype("nope")


def test_from_edges_errors():
    edges = IN_V2.to_edges()
    with pytest.raises(GenotypeError, match="node 1 needs exactly 2 of edges 2..4"):
        Genotype.from_edges({**edges["normal"], 3: "conv_3x3"}, edges["reduce"])
    with pytest.raises(GenotypeError, match="edge 9"):
        Genotype.from_edges({**edges["normal"], 9: "conv_3x3"}, edges["reduce"])
    with pytest.raises(GenotypeError, match="unknown op"):
        Genotype.from_edges({**edges["normal"], 0: "zero"}, edges["reduce"])


def test_sample_genotype_deterministic_and_covers_space():
    a = sample_genotype(torch.Generator().manual_seed(3))
    b = sample_genotype(torch.Generator().manual_seed(3))
    assert a == b
    gen = torch.Generator().manual_seed(0)
    samples = [sample_genotype(gen) for _ in range(300)]
    ops = {op for g in samples for op in g.ops()}
    assert ops == set(PRIMITIVES)
    node2_inputs = {tuple(i for _, i in g.normal[2]) for g in samples}
    assert node2_inputs == {(i, j) for i in range(4) for j in range(i + 1, 4)}  # all 6 pairs
    assert len(set(samples)) > 290
