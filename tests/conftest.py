"""Shared fixtures: repository paths, the real Omniglot data, one Ray session for all tests."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OMNIGLOT = REPO.parent / "shared" / "data" / "omniglot"


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tests use tiny tensors: one thread avoids oversubscribing the 2 CI cores shared with Ray actors."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def omniglot_root() -> Path:
    if not (OMNIGLOT / "background").is_dir():
        pytest.skip(f"real Omniglot not found at {OMNIGLOT} (the shared data folder beside the repository)")
    return OMNIGLOT


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (ray.init costs 4-8 s and ~0.7 GiB)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024 * 1024,
                 log_to_driver=False)
    yield ray
    ray.shutdown()
