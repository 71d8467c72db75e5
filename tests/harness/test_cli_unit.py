"""Fast tests of the command line: every command parses and reaches its handler, which
calls the pipeline; failures injected with monkeypatch become one line and exit status 2."""
from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import pytest

from harness import cli, pipeline
from harness.errors import ConfigError, UserError


def _handlers() -> dict[str, str]:
    """command -> handler function name, for every (sub)command of the parser."""
    found = {}
    for parser in cli._subparsers(cli.build_parser()):
        func = parser.get_default("func")
        if func is not None:
            found[parser.prog.removeprefix("metantk-nas ")] = func.__name__
    return found


def test_every_handler_is_named_after_its_command() -> None:
    handlers = _handlers()
    assert {"search", "run", "train", "evaluate", "report", "genotypes", "render", "data list",
            "verify-kernels", "verify-theory"} <= set(handlers)
    for command, name in handlers.items():
        assert name == "cmd_" + command.replace("-", "_").replace(" ", "_"), command


def test_each_command_module_registers_what_its_name_says() -> None:
    for module in cli.COMMAND_MODULES:
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module).register(sub)
        name = module.removeprefix("harness.cmd_")
        assert any(c.replace("-", "_").startswith(name) or name in c.replace("-", "_") for c in sub.choices), module


@pytest.fixture()
def no_folder(monkeypatch: pytest.MonkeyPatch) -> list:
    """`results_folder` without the checks, the lock and the files (a recorder instead)."""
    import contextlib

    entered: list = []

    @contextlib.contextmanager
    def folder(cfg, **kw):
        entered.append(kw)
        yield

    monkeypatch.setattr(pipeline, "results_folder", folder)
    return entered


def test_run_calls_the_pipeline_inside_the_results_folder(repo_root: Path, no_folder: list, capsys,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    class Files:
        markdown = "# tables"

        def summary(self) -> list[str]:
            return ["report.md"]

    seen = []
    monkeypatch.setattr(pipeline, "run_experiment",
                        lambda cfg, progress, stream: seen.append((cfg, progress, stream)) or Files())
    smoke = repo_root / "experiments" / "smoke.toml"
    assert cli.main(["run", str(smoke), "--no-progress", "--set", "search.seeds=[3]", "--fresh"]) == 0
    (cfg, progress, stream), = seen
    assert cfg.search.seeds == (3,) and progress is False and stream is True
    assert no_folder == [{"fresh": True, "search": True, "train": True}]
    assert "# tables" in capsys.readouterr().out
    # --in-sequence: the trainings start after the last search (no streaming)
    assert cli.main(["run", str(smoke), "--no-progress", "--in-sequence"]) == 0
    assert seen[-1][2] is False


@pytest.mark.parametrize("error, status", [(UserError("results folder is locked"), 2),
                                           (ConfigError("search.ways must be >= 2"), 2),
                                           (KeyboardInterrupt(), 130)])
def test_a_failure_is_one_line_and_a_status(repo_root: Path, no_folder: list, capsys, error: BaseException,
                                            status: int, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(pipeline, "search_stage", fail)
    assert cli.main(["search", str(repo_root / "experiments" / "smoke.toml")]) == status
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("metantk-nas search: ")
    assert "Traceback" not in err


def test_debug_shows_the_traceback(repo_root: Path, no_folder: list, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise UserError("boom")

    monkeypatch.setattr(pipeline, "search_stage", fail)
    with pytest.raises(UserError, match="boom"):
        cli.main(["search", str(repo_root / "experiments" / "smoke.toml"), "--debug"])


def test_a_bad_experiment_file_fails_before_the_pipeline(tmp_path: Path, no_folder: list, capsys) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[experiment]\nname = "x"\n[search]\nways = 1\n')
    assert cli.main(["run", str(bad)]) == 2
    assert "search.ways" in capsys.readouterr().err and no_folder == []
