"""`metantk-nas verify-kernels` and `verify-theory`, run in-process with tiny settings."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

import trainers.theory as theory
from harness.cli import main


def test_verify_kernels_tiny_run_writes_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["verify-kernels", "--widths", "16,512", "--repeats", "2", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "| width | ntk_err | meta_err |" in out and "(a) NTK error shrinks" in out
    for name in ("kernels.csv", "kernels.md", "kernel_errors.png"):
        assert (tmp_path / name).stat().st_size > 0
    rows = list(csv.DictReader((tmp_path / "kernels.csv").open()))
    assert [int(r["width"]) for r in rows] == [16, 512]
    for r in rows:
        assert all(math.isfinite(float(r[k])) for k in ("ntk_err", "meta_err", "meta_analytic_err"))
    assert float(rows[1]["ntk_err"]) < float(rows[0]["ntk_err"])
    assert float(rows[1]["meta_err"]) < float(rows[0]["meta_err"])


@pytest.mark.slow
def test_verify_theory_quick_writes_table_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["verify-theory", "--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "| width | err_analytic |" in out and "shrinks with width" in out
    for name in ("theory.csv", "theory.md", "losses.csv", "predictions.csv", "loss.png",
                 "prediction_error.png", "prediction_scatter.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    rows = list(csv.DictReader((tmp_path / "theory.csv").open()))
    assert [int(r["width"]) for r in rows] == [64, 512]
    # Theorem 1: MAML's loss falls (linear rate: negative slope of log loss).
    assert all(float(r["loss_ratio"]) < 1e-2 and float(r["log_rate"]) < 0 for r in rows)
    losses = list(csv.DictReader((tmp_path / "losses.csv").open()))
    assert len(losses) == 2 * 21  # 20 quick outer steps + the initial loss, per width


def test_verify_kernels_exit_status_1_when_errors_do_not_shrink(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def fake(config: theory.KernelCheckConfig, **_: object) -> theory.KernelCheckResult:
        rows = [{"width": w, **{f"{k}{s}": e for k in ("ntk_err", "meta_err", "meta_analytic_err")
                               for s in ("", "_max")}} for w, e in zip(config.widths, (0.1, 0.2))]
        return theory.KernelCheckResult(rows=rows, inner_lr=0.1, ntk_shrinks=False, meta_shrinks=False,
                                        config=config)

    monkeypatch.setattr(theory, "check_kernels", fake)
    assert main(["verify-kernels", "--widths", "8,16"]) == 1
    assert "DOES NOT SHRINK" in capsys.readouterr().out


def test_verify_theory_exit_status_1_when_error_does_not_shrink(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = theory.check_theory

    def worse(config: theory.TheoryConfig, **_: object) -> theory.TheoryResult:
        result = real(config)
        result.rows[-1]["err_analytic"] = 10 * result.rows[0]["err_analytic"]
        result.error_shrinks = theory.shrinks([r["err_analytic"] for r in result.rows])
        return result

    monkeypatch.setattr(theory, "check_theory", worse)
    assert main(["verify-theory", "--quick", "--widths", "8,16", "--steps", "3", "--out", str(tmp_path)]) == 1


@pytest.mark.parametrize("argv,match", [
    (["verify-kernels", "--widths", "256"], "widths"),
    (["verify-kernels", "--widths", "512,256"], "increasing"),
    (["verify-kernels", "--widths", "a,b"], "comma-separated"),
    (["verify-kernels", "--widths", "8,16", "--repeats", "0"], "repeats"),
    (["verify-theory", "--widths", "8,16", "--steps", "-1"], "outer_steps"),
    (["verify-theory", "--widths", "8,16", "--threads", "0"], "threads"),
])
def test_bad_arguments_exit_2_with_a_message(argv: list[str], match: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv + (["--out", str(tmp_path)] if argv[0] == "verify-theory" else [])) == 2
    assert match in capsys.readouterr().err


def test_shrinks() -> None:
    assert theory.shrinks([0.3, 0.5, 0.1])
    assert not theory.shrinks([0.1, 0.05, 0.2])
    assert not theory.shrinks([float("nan"), 0.1])
    assert not theory.shrinks([0.1, 0.1])
