"""benchmarks/bench_gpu_search.py runs end to end on a CPU at tiny scale and prints every line
(issue 15: the GPU session runs it once, so it must not fail there on a typo)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_gpu_search_runs_on_cpu_and_prints_every_line(tmp_path):
    out_json = tmp_path / "out.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_gpu_search.py"), "--device", "cpu", "--tiny",
           "--batches", "4", "--lever-networks", "4", "--float64-networks", "2", "--floor-repeats", "2",
           "--search-batch", "8", "--search-rounds", "1", "--actors", "1,2", "--scaling-networks", "8",
           "--engine", "processes", "--threads", "1", "--out", str(tmp_path / "results"), "--json", str(out_json)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    for line in ["TF32 matmul False", "compute floor:", "hooks, 1 network per pass (reference):",
                 "hooks, 4 candidates per pass:", "hooks, 4 per pass, full Gram (before issue 15):", "ghost Gram, 1 per pass:", "channels_last, 1 per pass:",
                 "regions, 1 network at a time:", "whole search:", "genotype:", "reference (cpu, 1 network per pass)",
                 "x its floor", "scaling engine: processes", "1 scorer(s):", "2 scorer(s):", "searches/h", "done"]:
        assert line in text, f"missing {line!r} in:\n{text}"
    out = json.loads(out_json.read_text())
    floor = out["floor"]
    assert floor["kernel_seconds"] > 0 and floor["search_floor_seconds"] == pytest.approx(
        floor["kernel_seconds"] * out["search_kernels"])
    levers = {r["lever"]: r for r in out["levers"]}
    assert levers["hooks, 1 network per pass (reference)"]["max_rel_diff_reference"] == 0
    # the ghost Gram is the same kernel (float64-accurate): the same condition numbers
    assert levers["ghost Gram, 1 per pass"]["max_rel_diff_reference"] <= 1e-6
    # batching changes only float32 rounding (op weights 1/k): a tiny relative difference
    assert levers["hooks, 4 candidates per pass"]["max_rel_diff_reference"] <= 1e-3
    assert levers["hooks, 4 per pass, full Gram (before issue 15)"]["max_rel_diff_reference"] <= 1e-3
    for row in out["levers"]:
        assert row["search_seconds"] > 0 and row["ratio_to_floor"] > 0
    search = out["search"]
    assert search["kernels"] == 127 and search["batch"] == 8
    assert search["max_rel_diff_reference"] <= 1e-2  # round 1, every candidate found in both runs
    assert [r["scorers"] for r in out["scaling"]] == [1, 2]
    assert all(r["networks"] == 8 and r["searches_per_hour"] > 0 for r in out["scaling"])
