"""The project's one seed-derivation scheme: a key (a tuple of ids) -> a 63-bit seed.

Every random draw of a search, a proxy study, a training and an evaluation comes from a
`torch.Generator` (or NumPy generator) seeded by `derive_seed(*key)`, never from global
state, so a result is a pure function of its key: the same on any worker, in any order, after
any retry. docs/seeds.md lists which draw uses which key.

A key is encoded one of two ways, chosen by its parts (so each existing stream keeps its
draws; changing either encoding would redraw every stored score or accuracy):

- only non-negative integers, e.g. (training seed, epoch, stream) or (seed, episode): NumPy's
  `SeedSequence(key)`, the first 64-bit word of its state (well mixed, stable across
  platforms and NumPy versions);
- anything else, i.e. a key with a label, e.g. (experiment seed, search id, round, repeat,
  "kernel-weights"): SHA-256 of `repr(key)`, the first 8 bytes little-endian (stable across
  processes, unlike `hash`).

Two mappings are NOT keys of `derive_seed`, kept because they fix stored artefacts:
`episode_list_seed` (the seed a stored episode list was sampled with; it is part of every
accuracy ever measured) and `theory_seed` (the theory checks' figures in docs/).
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

__all__ = ["SEED_BITS", "derive_seed", "generator", "episode_list_seed", "theory_seed"]

SEED_BITS = 63
_MASK = (1 << SEED_BITS) - 1


def _is_stream_key(parts: tuple[Any, ...]) -> bool:
    """True for a key of non-negative integers (Python or NumPy; a bool is a label)."""
    return bool(parts) and all(isinstance(p, (int, np.integer)) and not isinstance(p, bool) and p >= 0
                               for p in parts)


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed of the key `parts` (module doc: integer keys via SeedSequence, labelled
    keys via SHA-256 of their repr)."""
    if _is_stream_key(parts):
        state = np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0]
        return int(state) & _MASK
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & _MASK


def generator(*parts: Any) -> torch.Generator:
    """A CPU `torch.Generator` seeded by `derive_seed(*parts)`."""
    return torch.Generator().manual_seed(derive_seed(*parts))


def episode_list_seed(experiment_seed: int, shots: int) -> int:
    """Seed of the stored evaluation episodes of `shots` shots (`trainers.episodes.sample_episodes`):
    `experiment_seed * 1000 + shots`, as every stored list was sampled (not a `derive_seed` key:
    a new mapping would redraw the episodes behind every accuracy)."""
    return experiment_seed * 1000 + shots


def theory_seed(*ids: int) -> int:
    """Seed of a theory-check draw from (seed, width, repeat, ...): a polynomial mix of the ids
    modulo 2**63 - 1 (kept for the figures in docs/ that were drawn with it)."""
    mixed = 0
    for i in ids:
        mixed = (mixed * 1_000_003 + int(i) + 7919) % (2**63 - 1)
    return mixed
