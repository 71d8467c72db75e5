"""Search-space tests run tiny tensors: one intra-op thread is much faster than several
threads spinning on a shared 2-core CI box (measured 0.02 s vs ~1 s per forward/backward)."""
from __future__ import annotations

from typing import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _single_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
