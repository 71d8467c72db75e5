"""CLI conveniences: reproducible `evaluate`, episode-list names, progress that suits
a log, `--version`, `--debug` anywhere, `render --format pdf`, declared dependencies."""
from __future__ import annotations

import ast
import io
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from trainers.progress import LineProgress, progress_bar

from test_pipeline import pipeline_config

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- evaluate


@pytest.fixture()
def trial(tmp_path):
    """A trial's model file as `run_trial` writes it (an untrained but seeded network: the
    weights do not matter for reproducibility), its settings and its own evaluation."""
    import torch

    from harness.trials import (EPISODE_DIR, ensure_episode_lists, eval_settings, evaluate_trained,
                                save_model_file, seeded_network, trial_specs)
    from search_spaces.genotypes import resolve_genotype
    def make(support_augment: int = 0):
        cfg = pipeline_config(tmp_path / f"res{support_augment}")
        row = {"search_id": "synthetic-metanas-s0-c3", "method": "metanas", "seed": 0, "cells": 3,
               "genotype": resolve_genotype("metanas_in_v2").to_str(), "device_seconds": 0.0}
        (spec,) = trial_specs(cfg, [row])
        spec = spec.with_evaluate(support_augment=support_augment)
        ensure_episode_lists(cfg)
        train = spec.data.load(spec.data.train_split)
        model = seeded_network(spec, len(train.class_names), int(train.images.shape[1]))
        model.eval()
        settings = eval_settings(spec)
        meta = {"genotype": spec.genotype, "channels": spec.network.init_channels, "cells": spec.network.cells,
                "num_classes": len(train.class_names), "in_channels": int(train.images.shape[1]),
                "dataset": spec.data.name}
        path = save_model_file(model, spec, meta, settings)
        test = spec.data.load(spec.data.eval_split)
        summary, _ = evaluate_trained(model, settings, test, torch.device("cpu"),
                                      [Path(spec.results_dir) / EPISODE_DIR])
        return path, settings, summary

    return make


def test_a_model_file_holds_its_evaluation_as_plain_data(trial):
    import torch

    path, settings, _ = trial()
    ckpt = torch.load(path, weights_only=True)  # plain values and tensors only
    ev = ckpt["evaluation"]
    assert ev["dataset"] == "synthetic" and ev["dataset_options"]["train_classes"] == 6
    assert ev["C"] == 1.0 and ev["ways"] == 3 and ev["shots"] == [1, 5] and ev["episodes"] == 6
    assert ev["normalization"] == [[0.5], [0.25]] and ev["augment"] == "small"
    assert set(ev["episode_lists"]) == {"1", "5"}
    assert all(e["file"].endswith(".npz") and len(e["content_hash"]) == 64 for e in ev["episode_lists"].values())


@pytest.mark.parametrize("support_augment", [0, 2])
def test_evaluate_with_no_flag_reproduces_the_trial_exactly(trial, support_augment):
    from harness.pipeline import evaluate_model_file
    from harness.trials import EvalOverrides

    path, _, summary = trial(support_augment)
    settings, again = evaluate_model_file(path, EvalOverrides(), "cpu")
    assert settings.support_augment == support_augment
    assert again == summary  # bit for bit: same episodes, same settings


