"""Issue 11: the harness on a multi-node Ray cluster (rows go home, storage, data probe, lost nodes)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from harness import store
from harness.config import parse_config


def tiny_config(out, name="cluster", **resources):
    return parse_config({
        "experiment": {"name": name, "seed": 1, "out": str(out)},
        "dataset": {"name": "synthetic",
                    "options": {"train_classes": 5, "val_classes": 3, "test_classes": 4, "images_per_class": 10}},
        "search": {"methods": ["random"], "seeds": [0], "cells": [2], "init_channels": 4},
        "train": {"recipe": "synthetic", "epochs": 2, "batch_size": 25},
        "evaluate": {"ways": 3, "shots": [1], "queries": 3, "episodes": 4},
        "resources": {"max_failures": 1, **resources},
    }, source="cluster-test")


def genotype_row(cfg, seed=0):
    from search_spaces.genotypes import GENOTYPES

    genotype = next(iter(GENOTYPES.values()))
    return {"search_id": f"synthetic-random-s{seed}-c2", "method": "random", "seed": seed, "cells": 2,
            "genotype": genotype.to_str(), "device_seconds": 0.0}


def fake_outputs(trial_id: str, acc: float) -> dict:
    base = {"experiment": "x", "dataset": "synthetic", "method": "random", "seed": 0, "cells": 2,
            "trial_id": trial_id}
    trial = {**base, "search_id": trial_id, "genotype": "g", "params": 10, "search_seconds": 0.0,
             "train_seconds": 1.0, "epochs": 1, "final_loss": 1.0, "final_train_acc": 0.5, "ways": 3,
             "episodes": 2, "acc_1shot": acc, "ci_1shot": 0.1, "acc_5shot": float("nan"),
             "ci_5shot": float("nan"), "device_kind": "cpu", "config_json": "{}"}
    episodes = [{**base, "ways": 3, "shots": 1, "queries": 3, "episode": i, "accuracy": acc} for i in range(2)]
    history = [{**base, "epoch": 1, "loss": 1.0, "train_acc": 0.5, "lr": 0.1, "seconds": 1.0}]
    return {"trial_id": trial_id, "trials": [trial], "episodes": episodes, "history": history}


def write_checkpoint_folder(folder: Path, outputs: dict, model: bytes = b"weights") -> Path:
    from harness.trials import MODEL_NAME, OUTPUTS_NAME

    folder.mkdir(parents=True, exist_ok=True)
    (folder / OUTPUTS_NAME).write_text(json.dumps(outputs))
    (folder / MODEL_NAME).write_bytes(model)
    return folder


def test_collecting_a_trial_twice_replaces_its_rows(tmp_path):
    from harness.trials import collect_trial_outputs

    results = tmp_path / "results"
    first = write_checkpoint_folder(tmp_path / "a", fake_outputs("t1", 0.5))
    assert collect_trial_outputs(results, first) == "t1"
    again = write_checkpoint_folder(tmp_path / "b", fake_outputs("t1", 0.75), model=b"newer")
    assert collect_trial_outputs(results, again) == "t1"  # a restored trial reporting again
    trials = store.read_table(results, "trials")
    assert list(trials["trial_id"]) == ["t1"] and list(trials["acc_1shot"]) == [0.75]
    assert len(store.read_table(results, "episodes")) == 2 and len(store.read_table(results, "history")) == 1
    assert (results / "models" / "t1.pt").read_bytes() == b"newer"


def test_an_epoch_checkpoint_is_not_collected(tmp_path):
    from harness.trials import collect_trial_outputs

    (tmp_path / "epoch").mkdir()
    assert collect_trial_outputs(tmp_path / "results", tmp_path / "epoch") is None
    assert not (tmp_path / "results").exists()


def test_reported_epochs_merge_into_one_history_file(tmp_path):
    from harness.trials import record_epoch, trial_specs

    cfg = tiny_config(tmp_path)
    spec = trial_specs(cfg, [genotype_row(cfg)])[0]
    metrics = {"epoch": 1, "loss": 2.0, "train_acc": 0.1, "lr": 0.1, "epoch_seconds": 1.0}
    record_epoch(cfg.results_dir, spec, metrics)
    record_epoch(cfg.results_dir, spec, {**metrics, "epoch": 2, "loss": 1.5})
    record_epoch(cfg.results_dir, spec, {**metrics, "epoch": 2, "loss": 1.4})  # a retried epoch
    history = store.read_table(cfg.results_dir, "history")
    assert list(history["epoch"]) == [1, 2] and list(history["loss"]) == [2.0, 1.4]


@pytest.mark.slow
def test_a_trial_that_cannot_write_the_results_folder_still_has_all_its_rows(tmp_path, ray_session):
    """The trial sees a results folder it cannot create (a path below a plain file, refused even
    to root): every row and the model file still arrive, written by the driver."""
    from harness.pipeline import evaluate_model_file
    from harness.trials import EvalOverrides, run_trials, trial_specs

    cfg = tiny_config(tmp_path)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("the trial's view of the results folder lies below this file\n")
    unreachable = str(blocker / "results")
    # episode lists are sampled by the driver, in its own folder, before the trials start
    spec = trial_specs(cfg, [genotype_row(cfg)])[0]
    from harness.trials import ensure_episode_lists

    ensure_episode_lists(cfg)
    blind = replace(spec, results_dir=unreachable)
    assert run_trials(cfg, [blind], verbose=0) == [spec.trial_id]
    trials = store.read_table(cfg.results_dir, "trials")
    assert list(trials["trial_id"]) == [spec.trial_id] and trials["acc_1shot"].between(0, 1).all()
    assert len(store.read_table(cfg.results_dir, "episodes")) == 4
    assert sorted(store.read_table(cfg.results_dir, "history")["epoch"]) == [1, 2]
    from harness.provenance import code_version

    assert list(trials["git_sha"]) == [code_version()]  # stamped by the driver
    model = cfg.results_dir / "models" / f"{spec.trial_id}.pt"
    _, summary = evaluate_model_file(model, EvalOverrides(), "cpu")  # the driver's copy reproduces the row
    assert summary[1][0] == trials["acc_1shot"].iloc[0]


# ----------------------------------------------------------------------------- storage, code version


def test_tune_storage_defaults_to_the_results_folder_and_keeps_uris(tmp_path):
    from harness.trials import tune_storage

    assert tune_storage(tiny_config(tmp_path)) == (str((tmp_path / "cluster" / "tune").resolve()), False)
    assert tune_storage(tiny_config(tmp_path, storage="s3://bucket/runs")) == ("s3://bucket/runs", True)
    shared = tmp_path / "shared" / "tune"
    assert tune_storage(tiny_config(tmp_path, storage=str(shared))) == (str(shared.resolve()), True)


def test_storage_flag_reaches_the_config(tmp_path, repo_root):
    import argparse

    from harness.cli import add_common_experiment_args, load_experiment

    parser = argparse.ArgumentParser()
    add_common_experiment_args(parser)
    args = parser.parse_args([str(repo_root / "experiments" / "smoke.toml"), "--storage", "gs://b/x"])
    assert load_experiment(args).resources.storage == "gs://b/x"


def test_a_node_local_storage_on_a_multi_node_cluster_is_refused():
    from harness.errors import UserError
    from harness.ray_session import check_storage_for_cluster

    with pytest.raises(UserError, match=r"cluster of 3 nodes.*node-local /r/tune; set \[resources\] storage"):
        check_storage_for_cluster("/r/tune", explicit=False, nodes=3)
    check_storage_for_cluster("/r/tune", explicit=False, nodes=1)      # one machine: fine
    check_storage_for_cluster("s3://b/tune", explicit=False, nodes=3)  # a URI: fine
    check_storage_for_cluster("/nfs/tune", explicit=True, nodes=3)     # a shared mount: probed per node


def test_attaching_ships_the_project_packages():
    from harness.ray_session import CODE_PACKAGES, code_runtime_env

    modules = [Path(p) for p in code_runtime_env()["py_modules"]]
    assert [m.name for m in modules] == list(CODE_PACKAGES)
    assert all((m / "__init__.py").is_file() for m in modules)


def test_only_changed_code_makes_a_checkout_dirty():
    """Tracked changes anywhere, or a new file in a code package; not a stray log or a results
    folder (rows of a clean checkout were tagged -dirty because of an untracked log file)."""
    from harness.provenance import is_dirty

    assert not is_dirty("")
    assert not is_dirty("?? run.log\n?? results/smoke/\n?? notes.ipynb\n")
    assert is_dirty("?? run.log\n?? harness/new_module.py\n")
    assert is_dirty("?? kernels/\n")
    assert is_dirty(" M experiments/smoke.toml\n")  # a tracked file, even outside the code
    assert is_dirty("A  README.md\n")


def test_code_version_is_the_checkout_sha_or_empty(tmp_path, monkeypatch):
    import re

    from harness import provenance

    provenance.code_version.cache_clear()
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", provenance.code_version())
    monkeypatch.setattr(provenance, "_REPO", tmp_path)  # not a git checkout
    provenance.code_version.cache_clear()
    try:
        assert provenance.code_version() == ""
    finally:
        monkeypatch.undo()
        provenance.code_version.cache_clear()


def test_git_sha_column_is_stamped_by_the_driver_and_old_files_read_as_unknown(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from harness.trials import collect_trial_outputs

    results = tmp_path / "results"
    collect_trial_outputs(results, write_checkpoint_folder(tmp_path / "a", fake_outputs("t1", 0.5)), "abc123")
    assert list(store.read_table(results, "trials")["git_sha"]) == ["abc123"]
    # a trials file written before the column existed
    old = store.rows_to_table("trials", fake_outputs("t0", 0.25)["trials"])
    old = old.drop_columns(["git_sha"])
    assert "git_sha" not in old.schema.names
    pq.write_table(old, store.table_path(results, "trials", "t0"))
    trials = store.read_table(results, "trials").set_index("trial_id")
    assert trials.loc["t0", "git_sha"] == "" and trials.loc["t1", "git_sha"] == "abc123"
    assert trials.loc["t0", "acc_1shot"] == 0.25
    assert list(store.read_table(results, "trials").columns) == store.SCHEMAS["trials"].names
    assert pa.types.is_string(store.SCHEMAS["searches"].field("git_sha").type)


# ----------------------------------------------------------------------------- fractional GPUs


def test_trial_resources_take_fractions_of_a_gpu():
    from harness.errors import UserError
    from harness.ray_session import how_many_fit, trial_resources

    gpu_node = {"CPU": 8.0, "GPU": 1.0}
    quarter = trial_resources(gpu_node, 1.0, 0.25)
    assert quarter == {"cpu": 1.0, "gpu": 0.25} and how_many_fit(gpu_node, quarter) == 4
    assert how_many_fit({"CPU": 2.0, "GPU": 1.0}, quarter) == 2  # the CPUs bind first
    assert trial_resources(gpu_node, 1.0, 1.0) == {"cpu": 1.0, "gpu": 1.0}
    assert trial_resources(gpu_node, 2.0, 0.0) == {"cpu": 2.0}  # trial_gpus = 0: CPU only
    assert trial_resources({"CPU": 2.0}, 4.0, 0.5) == {"cpu": 2.0}  # no GPUs: CPUs, at most the cluster's
    with pytest.raises(UserError, match="asks for 2 GPUs but the cluster has 1; lower \\[resources\\] trial_gpus"):
        trial_resources(gpu_node, 1.0, 2.0)
    assert how_many_fit({"CPU": 3.0, "GPU": 2.0}, {"cpu": 1.0, "gpu": 0.1}) == 3


def test_scorer_actors_take_fractions_of_a_gpu():
    from harness.scorers import scorer_plan

    assert scorer_plan({"CPU": 16.0, "GPU": 2.0}, 0, 0.5) == (4, {"num_gpus": 0.5, "num_cpus": 1})
    assert scorer_plan({"CPU": 16.0, "GPU": 2.0}, 3, 0.5) == (3, {"num_gpus": 0.5, "num_cpus": 1})
    assert scorer_plan({"CPU": 16.0, "GPU": 2.0}, 0, 1.0) == (2, {"num_gpus": 1.0, "num_cpus": 1})
    assert scorer_plan({"CPU": 3.0}, 0, 0.5) == (3, {"num_cpus": 1})


@pytest.mark.parametrize("key", ["trial_gpus", "gpus_per_worker"])
def test_gpu_shares_above_one_must_be_whole(tmp_path, key):
    from harness.errors import ConfigError

    assert getattr(tiny_config(tmp_path, **{key: 0.25}).resources, key) == 0.25
    assert getattr(tiny_config(tmp_path, **{key: 2}).resources, key) == 2
    with pytest.raises(ConfigError, match=f"resources.{key} = 1.5 must be a fraction of one GPU"):
        tiny_config(tmp_path, **{key: 1.5})


# ----------------------------------------------------------------------------- data on every node


def test_a_node_without_the_data_is_named():
    from harness.cluster_checks import node_problems

    nodes = [{"NodeID": "aaaa1111bbbb", "NodeManagerAddress": "10.0.0.1"},
             {"NodeID": "cccc2222dddd", "NodeManagerAddress": "10.0.0.2"}]
    assert node_problems(nodes, [[], []]) is None
    line = node_problems(nodes, [[], ["/data/omniglot", "/data/omniglot/background"]])
    assert line.startswith("Ray node 10.0.0.2 (node cccc2222) cannot see /data/omniglot (1 more path(s))")
    assert "\n" not in line


def test_the_probe_runs_on_every_node(tmp_path, ray_session):
    from harness.cluster_checks import probe_nodes
    from harness.errors import UserError
    from harness.ray_session import alive_nodes

    probe_nodes([str(tmp_path)])  # every node (here: one) sees it
    missing = tmp_path / "not-here"
    with pytest.raises(UserError, match=f"Ray node .* cannot see {missing}"):
        probe_nodes([str(missing)])
    assert len(alive_nodes()) >= 1


# ----------------------------------------------------------------------------- lost nodes


SCENARIO = Path(__file__).with_name("cluster_scenario") / "lost_nodes.py"


@pytest.mark.slow
def test_lost_nodes_cost_only_the_work_in_flight(tmp_path, repo_root):
    """A head and two worker nodes (declared GPUs) on this machine, in a subprocess (it cannot
    share the session's Ray). The same experiment runs undisturbed, then while a worker node is
    removed after the first search round and another after the first training epoch (a fresh
    node added each time): same genotypes, same accuracies, no missing or duplicate rows."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo_root), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(SCENARIO), str(tmp_path)], env=env, cwd=repo_root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM: the script shuts its cluster down on the way out
        _, stderr = proc.communicate(timeout=60)
        pytest.fail(f"the lost-nodes scenario ran past 300 s: {stderr[-3000:]}")
    assert proc.returncode == 0, stderr[-3000:]
    events = [e["event"] for e in json.loads((tmp_path / "events.json").read_text())]
    assert events == ["reference run finished", "removed a scorer's node mid-search", "added a worker node",
                      "removed a trial's node mid-training", "added a worker node", "run with lost nodes finished"]
    ref, lost = tmp_path / "ref", tmp_path / "lost"

    def table(folder: Path, name: str, key: list[str]):
        frame = store.read_table(folder, name)
        assert not frame.duplicated(key).any(), f"duplicate {name} rows in {folder.name}"
        return frame.drop(columns=["experiment"]).set_index(key).sort_index()

    searches = [table(f, "searches", ["method", "seed", "cells"]) for f in (ref, lost)]
    assert list(searches[0]["genotype"]) == list(searches[1]["genotype"]) and len(searches[0]) == 2
    trials = [table(f, "trials", ["method", "seed", "cells"]) for f in (ref, lost)]
    for column in ("genotype", "acc_1shot", "ci_1shot", "final_loss", "epochs"):
        assert list(trials[0][column]) == list(trials[1][column]), column
    episodes = [table(f, "episodes", ["method", "seed", "cells", "shots", "episode"]) for f in (ref, lost)]
    assert list(episodes[0]["accuracy"]) == list(episodes[1]["accuracy"]) and len(episodes[0]) == 2 * 4
    history = [table(f, "history", ["method", "seed", "cells", "epoch"]) for f in (ref, lost)]
    assert list(history[0]["loss"]) == list(history[1]["loss"]) and len(history[0]) == 2 * 6
    assert sorted(p.name for p in (lost / "models").glob("*.pt")) == sorted(p.name for p in (ref / "models").glob("*.pt"))


@pytest.mark.slow
def test_train_command_writes_git_sha_on_its_rows(tmp_path, ray_session, capsys):
    """`train` (given genotypes, no search): its `searches` and `trials` rows carry the code
    version. Before, `train` failed with NameError (kernel_columns) before training anything."""
    from harness.cli import main
    from harness.provenance import code_version
    from search_spaces.genotypes import GENOTYPES

    toml = tmp_path / "tiny.toml"
    toml.write_text(f"""
[experiment]
name = "traincmd"
out = "{tmp_path}"
[dataset]
name = "synthetic"
options = {{ train_classes = 5, val_classes = 3, test_classes = 4, images_per_class = 10 }}
[search]
seeds = [0]
cells = [2]
init_channels = 4
[train]
recipe = "synthetic"
epochs = 1
batch_size = 25
[evaluate]
ways = 3
shots = [1]
queries = 3
episodes = 4
""")
    assert main(["train", str(toml), "--genotype", next(iter(GENOTYPES)), "--no-progress"]) == 0
    results = tmp_path / "traincmd"
    assert list(store.read_table(results, "searches")["git_sha"]) == [code_version()]
    assert list(store.read_table(results, "trials")["git_sha"]) == [code_version()]


def test_a_ray_client_address_is_refused_up_front():
    from harness.errors import UserError
    from harness.ray_session import check_reachable

    with pytest.raises(UserError, match=r"Ray Client \(ray://\) runs Tune's driver side on the head node"):
        check_reachable("ray://head:10001")
