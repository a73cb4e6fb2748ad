"""A word-level corpus from the documentation CPython ships (pydoc_data), as plain Python.

`splits(seq_len)` returns {"train": (inputs, targets), "valid": ..., "test": ...}: pairs of
token-id tensors [N, seq_len], targets shifted by one word.  trainlab calls it from
`own-code.yaml` (data.name: python, task: lm); data.args.seq_len is sweepable.
"""

import random
import re
from collections import Counter
from pydoc_data.topics import topics

import torch


def _paragraphs():
    words = re.compile(r"[a-z]+|[0-9]+|[^\sa-z0-9]")
    for key in sorted(topics):
        for paragraph in re.split(r"\n\s*\n", topics[key]):
            tokens = words.findall(paragraph.lower())
            if tokens:
                yield [*tokens, "<eos>"]


def _windows(ids, seq_len):
    n = (len(ids) - 1) // seq_len
    x = torch.tensor(ids[: n * seq_len]).view(n, seq_len)
    y = torch.tensor(ids[1 : n * seq_len + 1]).view(n, seq_len)
    return x, y


def splits(seq_len=32, min_freq=2, seed=0):
    paragraphs = list(_paragraphs())
    random.Random(seed).shuffle(paragraphs)
    n_valid = n_test = len(paragraphs) // 20
    parts = {"valid": paragraphs[:n_valid], "test": paragraphs[n_valid : n_valid + n_test],
             "train": paragraphs[n_valid + n_test :]}
    counts = Counter(w for p in parts["train"] for w in p)
    vocab = ["<unk>", *sorted(w for w, c in counts.items() if c >= min_freq)]
    index = {w: i for i, w in enumerate(vocab)}
    return {name: _windows([index.get(w, 0) for p in part for w in p], seq_len)
            for name, part in parts.items()}