def test_evaluate_command_prints_the_trials_numbers(trial, capsys):
    path, _, summary = trial()
    assert main(["evaluate", "--checkpoint", str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    for shots, (mean, half) in summary.items():
        assert f"3-way {shots}-shot, 6 episodes (the trial's stored episode lists): {100 * mean:.2f} ± " \
               f"{100 * half:.2f} %" in out


def test_flags_override_and_sample_new_episodes(trial, capsys):
    path, _, _ = trial()
    assert main(["evaluate", "--checkpoint", str(path), "--episodes", "4", "--shots", "1", "--split", "val",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "synthetic/val 3-way 1-shot, 4 episodes (newly sampled episodes)" in out and "5-shot" not in out


def test_a_changed_episode_list_is_refused(trial, capsys):
    from trainers.episodes import EpisodeList, sample_episodes

    path, settings, _ = trial()
    stored = path.parent.parent / "episode_lists" / settings.episode_lists["1"]["file"]
    old = EpisodeList.load(stored)
    other = sample_episodes(np.repeat(np.arange(5), 12), ways=3, shots=1, queries=4, count=6, seed=99)
    assert other.content_hash() != old.content_hash()
    other.save(stored)
    assert main(["evaluate", "--checkpoint", str(path), "--no-progress"]) == 2
    assert "is not the episode list the model was evaluated on" in capsys.readouterr().err


def test_an_older_model_file_needs_a_dataset(trial, tmp_path, capsys):
    import torch

    path, _, _ = trial()
    ckpt = torch.load(path, weights_only=True)
    del ckpt["evaluation"]
    old = tmp_path / "old.pt"
    torch.save(ckpt, old)
    assert main(["evaluate", "--checkpoint", str(old), "--no-progress"]) == 2
    assert "pass --dataset" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(old), "--dataset", "synthetic", "--ways", "3", "--queries", "3",
                 "--episodes", "2", "--no-progress"]) == 0
    assert "3-way 1-shot, 2 episodes" in capsys.readouterr().out


def test_episode_lists_are_named_npz(tmp_path):
    import zipfile

    from harness.trials import ensure_episode_lists

    paths = ensure_episode_lists(pipeline_config(tmp_path))
    assert [p.suffix for p in paths] == [".npz", ".npz"]
    assert all(zipfile.is_zipfile(p) for p in paths)


# ----------------------------------------------------------------------------- progress


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_line_progress_prints_one_line_per_interval_and_at_the_end():
    out, clock = io.StringIO(), Clock()
    bar = LineProgress(10, "search", "cand", stream=out, interval=30.0, clock=clock)
    for _ in range(4):
        clock.t += 10.0
        bar.update(1)
        bar.set_postfix(loss="0.5")
    bar.close()
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines == ["search: 3/10 cand (30%), 0.1 cand/s, 30 s, loss=0.5",
                     "search: 4/10 cand (40%), 0.1 cand/s, 40 s, loss=0.5"]
    assert "\r" not in out.getvalue()


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_only_on_a_terminal():
    from tqdm.auto import tqdm

    assert isinstance(progress_bar(5, "x", stream=FakeTerminal()), tqdm)
    assert isinstance(progress_bar(5, "x", stream=io.StringIO()), LineProgress)
    quiet = io.StringIO()
    with progress_bar(5, "x", enabled=False, stream=quiet) as bar:
        bar.update(5)
    assert quiet.getvalue() == ""


def test_searches_in_a_log_share_one_progress_line():
    from tqdm.auto import tqdm

    from harness.search import SearchState, pruning_network_count, search_bars

    per = pruning_network_count()
    states = [SearchState(f"s{i}", "metantk", i, 3) for i in range(3)]
    log = io.StringIO()
    bars = search_bars(states, 2, True, stream=log)
    assert len({id(b) for b in bars.values()}) == 1  # one line for all searches, not 3 bars
    for bar in bars.values():
        bar.update(2 * per)
    for bar in bars.values():  # run_searches closes them all at the end
        bar.close()
    assert log.getvalue().splitlines() == [log.getvalue().splitlines()[0]]
    assert log.getvalue().startswith(f"3 searches: {6 * per}/{6 * per} cand (100%)")
    terminal = FakeTerminal()
    bars = search_bars(states, 2, True, stream=terminal)
    assert all(isinstance(b, tqdm) for b in bars.values()) and len({id(b) for b in bars.values()}) == 3
    for bar in bars.values():
        bar.close()


def test_search_progress_counts_only_the_work_left():
    """Finished searches (a grown experiment's) and fixed methods are not counted; a resumed
    search starts at the networks of its finished rounds."""
    from harness.search import SearchState, pruning_network_count, pruning_networks_per_round, search_bars

    per_round = pruning_networks_per_round()
    assert per_round[:2] == (127, 109) and per_round[-4:] == (4, 5, 4, 5) and sum(per_round) == pruning_network_count()
    done, resumed, fresh = (SearchState(f"s{i}", "metantk", i, 3) for i in range(3))
    done.stage, resumed.round = "done", 2
    log = io.StringIO()
    bars = search_bars([done, resumed, fresh, SearchState("r", "random", 0, 3)], 1, True, stream=log)
    assert set(bars) == {"s1", "s2"}
    bar = bars["s1"]
    assert (bar.n, bar.total) == (127 + 109, 2 * pruning_network_count())
    bar.update(1)
    bar.close()
    assert log.getvalue().startswith(f"2 searches: {127 + 109 + 1}/{2 * pruning_network_count()} cand")


def test_episode_evaluation_in_a_log_has_no_carriage_returns(capsys):
    import torch

    from trainers.fewshot import evaluate_episodes
    from trainers.episodes import sample_episodes

    labels = torch.arange(4).repeat_interleave(5)
    features = torch.nn.functional.normalize(torch.randn(20, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    episodes = sample_episodes(labels, ways=2, shots=1, queries=2, count=3, seed=0)
    evaluate_episodes(features, labels, episodes, progress=True)
    err = capsys.readouterr().err  # pytest's capture is not a terminal
    assert "\r" not in err and re.search(r"episodes: 3/3 ep \(100%\)", err)


@pytest.mark.parametrize("command", [["verify-kernels", "--widths", "8,16", "--repeats", "1"],
                                     ["verify-theory", "--quick", "--widths", "8,16"]])
def test_verify_commands_show_progress(command, tmp_path, capsys):
    extra = ["--out", str(tmp_path)]
    assert main(command + extra) in (0, 1)  # tiny widths: the verdict does not matter here
    err = capsys.readouterr().err
    assert re.search(rf"{command[0]}: 2/2 net \(100%\).*width=16, repeat=1", err)
    assert main(command + extra + ["--no-progress"]) in (0, 1)
    assert command[0] not in capsys.readouterr().err


# ----------------------------------------------------------------------------- command line


def test_version(capsys):
    from harness.cli import package_version

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"metantk-nas {package_version()}"
    assert re.match(r"^\d+\.\d+", package_version())


@pytest.mark.parametrize("argv", [["--debug", "report", "/nonexistent/results"],
                                  ["report", "/nonexistent/results", "--debug"],
                                  ["data", "inspect", "--dataset", "nope", "--debug"]])
def test_debug_is_accepted_before_or_after_the_subcommand(argv):
    with pytest.raises((FileNotFoundError, KeyError, ValueError)):
        main(argv)  # --debug: the exception itself, not one line and exit 2


def test_without_debug_an_error_is_one_line(capsys):
    assert main(["report", "/nonexistent/results"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_render_writes_pdf(tmp_path, capsys):
    from search_spaces.render import dot_available

    if not dot_available():
        pytest.skip("graphviz `dot` is not installed (apt-get install graphviz)")
    assert main(["render", "metanas_in_v2", "--format", "pdf", "--out", str(tmp_path)]) == 0
    for cell in ("normal", "reduce"):
        assert (tmp_path / f"metanas_in_v2_{cell}.pdf").read_bytes()[:5] == b"%PDF-"


# Import name -> distribution name where they differ.
_DISTRIBUTIONS = {"PIL": "pillow"}
_OWN = {"harness", "search_spaces", "kernels", "trainers"}


def _imported_packages() -> set[str]:
    names = set()
    for room in _OWN:
        for path in (REPO / room).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in _OWN}


def test_every_imported_third_party_package_is_declared_and_pinned():
    import tomllib

    declared = {re.split(r"[<>=!~\[ ;]", d)[0].lower()
                for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}
    pinned = {line.split("==")[0].strip().lower() for line in (REPO / "constraints.txt").read_text().splitlines()
              if "==" in line and not line.startswith("#")}
    needed = {_DISTRIBUTIONS.get(n, n).lower() for n in _imported_packages()}
    assert "pillow" in needed  # the Omniglot loader reads PNGs with PIL
    assert needed <= declared, f"imported but not in pyproject.toml: {sorted(needed - declared)}"
    assert needed <= pinned, f"imported but not pinned in constraints.txt: {sorted(needed - pinned)}"
