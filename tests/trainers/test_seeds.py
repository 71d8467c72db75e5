"""The one seed-derivation scheme (trainers.seeds) reproduces the seeds every stream drew
before the schemes were merged: integer keys as NumPy's SeedSequence (training, support
augmentation), labelled keys as SHA-256 of their repr (search, proxy study, trial init)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trainers.seeds import derive_seed, episode_list_seed, generator, theory_seed

# Values computed with the schemes before the merge (harness.scoring.derive_seed and
# trainers.rfs.derive_seed at fdfac33).
LABELLED = [
    ((0, "smoke-metantk-s0-c5", 3, 1, "kernel-weights"), 3634036921064921135),
    ((7, "random-s7-c8", "random-genotype"), 8313948484064007731),
    ((3, "s-t3", "train-init"), 5971228782650073186),
    ((0, "proxy-study", 2, "proxy", "jacov"), 4874917920129972421),
]
STREAMS = [((0, 3, 1), 4245091184500617293), ((42, 0, 2), 4388966263742567921), ((5, 17), 8275466211578941011)]


@pytest.mark.parametrize("key,seed", LABELLED + STREAMS)
def test_derived_seeds_are_the_old_ones(key: tuple, seed: int) -> None:
    assert derive_seed(*key) == seed


def test_numpy_integers_are_integers_and_bools_are_labels() -> None:
    assert derive_seed(np.int64(5), np.int32(17)) == derive_seed(5, 17)
    assert derive_seed(True, 1) != derive_seed(1, 1)


def test_negative_integers_take_the_hashed_encoding() -> None:
    # SeedSequence refuses negative entropy; such a key is hashed instead of failing.
    assert 0 <= derive_seed(-1, 2) < 2**63


def test_generator_is_seeded_by_the_key() -> None:
    a = torch.rand(3, generator=generator(1, "x"))
    b = torch.rand(3, generator=torch.Generator().manual_seed(derive_seed(1, "x")))
    assert torch.equal(a, b)
    assert not torch.equal(a, torch.rand(3, generator=generator(1, "y")))


def test_fixed_mappings_keep_their_stored_values() -> None:
    assert episode_list_seed(3, 5) == 3005
    assert theory_seed(0, 64, 2) == 7919055497103141


def test_training_streams_use_the_one_scheme() -> None:
    from trainers import rfs

    assert torch.equal(torch.rand(4, generator=rfs._generator(2, 1, 0)), torch.rand(4, generator=generator(2, 1, 0)))
