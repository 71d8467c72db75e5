"""Hostile and careless input: data files never run code, refusals are one line.

Each test here reproduces a way a careless or hostile user broke the harness and pins the
behaviour that replaced it.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from harness.cli import main
from harness.errors import UserError
from harness.trials import MODEL_KEYS, read_model_file


class _WritesMarker:
    """A pickle payload: unpickling it would create the marker file (code execution)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran\n"))


def _model_payload() -> dict:
    return {"genotype": "metanas_in_v2", "channels": 4, "cells": 3, "num_classes": 5, "in_channels": 1,
            "model": {"w": torch.zeros(2)}}


@pytest.mark.parametrize("where", ["top-level", "nested"])
def test_evaluate_never_runs_code_from_a_model_file(tmp_path: Path, where: str, capsys) -> None:
    marker = tmp_path / "pwned"
    payload = _WritesMarker(marker) if where == "top-level" else {**_model_payload(), "extra": [_WritesMarker(marker)]}
    path = tmp_path / "evil.pt"
    torch.save(payload, path)
    assert not marker.exists()
    with pytest.raises(UserError, match="not a plain metantk-nas model file"):
        read_model_file(path)
    assert not marker.exists()
    rc = main(["evaluate", "--checkpoint", str(path), "--dataset", "synthetic", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not marker.exists()
    assert len(err.splitlines()) == 1 and "evil.pt" in err


def test_a_text_file_given_as_model_is_one_line(tmp_path: Path, capsys) -> None:
    path = tmp_path / "notes.pt"
    path.write_text("not a model\n")
    assert main(["evaluate", "--checkpoint", str(path), "--dataset", "synthetic", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "notes.pt" in err and "model file" in err


def test_a_plain_model_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "ok.pt"
    torch.save(_model_payload(), path)
    ckpt = read_model_file(path)
    assert set(MODEL_KEYS) <= set(ckpt) and torch.equal(ckpt["model"]["w"], torch.zeros(2))


def test_a_foreign_file_names_what_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.ones(1)}, path)
    with pytest.raises(UserError, match="missing genotype"):
        read_model_file(path)
    with pytest.raises(UserError, match="not found"):
        read_model_file(tmp_path / "absent.pt")
    assert os.listdir(tmp_path) == ["other.pt"]


# ----------------------------------------------------------------------------- helpers

import json
import signal
import subprocess
import sys
import time

from harness.config import parse_config

REPO = Path(__file__).resolve().parents[2]
TINY = {
    "experiment": {"name": "tiny", "seed": 1},
    "dataset": {"name": "synthetic",
                "options": {"train_classes": 6, "val_classes": 3, "test_classes": 5, "images_per_class": 12}},
    "search": {"methods": ["metanas", "random"], "seeds": [0], "cells": [3], "init_channels": 4},
    "train": {"recipe": "synthetic", "epochs": 1, "batch_size": 32},
    "evaluate": {"ways": 3, "shots": [1, 5], "queries": 4, "episodes": 6},
}


def _toml_value(value) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, float) and value != value:
        return "nan"
    return json.dumps(value)


def write_experiment(path: Path, out: Path, **changes: dict) -> Path:
    """TINY with `changes` ({section: {key: value}}) as a TOML file whose results go to `out`."""
    data = {s: dict(v) for s, v in TINY.items()}
    data["experiment"]["out"] = str(out)
    for section, values in changes.items():
        data.setdefault(section, {}).update(values)
    text = "".join(f"[{s}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items()) + "\n"
                   for s, values in data.items())
    path.write_text(text)
    return path


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# ----------------------------------------------------------------------------- 4: plain experiment names


@pytest.mark.parametrize("name", ["", ".", "..", ".hidden", "a/b", "../up", "a\\b", "sp ace", "x" * 101])
def test_experiment_name_must_be_a_plain_name(tmp_path: Path, name: str, capsys) -> None:
    out = tmp_path / "root" / "results"
    path = write_experiment(tmp_path / "e.toml", out, experiment={"name": name})
    assert main(["run", str(path), "--no-progress"]) == 2
    assert "experiment.name" in one_line_error(capsys)
    assert tree(tmp_path / "root") == []  # nothing lands in or beside the results root


def test_a_plain_name_with_dots_inside_is_fine() -> None:
    cfg = parse_config({**TINY, "experiment": {"name": "run-1.v2_b"}})
    assert cfg.results_dir.name == "run-1.v2_b"


# ----------------------------------------------------------------------------- 5: one line, before any work


@pytest.mark.parametrize("changes, key", [
    ({"search": {"init_channels": 100000}}, "search.init_channels"),
    ({"evaluate": {"episodes": 10**9}}, "evaluate.episodes"),
    ({"search": {"cells": [3, 1000]}}, "search.cells"),
    ({"experiment": {"seed": -1}}, "experiment.seed"),
    ({"train": {"drop_path": float("nan")}}, "train.drop_path"),
])
def test_out_of_bounds_settings_are_one_line_before_any_work(tmp_path: Path, changes: dict, key: str,
                                                             capsys) -> None:
    out = tmp_path / "results"
    path = write_experiment(tmp_path / "e.toml", out, **changes)
    assert main(["run", str(path), "--no-progress"]) == 2
    assert key in one_line_error(capsys)
    assert tree(out) == []


def test_a_network_too_big_for_the_machine_is_refused_up_front(tmp_path: Path, capsys) -> None:
    """Inside the bounds, but a 32-cell supernet of width 4096 cannot fit: the estimate says so."""
    out = tmp_path / "results"
    path = write_experiment(tmp_path / "e.toml", out, search={"methods": ["metantk"], "init_channels": 4096,
                                                             "cells": [32]})
    assert main(["run", str(path), "--no-progress"]) == 2
    err = one_line_error(capsys)
    assert "search.init_channels" in err and "GiB" in err
    assert not (out / "tiny" / "state").exists() and not (out / "tiny" / "config.toml").exists()


def test_memory_estimates_cover_the_network_and_the_episode_arrays() -> None:
    from harness.config import ConfigError
    from harness.preflight import check_memory, memory_estimates

    cfg = parse_config({**TINY, "evaluate": {"ways": 5, "shots": [5], "queries": 15, "episodes": 10**6}})
    est = memory_estimates(cfg, in_channels=3, n_classes=6, search=True, train=True)
    episodes = next(v for k, v in est.items() if "evaluate.episodes" in k)
    assert episodes == 10**6 * 5 * 20 * 24  # int64 indices: pick table, index and label tensors
    network = next(v for k, v in est.items() if "trained network" in k)
    assert 0 < network < episodes
    check_memory(est, budget=10 * episodes)  # fits: no error
    with pytest.raises(ConfigError, match="evaluate.episodes.*GiB"):
        check_memory(est, budget=episodes - 1)
    check_memory(est, budget=0)  # unknown machine memory: no check


def test_a_read_only_results_folder_is_one_line(tmp_path: Path, capsys) -> None:
    if os.geteuid() == 0:  # root writes through permission bits: use a read-only file system
        out = Path("/sys/fs/metantk-nas-results")
    else:
        out = tmp_path / "ro"
        out.mkdir()
        out.chmod(0o555)
    path = write_experiment(tmp_path / "e.toml", out)
    try:
        assert main(["run", str(path), "--no-progress"]) == 2
    finally:
        if out.parent == tmp_path:
            out.chmod(0o755)
    err = one_line_error(capsys)
    assert "not writable" in err and "--out" in err


def test_report_on_a_file_says_it_is_a_file(tmp_path: Path, capsys) -> None:
    path = tmp_path / "table.csv"
    path.write_text("a,b\n")
    assert main(["report", str(path)]) == 2
    err = one_line_error(capsys)
    assert "is a file" in err and "does not exist" not in err


# ----------------------------------------------------------------------------- 6: late checks, now early


@pytest.mark.parametrize("changes, expect", [
    ({"train": {"recipe": "synthetik"}}, "train.recipe"),
    ({"dataset": {"options": {"train_classes": 6, "image_per_class": 12}}}, "image_per_class"),
    ({"evaluate": {"shots": [1, 10]}}, "test_000 (12 images)"),   # 10 + 4 queries > 12 per class
    ({"search": {"methods": ["genotype:metanas_in_v3"]}}, "genotype:metanas_in_v3"),
    ({"search": {"methods": ["metantk"], "shots": 8, "queries": 8}}, "train_000 (12 images)"),
])
def test_late_checks_run_before_any_state_is_written(tmp_path: Path, changes: dict, expect: str, capsys) -> None:
    out = tmp_path / "results"
    path = write_experiment(tmp_path / "e.toml", out, **changes)
    assert main(["run", str(path), "--no-progress"]) == 2
    assert expect in one_line_error(capsys)
    # Nothing to poison the corrected rerun: no state, no config, no rows.
    assert [p for p in tree(out / "tiny") if p != ".lock"] == []


def test_a_state_of_another_config_names_a_real_way_out_and_fresh_takes_it(tmp_path: Path, capsys) -> None:
    from harness.pipeline import results_folder
    from harness.search import check_resumable, run_searches

    cfg = parse_config({**TINY, "experiment": {"name": "tiny", "out": str(tmp_path)}})
    run_searches(cfg, None, progress=False)
    rows_before = tree(cfg.results_dir / "searches")
    changed = cfg.replace("search", init_channels=6)
    with pytest.raises(UserError, match="--fresh") as info:
        check_resumable(changed)
    assert "--resume" not in str(info.value)
    config_before = (cfg.results_dir / "state" / "searches.json").read_text()
    # The refusal comes before anything is written (config.toml is not overwritten either).
    with pytest.raises(UserError, match="--fresh"):
        with results_folder(changed, fresh=False, search=True, train=True):
            pass
    assert (cfg.results_dir / "state" / "searches.json").read_text() == config_before
    with results_folder(changed, fresh=True, search=True, train=True):
        check_resumable(changed)
    (previous,) = (cfg.results_dir / "previous").iterdir()
    assert tree(previous / "searches") == rows_before  # moved aside, not deleted
    assert (previous / "state" / "searches.json").read_text() == config_before
    assert not (cfg.results_dir / "state").exists()


def test_an_unreadable_state_file_starts_the_searches_over(tmp_path: Path, capsys) -> None:
    from harness.search import STATE_FILE, run_searches

    cfg = parse_config({**TINY, "experiment": {"name": "tiny", "out": str(tmp_path)}})
    first = run_searches(cfg, None, progress=False)
    (cfg.results_dir / STATE_FILE).write_text('{"config_digest": "x", "sear')
    again = run_searches(cfg, None, resume=True, progress=False)
    assert "unreadable" in capsys.readouterr().err
    assert [r["genotype"] for r in again] == [r["genotype"] for r in first]


def test_a_search_whose_candidate_rows_are_gone_is_not_done(tmp_path: Path) -> None:
    from harness import store
    from harness.search import SearchState, _rounds_on_disk

    state = SearchState("s", "metantk", 0, 3, stage="done", round=2)
    assert not _rounds_on_disk(tmp_path, state)
    for r in (1, 2):
        path = store.table_path(tmp_path, "candidates", f"s-r{r:02d}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    assert _rounds_on_disk(tmp_path, state)
    store.table_path(tmp_path, "candidates", "s-r01").unlink()
    assert not _rounds_on_disk(tmp_path, state)


def test_deleted_or_corrupt_search_rows_are_rewritten(tmp_path: Path) -> None:
    from harness import store
    from harness.search import run_searches

    cfg = parse_config({**TINY, "experiment": {"name": "tiny", "out": str(tmp_path)}})
    first = run_searches(cfg, None, progress=False)
    a, b = (r["search_id"] for r in first)
    store.table_path(cfg.results_dir, "searches", a).unlink()
    corrupt = store.table_path(cfg.results_dir, "searches", b)
    corrupt.write_bytes(corrupt.read_bytes()[:50])
    run_searches(cfg, None, resume=True, progress=False)
    rows = store.read_table(cfg.results_dir, "searches").drop(columns="schema_version")
    # NaN-aware: rows of searches without a kernel hold NaN kernel settings
    assert rows.equals(pd.DataFrame(first)[list(rows.columns)].astype(rows.dtypes))


def test_a_damaged_episode_list_is_set_aside_and_sampled_again(tmp_path: Path, capsys) -> None:
    from harness.trials import ensure_episode_lists
    from trainers.episodes import EpisodeList

    cfg = parse_config({**TINY, "experiment": {"name": "tiny", "out": str(tmp_path)}})
    paths = ensure_episode_lists(cfg)
    original = [EpisodeList.load(p).content_hash() for p in paths]
    paths[0].write_bytes(paths[0].read_bytes()[:-30])
    assert ensure_episode_lists(cfg) == paths
    assert [EpisodeList.load(p).content_hash() for p in paths] == original
    assert "unreadable" in capsys.readouterr().err
    assert len(list((cfg.results_dir / "unreadable" / "episode_lists").iterdir())) == 1


# ----------------------------------------------------------------------------- 7: one run per folder


def test_a_second_command_on_a_folder_in_use_exits_2(tmp_path: Path, capsys) -> None:
    from harness.results_guard import folder_lock

    path = write_experiment(tmp_path / "e.toml", tmp_path / "results")
    with folder_lock(tmp_path / "results" / "tiny"):
        assert main(["run", str(path), "--no-progress"]) == 2
    err = one_line_error(capsys)
    assert "in use by pid" in err and str(os.getpid()) in err


def test_a_dead_process_does_not_hold_the_lock(tmp_path: Path) -> None:
    from harness.results_guard import folder_lock

    folder = tmp_path / "results"
    code = ("import sys, time; sys.path.insert(0, sys.argv[2]); from harness.results_guard import folder_lock\n"
            "with folder_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder), str(REPO)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"in use by pid {proc.pid}"):
            with folder_lock(folder):
                pass
    finally:
        proc.kill()
        proc.wait(timeout=30)
    with folder_lock(folder):  # SIGKILLed holder: the kernel released the lock
        pass


# ----------------------------------------------------------------------------- 3: unreachable cluster


@pytest.mark.parametrize("address, expect", [
    ("127.0.0.1:6379", ("127.0.0.1", 6379)), ("ray://head:10001", ("head", 10001)),
    ("[::1]:6379", ("::1", 6379)), ("auto", None), ("local", None), ("head", None),
])
def test_cluster_address_parsing(address: str, expect) -> None:
    from harness.ray_session import _host_port

    assert _host_port(address) == expect


def test_an_unreachable_address_is_one_line(tmp_path: Path) -> None:
    """`--address 127.0.0.1:1` used to retry for minutes and ignore Ctrl-C; now exit 2."""
    path = write_experiment(tmp_path / "e.toml", tmp_path / "results", search={"methods": ["metantk"]})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(path), "--no-progress",
                           "--address", "127.0.0.1:1"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    err = done.stderr.strip()
    assert len(err.splitlines()) == 1 and "cannot reach a Ray cluster at 127.0.0.1:1" in err
    assert [p for p in tree(tmp_path / "results") if p != "tiny"] == []  # refused before any write


def test_an_address_where_something_else_listens_is_one_line() -> None:
    """A web server (or a silent listener) at the address: refused instead of a long hang."""
    import http.server
    import socket
    import threading

    from harness.ray_session import check_reachable

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(UserError, match="something else listens there"):
            check_reachable(f"127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        with pytest.raises(UserError, match="cannot reach a Ray cluster"):
            check_reachable(f"127.0.0.1:{silent.getsockname()[1]}", timeout=0.5)


@pytest.mark.slow
def test_a_live_ray_address_passes_the_probe(ray_session) -> None:
    from harness.ray_session import check_reachable

    check_reachable(ray_session.get_runtime_context().gcs_address)


def test_evaluate_refuses_episode_arrays_that_cannot_fit(tmp_path: Path, capsys) -> None:
    path = tmp_path / "never-read.pt"
    assert main(["evaluate", "--checkpoint", str(path), "--dataset", "synthetic", "--episodes", str(10**12),
                 "--no-progress"]) == 2
    err = one_line_error(capsys)
    assert "--episodes" in err and "GiB" in err


def test_evaluate_names_the_classes_that_are_too_small(tmp_path: Path, capsys) -> None:
    """Before: "class 0 has 30" (an index within the split); now the class's name."""
    from harness.trials import build_network
    from search_spaces.genotypes import resolve_genotype

    genotype = resolve_genotype("metanas_in_v2").to_str()
    net = build_network(genotype, 4, 5, 3, 3)
    path = tmp_path / "ok.pt"
    torch.save({**_model_payload(), "genotype": genotype, "in_channels": 3, "model": net.state_dict()}, path)
    assert main(["evaluate", "--checkpoint", str(path), "--dataset", "synthetic", "--shots", "20",
                 "--queries", "15", "--episodes", "2", "--no-progress"]) == 2
    err = one_line_error(capsys)
    assert "synthetic/test has class test_000 (30 images)" in err and "--ways/--shots/--queries" in err


# ----------------------------------------------------------------------------- sharing: umask


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_result_files_honour_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    from harness import store
    from tests.harness.test_store import sample_row

    old = os.umask(umask)
    try:
        paths = [store.write_rows(tmp_path, "trials", "t", [sample_row("trials")]),
                 store.write_json_atomic(tmp_path / "state" / "s.json", {"a": 1}),
                 store.write_text_atomic(tmp_path / "config.toml", "x = 1\n"),
                 store.write_bytes_atomic(tmp_path / "plots" / "p.png", b"\x89PNG")]
    finally:
        os.umask(old)
    assert {oct(p.stat().st_mode & 0o777) for p in paths} == {oct(mode)}


# ----------------------------------------------------------------------------- 2: unreadable Parquet files


def test_an_unreadable_file_is_set_aside_and_the_other_rows_kept(tmp_path: Path) -> None:
    from harness import store
    from tests.harness.test_store import sample_row

    good = store.write_rows(tmp_path, "episodes", "a", [sample_row("episodes", 0)])
    bad = store.write_rows(tmp_path, "episodes", "b", [sample_row("episodes", 1)])
    bad.write_bytes(bad.read_bytes()[:-40])
    with pytest.raises(store.SchemaError, match=str(bad)):
        store.read_table(tmp_path, "episodes")
    ((old, new, reason),) = store.set_aside_unreadable(tmp_path)
    assert old == bad and new.is_file() and new.parent == tmp_path / "unreadable" / "episodes"
    assert "not a readable Parquet file" in reason
    assert good.is_file() and list(store.read_table(tmp_path, "episodes")["trial_id"]) == ["trial_id-0"]
    assert store.set_aside_unreadable(tmp_path) == []


# ----------------------------------------------------------------------------- slow: end to end


@pytest.mark.slow
def test_deleted_or_corrupt_rows_are_recomputed_and_the_report_is_complete(tmp_path: Path, ray_session,
                                                                           capsys) -> None:
    """Before: after a deleted `trials/*.parquet`, `run` restored the finished Tune experiment,
    trained nothing, exited 0 and the report lacked the row, on every rerun."""
    from harness import store
    from harness.pipeline import build_report
    from harness.search import run_searches
    from harness.trials import run_trials, trial_specs

    cfg = parse_config({**TINY, "experiment": {"name": "tiny", "seed": 1, "out": str(tmp_path)}})
    specs = trial_specs(cfg, run_searches(cfg, None, progress=False))
    a, b = (s.trial_id for s in specs)
    run_trials(cfg, specs, verbose=0)
    first = store.read_table(cfg.results_dir, "trials").set_index("trial_id")

    def stamp(trial: str) -> tuple[int, int]:
        return tuple(store.table_path(cfg.results_dir, t, trial).stat().st_mtime_ns for t in ("trials", "episodes"))

    # A's trial row deleted: A is trained again, B is left alone.
    kept = stamp(b)
    store.table_path(cfg.results_dir, "trials", a).unlink()
    assert run_trials(cfg, specs, verbose=0) == sorted([a, b])
    assert stamp(b) == kept
    assert "called 1 trial(s) finished that have no rows" in capsys.readouterr().err
    # B's episode rows truncated: set aside (kept, not deleted), B recomputed, A left alone.
    kept = stamp(a)
    episodes = store.table_path(cfg.results_dir, "episodes", b)
    episodes.write_bytes(episodes.read_bytes()[:100])
    assert run_trials(cfg, specs, verbose=0) == sorted([a, b])
    assert stamp(a) == kept
    assert len(list((cfg.results_dir / "unreadable" / "episodes").iterdir())) == 1
    again = store.read_table(cfg.results_dir, "trials").set_index("trial_id")
    # Deterministic trials: the recomputed rows equal the first ones.
    cols = ["genotype", "params", "acc_1shot", "acc_5shot", "final_loss"]
    assert again.loc[[a, b], cols].equals(first.loc[[a, b], cols])
    assert len(store.read_table(cfg.results_dir, "episodes")) == 2 * 2 * 6
    report = build_report(cfg.results_dir, n_boot=10, seed=0).markdown
    assert "metanas" in report and "random" in report


def _python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, text=True, **kwargs)


@pytest.mark.slow
def test_ctrl_c_during_training_ends_the_command(tmp_path: Path) -> None:
    """Before: Tune caught the SIGINT, returned as if finished, and the command carried on."""
    path = write_experiment(tmp_path / "e.toml", tmp_path / "results", train={"epochs": 400})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(path), "--no-progress", "--num-cpus", "2"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    tune_dir = tmp_path / "results" / "tiny" / "tune"
    try:
        deadline = time.monotonic() + 240
        while not any(tune_dir.glob("*/run_trial*/checkpoint_*")) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.5)
        assert any(tune_dir.glob("*/run_trial*/checkpoint_*")), "training never started"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == 130, err[-2000:]
    assert "metantk-nas run: interrupted" in err
    assert not (tmp_path / "results" / "tiny" / "trials").exists()  # no trial pretended to finish


@pytest.mark.slow
def test_a_sigkilled_driver_leaves_no_ray_agents(tmp_path: Path) -> None:
    """Before: the raylet's dashboard and runtime-env agents outlived a SIGKILLed driver by minutes."""
    from harness.ray_reaper import descendants, looks_like_ray, parent_map, start_time

    code = ("import os, time\nfrom harness.ray_session import ensure_ray\nensure_ray('', 1, object_store_mb=80)\n"
            "print('ready', flush=True)\ntime.sleep(300)\n")
    proc = _python(code, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 30
        agents: dict[int, str | None] = {}
        while time.monotonic() < deadline:  # the raylet starts its agents right after init
            agents = {p: start_time(p) for p in descendants(proc.pid, parent_map()) if looks_like_ray(p)}
            if any(b"Agent" in Path(f"/proc/{p}/cmdline").read_bytes() for p in agents if start_time(p)):
                break
            time.sleep(0.5)
        assert agents, "no Ray processes under the driver"
        time.sleep(2)  # the watcher polls every second
    finally:
        proc.kill()
        proc.wait(timeout=30)
    deadline = time.monotonic() + 45
    alive = list(agents)
    while alive and time.monotonic() < deadline:
        alive = [p for p, started in agents.items() if started is not None and start_time(p) == started]
        time.sleep(0.5)
    assert alive == [], [Path(f"/proc/{p}/cmdline").read_bytes()[:60] for p in alive]
