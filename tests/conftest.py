"""Shared fixtures: tiny sweeps that train in well under a second, and tiny Hugging Face
models (BERT-like and GPT-2-like) with tokenizers trained on the fly: no test needs the network."""

from __future__ import annotations

import copy
import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

# No test may reach the Hugging Face hub: a hub id must fail as it would offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The matmul peak cached across processes (engine/peak_cache.py): the suite's own, not the user's.
os.environ.setdefault("TRAINLAB_CACHE_DIR", tempfile.mkdtemp(prefix="trainlab-test-cache-"))

TINY: dict[str, Any] = {
    "name": "tiny",
    "data": {"name": "synthetic", "n_samples": 256, "shape": [8], "n_classes": 3,
             "batch_size": 32},
    "model": {"name": "mlp", "hidden_dim": 16},
    "optimizer": {"name": "adam", "lr": 0.01},
    "train": {"epochs": 2, "log_every": 3},
}


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def tiny() -> dict[str, Any]:
    """A fresh copy of a tiny sweep document (edit it freely)."""
    return copy.deepcopy(TINY)


@pytest.fixture
def write_config(tmp_path: Path):
    """Write a sweep document to a YAML file and return its path."""

    def write(doc: dict[str, Any] | str, name: str = "sweep.yaml") -> Path:
        path = tmp_path / name
        path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
        return path

    return write


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


def store_content(store: Path) -> str:
    """A store's content as SQL (not its file bytes: SQLite may checkpoint its WAL on close).

    Read-only, so reading it never checkpoints the WAL itself.
    """
    conn = sqlite3.connect(f"file:{store / 'trainlab.db'}?mode=ro", uri=True)
    try:
        return "\n".join(conn.iterdump())
    finally:
        conn.close()


POSITIVE = ["good", "great", "happy", "love", "nice", "fine", "superb", "joy", "wonderful",
            "pleasant", "brilliant", "delight"]
NEGATIVE = ["bad", "awful", "sad", "hate", "poor", "ugly", "terrible", "pain", "horrible",
            "nasty", "boring", "grim"]


def sentiment_rows(n: int, seed: int = 0) -> dict[str, list[Any]]:
    """``n`` short sentences labelled 1 (positive word) or 0 (negative word)."""
    import random

    rng = random.Random(seed)
    rows: dict[str, list[Any]] = {"sentence": [], "label": []}
    for i in range(n):
        label = i % 2
        word = rng.choice(POSITIVE if label else NEGATIVE)
        rows["sentence"].append(f"the movie was {word}")
        rows["label"].append(label)
    return rows


def _corpus() -> list[str]:
    rows = sentiment_rows(200)["sentence"]
    return [*rows, " ".join(POSITIVE), " ".join(NEGATIVE), "a very not so the and of"]


def _bert_tokenizer() -> Any:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(_corpus(), trainers.WordPieceTrainer(vocab_size=200,
                                                                 special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def _gpt2_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    # Like GPT-2: an end-of-text token and no pad token (trainlab pads with end-of-text).
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   bos_token="<|endoftext|>", unk_token="<|endoftext|>")


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Directories of a tiny BERT and a tiny GPT-2 (random weights, own tokenizers), saved with
    save_pretrained so they load through the same code as a hub model."""
    pytest.importorskip("transformers")
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("tiny-hf")
    torch.manual_seed(0)
    bert_tok = _bert_tokenizer()
    bert = BertModel(BertConfig(vocab_size=len(bert_tok), hidden_size=16, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=32,
                                max_position_embeddings=32, pad_token_id=0))
    bert.save_pretrained(root / "bert")
    bert_tok.save_pretrained(root / "bert")
    gpt_tok = _gpt2_tokenizer()
    gpt = GPT2LMHeadModel(GPT2Config(vocab_size=len(gpt_tok), n_positions=32, n_embd=16,
                                     n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0))
    gpt.save_pretrained(root / "gpt2")
    gpt_tok.save_pretrained(root / "gpt2")
    return {"bert": str(root / "bert"), "gpt2": str(root / "gpt2")}


@pytest.fixture(scope="session")
def sentiment_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A GLUE-like DatasetDict on disk: train, validation, and a test split without labels."""
    datasets = pytest.importorskip("datasets")
    root = tmp_path_factory.mktemp("sentiment")
    test = sentiment_rows(40, seed=2)
    test["label"] = [-1] * len(test["label"])
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    test_features = datasets.Features({"sentence": datasets.Value("string"),
                                       "label": datasets.Value("int64")})
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict(sentiment_rows(240, seed=0), features=features),
        "validation": datasets.Dataset.from_dict(sentiment_rows(60, seed=1), features=features),
        "test": datasets.Dataset.from_dict(test, features=test_features),
    })
    dd.save_to_disk(str(root / "glue-like"))
    return str(root / "glue-like")
