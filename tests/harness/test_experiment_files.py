"""Every non-paper experiment file runs end to end (search or proxy study, Tune training,
evaluation, report) with only scale keys reduced through `--set`: the smoke default on
synthetic data, and the Omniglot files on the real shared Omniglot (skipped when absent).
The paper files have their own test (test_paper_files.py), the proxy benchmark its own
(test_leaderboard.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness import store

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# Scale only: a 4-channel supernet of 2 stacked cells on one task of 8x8 kernel images, one
# repeat, few region inputs, candidates scored 16 per pass, one training epoch (the recipe's
# decay points dropped), two evaluation episodes of 2 queries. Methods, kernels and datasets
# stay the file's (these files stack 3 cells; the per-cell-count kernel rules of the paper
# files are exercised by test_paper_files.py at the paper's cell counts).
SCALE = ["search.init_channels=4", "search.cells=[2]", "search.tasks=1", "search.kernel_image_size=8",
         "search.repeats=1", "search.region_inputs=20", "search.region_batches=1", "search.candidates_per_job=16",
         "resources.candidate_batch=16", "train.epochs=1", "train.lr_decay_epochs=[]", "train.init_channels=0",
         "evaluate.episodes=2", "evaluate.queries=2"]
FILES = {
    # name: (needs Omniglot, extra --set, expected trials)
    "smoke": (False, ["search.seeds=[0]", "dataset.image_size=16"], 2),
    "omniglot": (True, ["search.seeds=[0]", "dataset.image_size=16"], None),
    "ablation_omniglot": (True, ["search.seeds=[0]", "dataset.image_size=16"], 4),
    "correlation_omniglot": (True, ["search.seeds=[0, 1, 2]", "dataset.image_size=16", "study.repeats=1",
                                    "study.n_boot=20"], 3),
    # Its paper methods are ablation_omniglot's (same settings, run above); of its proxy methods,
    # a label-based gradient proxy and a size proxy run here (every proxy method searches
    # through the same code: tests/harness/test_proxy_methods.py).
    # one of its proxy methods (the others: tests/harness/test_proxy_methods.py); its paper
    # methods are ablation_omniglot's
    "proxy_ablation_omniglot": (True, ["search.seeds=[0]", "dataset.image_size=16",
                                       'search.methods=["snip+regions"]'], 1),
}


@pytest.mark.parametrize("name", list(FILES))
def test_experiment_file_runs_end_to_end(name, ray_session, tmp_path, capsys, request):
    from harness.cli import main
    from harness.config import load_config

    needs_omniglot, extra, expected = FILES[name]
    root = request.getfixturevalue("omniglot_root") if needs_omniglot else None
    path = REPO / "experiments" / f"{name}.toml"
    sets = SCALE + extra
    args = ["run", str(path), "--out", str(tmp_path), "--no-progress"] + (["--root", str(root)] if root else [])
    for item in sets:
        args += ["--set", item]
    assert main(args) == 0, capsys.readouterr().err[-3000:]

    cfg = load_config(path, {"experiment": {"out": str(tmp_path)}, "dataset": {"root": str(root or "")}}, sets)
    results = cfg.results_dir
    searches = store.read_table(results, "searches")
    trials = store.read_table(results, "trials")
    expected = expected if expected is not None else len(cfg.search.methods) * len(cfg.search.seeds)
    assert len(searches) == expected and sorted(trials["search_id"]) == sorted(searches["search_id"])
    assert trials["acc_1shot"].between(0, 1).all() and (trials["epochs"] == 1).all()
    assert len(store.read_table(results, "episodes")) == len(trials) * len(cfg.evaluate.shots) * 2
    assert len(store.read_table(results, "history")) == len(trials)  # one epoch each
    if cfg.study.proxies:
        assert len(store.read_table(results, "proxies")) == expected
    assert (results / "report" / "report.md").is_file()
    assert all(f"# --set {item}" in (results / "config.toml").read_text() for item in sets)
