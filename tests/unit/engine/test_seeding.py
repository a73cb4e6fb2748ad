"""engine/seeding.seed_word is numpy's SeedSequence word bit for bit: the data order and the
DataLoader seeds of every epoch stay what they were (runs resume across versions)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from trainlab.engine.loop import _loader_seed, epoch_permutation
from trainlab.engine.seeding import seed_word


def _numpy(words: list[int]) -> int:
    return int(np.random.SeedSequence(words).generate_state(1)[0])


def test_seed_word_is_numpys_over_many_entropies() -> None:
    rng = random.Random(0)
    top = 2**32 - 1
    cases: list[list[int]] = [[], [0], [0, 0], [0, 1], [1, 0], [top, top], [1, 2, 3],
                              [1, 2, 3, 4], [top, 0, top, 0]]
    cases += [[rng.randrange(100), e] for e in range(200)]
    cases += [[rng.randrange(2**32), rng.randrange(1000)] for _ in range(5000)]
    cases += [[rng.randrange(2**32), rng.randrange(2**32), 1] for _ in range(2000)]
    for words in cases:
        assert seed_word(tuple(words)) == seed_word(words) == _numpy(words), words


@pytest.mark.parametrize("words", [[2**32], [2**40 + 5, 3], [1, 2, 3, 4, 5], [np.int64(7), 1],
                                   [True, 1]])
def test_what_the_fast_path_does_not_take_is_numpys(words: list[int]) -> None:
    assert seed_word(words) == _numpy(words)


def test_epoch_order_and_loader_seed_are_the_old_ones() -> None:
    for seed in (0, 1, 9, 1234, 2**31 + 7, 2**33 + 1):
        for epoch in (1, 2, 40, 10_000):
            old_seed = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
            old = torch.randperm(300, generator=torch.Generator().manual_seed(old_seed))
            assert torch.equal(epoch_permutation(300, seed, epoch), old)
            assert _loader_seed(seed, epoch) == _numpy([seed, epoch, 1])
