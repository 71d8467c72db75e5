"""Every paper experiment file runs end to end: search, Tune training, evaluation
with its own support augmentation, report -- on tiny miniImageNet / tieredImageNet copies in
the real on-disk formats (the writers of tests/trainers/conftest.py), with only scale keys
reduced through `--set`. One run per file, the smallest settings: ~0.5-1 min each on 2 cores."""
from __future__ import annotations

import importlib.util
import json
import math
import tomllib
from pathlib import Path

import pytest

from harness import store

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# Scale only: one seed, a 4-channel supernet at 8x8 on one task, one repeat, few region
# inputs, 16x16 images, one epoch, 2 episodes of 2 queries; candidates scored 16 per pass
# (per-op overhead dominates such tiny nets on a CPU). Cells, kernels, ranking, ways, shots
# and the 5x support augmentation stay the file's.
SCALE = ["search.seeds=[0]", "search.init_channels=4", "search.tasks=1", "search.kernel_image_size=8",
         "search.repeats=1", "search.region_inputs=20", "search.region_batches=1", "search.candidates_per_job=16",
         "dataset.image_size=16", "train.epochs=1", "evaluate.episodes=2", "evaluate.queries=2",
         "resources.candidate_batch=16"]
# The ablation is cut to its 8-cell MetaNTK-NAS search (ANIL by search.kernel_by_cells.8) and
# random cells: the 5-cell MAML search is what mini_5cell runs.
PAPER_FILES = {
    "mini_5cell": ("mini", []),
    "mini_8cell": ("mini", []),
    "tiered_5cell": ("tiered", []),
    "tiered_8cell": ("tiered", []),
    "ablation_mini": ("mini", ['search.methods=["metantk", "random"]', "search.cells=[8]"]),
}


def _tiny_writers():
    """tests/trainers/conftest.py as a module of its own, with 6 classes of 8 images per split
    (5-way episodes of 5 shots + 2 queries, and 5-way kernel tasks)."""
    spec = importlib.util.spec_from_file_location("tiny_formats", REPO / "tests" / "trainers" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ids = lambda first: tuple(first + 3 * i for i in range(6))  # noqa: E731
    module.MINI_CLASS_IDS = {"train": ids(1), "val": ids(100), "test": ids(200), "train_phase_val": ids(1),
                             "trainval": ids(1) + ids(100)}
    module.TIERED_CLASS_IDS = {"train": ids(1), "val": ids(100), "test": ids(200)}
    return module


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    writers = _tiny_writers()
    base = tmp_path_factory.mktemp("paper-data")
    return {"mini": writers.write_mini(base / "mini", per_class=8),
            "tiered": writers.write_tiered(base / "tiered", per_class=8)}


@pytest.mark.parametrize("name", list(PAPER_FILES))
def test_paper_file_runs_end_to_end(name, roots, ray_session, tmp_path, capsys):
    from harness.cli import main
    from harness.config import load_config

    data, extra = PAPER_FILES[name]
    path = REPO / "experiments" / f"{name}.toml"
    sets = SCALE + extra
    args = ["run", str(path), "--root", str(roots[data]), "--out", str(tmp_path), "--no-progress"]
    for item in sets:
        args += ["--set", item]
    assert main(args) == 0, capsys.readouterr().err[-3000:]
    cfg = load_config(path, {"experiment": {"out": str(tmp_path)}, "dataset": {"root": str(roots[data])}}, sets)
    results = cfg.results_dir

    # The resolved config records the overrides and keeps the paper's settings.
    resolved = (results / "config.toml").read_text()
    assert all(f"# --set {item}" in resolved for item in sets)
    parsed = tomllib.loads(resolved)
    assert parsed["search"]["ranking"] == "reference" and parsed["evaluate"]["support_augment"] == 5

    searches = store.read_table(results, "searches")
    pruning = searches[searches["method"] == "metantk"]
    assert len(pruning) == 1 and (pruning["rounds"] == 10).all()
    for row in pruning.itertuples():
        k = cfg.search.kernel_for(int(row.cells))
        assert (row.algorithm, row.inner_time, row.reg) == (k.algorithm, k.inner_time, k.reg)
        print(f"\n{name}: {row.search_id} ({k.algorithm}, t={k.inner_time}, c={k.reg}): {row.genotype}")

    trials = store.read_table(results, "trials")
    assert sorted(trials["trial_id"]) == sorted(searches["search_id"])
    assert trials["acc_1shot"].between(0, 1).all() and trials["acc_5shot"].between(0, 1).all()
    assert (trials["epochs"] == 1).all()
    for text in trials["config_json"]:  # evaluated with 5 support copies of the recipe's transform
        spec = json.loads(text)
        assert spec["evaluate"]["support_augment"] == 5 and spec["train"]["augment"] == "rfs84"
    episodes = store.read_table(results, "episodes")
    assert len(episodes) == len(trials) * 2 * 2 and set(episodes["queries"]) == {2}
    assert (results / "report" / "report.md").is_file()
    cands = store.read_table(results, "candidates")
    assert not math.isnan(cands["delta_cn"].iloc[0])
