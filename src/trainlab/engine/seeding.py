"""numpy's ``SeedSequence(words).generate_state(1)[0]`` in plain Python, for the seeds the
loop derives at every epoch (the data order's, a DataLoader's workers').

numpy builds the sequence's pool and state arrays for one 32-bit word (~12 us a call on an
idle core, ~76 us measured inside a busy epoch); the same arithmetic on Python ints, with the
hash multipliers precomputed and what all words but the second (the epoch) make of the pool
kept per run, is ~8 us (measured 8.2 against 14.6, alternating, load 2.6).  Only entropy of
two to four words, each a 32-bit unsigned int, takes this path; anything else is numpy's.
The value is numpy's, bit for bit (tests compare them over many seeds): the data order of
runs made with either must not change.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# numpy/random/bit_generator.pyx (Melissa O'Neill's seed_seq_fe): the constants of the hash.
_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R = 0xCA01F9DD, 0x4973F715
_MASK, _POOL = 0xFFFFFFFF, 4


def _hash_constants(count: int) -> list[int]:
    """The multiplier each of the pool's hashmix calls uses, in call order (the hash constant
    evolves the same way whatever the data)."""
    out, const = [], _INIT_A
    for _ in range(count):
        const = (const * _MULT_A) & _MASK
        out.append(const)
    return out


# The pool's fill (4 calls) and its mixing (12), in numpy's order.
_CONSTS = _hash_constants(_POOL + _POOL * (_POOL - 1))
_XOR = [_INIT_A, *_CONSTS[:-1]]  # each call's input is xored with the constant before it
_STATE_MULT = (_INIT_B * _MULT_B) & _MASK


def _hash(value: int, call: int) -> int:
    """numpy's ``hashmix`` at its ``call``-th call (0-based) of the pool's mixing."""
    v = ((value ^ _XOR[call]) * _CONSTS[call]) & _MASK
    return v ^ (v >> 16)


def _mix(x: int, y: int) -> int:
    r = (_MIX_L * x - _MIX_R * y) & _MASK
    return r ^ (r >> 16)


# What the words but the second (the epoch, in the loop's seeds) make of the pool: the first
# word's hash into the second's slot, and the third and fourth slots after the first word's
# mixing round (hash calls 0, 2, 3 and 4-6).  The same for every epoch of a run.
_PREFIX: dict[tuple[int, ...], tuple[int, int, int, int]] = {}


def _prefix(key: tuple[int, ...]) -> tuple[int, int, int, int]:
    first, third, fourth = key
    m0, m2, m3 = _hash(first, 0), _hash(third, 2), _hash(fourth, 3)
    if len(_PREFIX) >= 256:
        _PREFIX.clear()
    out = _PREFIX[key] = (m0, _hash(m0, 4), _mix(m2, _hash(m0, 5)), _mix(m3, _hash(m0, 6)))
    return out


def seed_word(words: Sequence[int]) -> int:
    """``int(np.random.SeedSequence(list(words)).generate_state(1)[0])``."""
    n = len(words)
    if not 2 <= n <= _POOL or any(type(w) is not int or not 0 <= w <= _MASK for w in words):
        return int(np.random.SeedSequence(list(words)).generate_state(1)[0])
    # SeedSequence turns 0 into one word [0] too, so the entropy is the words as given.
    key = (words[0], words[2] if n > 2 else 0, words[3] if n > 3 else 0)
    m0, h0, m2, m3 = _PREFIX.get(key) or _prefix(key)
    m1 = _mix(_hash(words[1], 1), h0)
    # The other words' rounds (hash calls 7-15); the last round's two mixes into slots 1
    # and 2 (calls 14, 15) change nothing the one word drawn reads.
    h = _hash(m1, 7)
    m0, m2, m3 = _mix(m0, h), _mix(m2, _hash(m1, 8)), _mix(m3, _hash(m1, 9))
    m0, m1, m3 = _mix(m0, _hash(m2, 10)), _mix(m1, _hash(m2, 11)), _mix(m3, _hash(m2, 12))
    m0 = _mix(m0, _hash(m3, 13))
    v = ((m0 ^ _INIT_B) * _STATE_MULT) & _MASK
    return v ^ (v >> 16)


__all__ = ["seed_word"]
