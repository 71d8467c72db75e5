"""Cell renders (SVG/PNG with dot, .gv without it) and the `genotypes` / `render` commands."""
from __future__ import annotations

import json
import shutil

import pytest

from harness.cli import main
from search_spaces import render
from search_spaces.genotypes import GENOTYPES, Genotype
from search_spaces.ops import PRIMITIVES
from search_spaces.render import DotNotFoundError, render_genotype

needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="graphviz 'dot' not installed (apt-get install graphviz)")

# Covers all 7 ops across the two cells.
ALL_OPS = Genotype(
    normal=[[("max_pool_3x3", 0), ("avg_pool_3x3", 1)], [("skip_connect", 0), ("conv_1x5_5x1", 2)],
            [("conv_3x3", 1), ("sep_conv_3x3", 3)]],
    normal_concat=[2, 3, 4],
    reduce=[[("dil_conv_3x3", 0), ("skip_connect", 1)], [("conv_3x3", 0), ("max_pool_3x3", 1)],
            [("avg_pool_3x3", 2), ("sep_conv_3x3", 3)]],
    reduce_concat=[2, 3, 4],
)
CASES = dict(GENOTYPES, all_ops=ALL_OPS)


def _labels(g: Genotype, cell_type: str) -> set[str]:
    return {op for node in getattr(g, cell_type) for op, _ in node}


def test_all_ops_case_covers_primitives():
    assert set(ALL_OPS.ops()) == set(PRIMITIVES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_gv_sources_always(name, tmp_path):
    g = CASES[name]
    paths = render_genotype(g, tmp_path, name, formats=("gv",))
    assert [p.name for p in paths] == [f"{name}_normal.gv", f"{name}_reduce.gv"]
    for path, cell_type in zip(paths, ("normal", "reduce")):
        text = path.read_text()
        assert all(f"label={op}" in text for op in _labels(g, cell_type))
        assert "c_{k-2}" in text and "c_{k-1}" in text and "c_{k}" in text
        assert text.count("->") == 6 + 3  # 6 op edges + 3 concat edges


@needs_dot
@pytest.mark.parametrize("name", sorted(CASES))
def test_svg_contains_every_op_label(name, tmp_path):
    g = CASES[name]
    paths = render_genotype(g, tmp_path, name, formats=("svg",))
    assert [p.name for p in paths] == [f"{name}_normal.svg", f"{name}_reduce.svg"]
    for path, cell_type in zip(paths, ("normal", "reduce")):
        svg = path.read_text()
        assert svg.lstrip().startswith("<?xml") and "<svg" in svg
        for op in _labels(g, cell_type):
            assert f">{op}</text>" in svg, f"{op} missing from {path.name}"


@needs_dot
def test_png(tmp_path):
    paths = render_genotype(GENOTYPES["metanas_in_v2"], tmp_path, "x", formats=("png", "gv"))
    assert sorted(p.name for p in paths) == ["x_normal.gv", "x_normal.png", "x_reduce.gv", "x_reduce.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths if p.suffix == ".png")


def test_missing_dot_writes_sources(tmp_path, monkeypatch):
    monkeypatch.setattr(render, "dot_available", lambda: False)
    with pytest.raises(DotNotFoundError, match="apt-get install graphviz") as info:
        render_genotype(GENOTYPES["metanas_in_v2"], tmp_path, "c")
    assert [p.name for p in info.value.written] == ["c_normal.gv", "c_reduce.gv"]
    assert all(p.is_file() for p in info.value.written)
    assert isinstance(info.value, FileNotFoundError)
    assert not list(tmp_path.glob("*.svg"))


def test_dot_vanishing_during_render(tmp_path, monkeypatch):
    """graphviz.ExecutableNotFound (no dot on PATH at run time) is mapped the same way."""
    monkeypatch.setattr(render, "dot_available", lambda: True)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(DotNotFoundError) as info:
        render_genotype(GENOTYPES["metanas_og_v2"], tmp_path, "c", formats=("svg", "gv"))
    assert sorted(p.name for p in info.value.written) == ["c_normal.gv", "c_reduce.gv"]


@pytest.mark.parametrize("kwargs,match", [
    (dict(formats=("jpg",)), "unknown formats"),
    (dict(formats=()), "unknown formats"),
    (dict(name="a/b"), "plain file stem"),
    (dict(name=""), "plain file stem"),
])
def test_render_bad_arguments(kwargs, match, tmp_path):
    args = dict(genotype=GENOTYPES["pool_skip"], out_dir=tmp_path, name="n") | kwargs
    with pytest.raises(ValueError, match=match):
        render_genotype(**args)


# ----- CLI ------------------------------------------------------------------------------

@needs_dot
def test_cli_render_registry_name(tmp_path, capsys):
    out = tmp_path / "cells"
    assert main(["render", "metanas_in_v2", "--out", str(out)]) == 0
    written = capsys.readouterr().out.split()
    expected = {f"metanas_in_v2_{c}.{f}" for c in ("normal", "reduce") for f in ("svg", "png")}
    assert {p.rsplit("/", 1)[-1] for p in written} == expected
    assert {p.name for p in out.iterdir()} == expected


@needs_dot
def test_cli_render_string_and_json_file(tmp_path, capsys):
    g = GENOTYPES["metanas_og_v2"]
    assert main(["render", g.to_str(), "--out", str(tmp_path), "--format", "svg", "--name", "og"]) == 0
    assert {p.name for p in tmp_path.iterdir()} == {"og_normal.svg", "og_reduce.svg"}
    path = tmp_path / "mine.json"
    path.write_text(g.to_json())
    assert main(["render", str(path), "--out", str(tmp_path / "j"), "--format", "png"]) == 0
    assert {p.name for p in (tmp_path / "j").iterdir()} == {"mine_normal.png", "mine_reduce.png"}
    capsys.readouterr()


def test_cli_render_without_dot_exits_0_with_sources(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(render, "dot_available", lambda: False)
    assert main(["render", "metanas_in_v2", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "apt-get install graphviz" in captured.err and "warning" in captured.err
    assert {p.name for p in tmp_path.iterdir()} == {"metanas_in_v2_normal.gv", "metanas_in_v2_reduce.gv"}
    assert "metanas_in_v2_normal.gv" in captured.out


@pytest.mark.parametrize("spec,match", [
    ("no_such_cell", "unknown genotype 'no_such_cell'"),
    ("missing/cell.json", "does not exist"),
    ("Genotype(normal=[], normal_concat=[2, 3, 4], reduce=[], reduce_concat=[2, 3, 4])", "expected 3 nodes"),
])
def test_cli_render_bad_spec_is_one_line_exit_2(spec, match, tmp_path, capsys):
    assert main(["render", spec, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_genotypes(capsys):
    assert main(["genotypes"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(GENOTYPES)
    for line in lines:
        name, text = line.split(maxsplit=1)
        assert Genotype.from_str(text) == GENOTYPES[name]
    assert main(["genotypes", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {k: Genotype.from_dict(v) for k, v in data.items()} == GENOTYPES
