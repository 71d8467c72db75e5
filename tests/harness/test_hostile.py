"""Hostile and careless input: data files never run code, refusals are one line.

Each test here reproduces a way a careless or hostile user broke the harness and pins the
behaviour that replaced it.
"""
from __future__ import annotations

import os
from pathlib import Path

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
