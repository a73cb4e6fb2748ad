"""Local stand-ins for the hub data and models of the shipped studies, in the hub's formats.

Each dataset is written as its Hugging Face hub repository is laid out: a README.md whose YAML
header names the configs and their parquet files (``sst2/train-00000-of-00001.parquet``), and
parquet files that carry the ``datasets`` features (ClassLabel names, Image columns).  So
``data.path: <folder>`` with the study's own ``data.config`` loads through the same
``datasets.load_dataset`` call as the hub id does, and what the study sees is what the hub
serves: GLUE's test labels are -1, WikiText has empty lines and `` = Heading = `` lines,
CIFAR-10's image column is ``img``, GPT-2 has no pad token.  The models are tiny BERT and GPT-2
saved with ``save_pretrained``, with tokenizers trained here.  Everything is built at a tiny
size, in seconds, with no network: tests (tests/integration/test_studies.py) and the tutorial
generator (``python -m docs.gen_tutorials``) run the shipped study configs on them.

:func:`relocate` rewrites a study's sweep document to use them: every hub id becomes the local
folder, and ``sizes`` (dotted keys, as ``--set`` takes) shrink it.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import yaml

# Hub id -> the stand-in that replaces it (a key of build_standins' result).
HUB_IDS = {
    "nyu-mll/glue": "glue",
    "Salesforce/wikitext": "wikitext",
    "zalando-datasets/fashion_mnist": "fashion_mnist",
    "uoft-cs/cifar10": "cifar10",
    "ylecun/mnist": "mnist",
    "fancyzhx/ag_news": "ag_news",
    "google-bert/bert-base-uncased": "bert",
    "openai-community/gpt2": "gpt2",
}

POSITIVE = ["good", "great", "happy", "love", "nice", "superb", "joy", "wonderful", "brilliant"]
NEGATIVE = ["bad", "awful", "sad", "hate", "poor", "ugly", "terrible", "horrible", "boring"]
TOPICS = {  # AG News' four classes, each with words of its own
    "World": ["minister", "election", "border", "treaty", "embassy", "rebels"],
    "Sports": ["match", "coach", "season", "goal", "league", "striker"],
    "Business": ["shares", "profit", "market", "merger", "earnings", "bank"],
    "Sci/Tech": ["software", "chip", "internet", "space", "research", "phone"],
}
FILLER = ["the", "a", "of", "on", "in", "and", "to", "was", "is", "new", "after", "for"]


def _write_repo(root: Path, configs: dict[str, dict[str, Any]]) -> str:
    """A hub-style dataset repository: ``{config: {split: Dataset}}`` as parquet files, one
    folder per config, and the README.md header that maps configs and splits to them."""
    entries = []
    for config, splits in configs.items():
        files = []
        for split, ds in splits.items():
            rel = f"{config}/{split}-00000-of-00001.parquet"
            (root / config).mkdir(parents=True, exist_ok=True)
            ds.to_parquet(str(root / rel))
            files.append({"split": split, "path": rel})
        entries.append({"config_name": config, "data_files": files})
    header = yaml.safe_dump({"configs": entries}, sort_keys=False)
    (root / "README.md").write_text(f"---\n{header}---\n# stand-in (tests/standins.py)\n")
    return str(root)


def _sentences(n: int, rng: random.Random, words: tuple[list[str], list[str]]
               ) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        word = rng.choice(words[label])
        texts.append(f"{rng.choice(FILLER)} movie was {word} {rng.choice(FILLER)} fun")
        labels.append(label)
    return texts, labels


def _cola(n: int, rng: random.Random) -> tuple[list[str], list[int]]:
    """Acceptable sentences (label 1) and the same words scrambled (label 0)."""
    texts, labels = [], []
    for i in range(n):
        words = ["the", rng.choice(["cat", "dog", "girl", "man"]), rng.choice(["saw", "liked"]),
                 "the", rng.choice(["ball", "house", "book"])]
        if i % 2 == 0:
            words = [words[4], words[0], words[2], words[1], words[3]]
        texts.append(" ".join(words) + ".")
        labels.append(i % 2)
    return texts, labels


def build_glue(root: Path, n: int = 240) -> str:
    """GLUE's sst2 and cola configs: sentence, label (ClassLabel), idx; test labels -1."""
    import datasets

    rng = random.Random(0)
    configs: dict[str, dict[str, Any]] = {}
    for config, names, make in (
            ("sst2", ["negative", "positive"], lambda k: _sentences(k, rng, (NEGATIVE, POSITIVE))),
            ("cola", ["unacceptable", "acceptable"], lambda k: _cola(k, rng))):
        features = datasets.Features({"sentence": datasets.Value("string"),
                                      "label": datasets.ClassLabel(names=names),
                                      "idx": datasets.Value("int32")})
        splits = {}
        for split, size in (("train", n), ("validation", n // 4), ("test", n // 4)):
            texts, labels = make(size)
            if split == "test":
                labels = [-1] * size  # GLUE hides its test labels
            splits[split] = datasets.Dataset.from_dict(
                {"sentence": texts, "label": labels, "idx": list(range(size))},
                features=features)
        configs[config] = splits
    return _write_repo(root, configs)


def build_wikitext(root: Path, articles: int = 12) -> str:
    """wikitext-2-raw-v1: one ``text`` column of lines, with empty lines, `` = Title = `` and
    `` = = Section = = `` headings, as the hub serves them."""
    import datasets

    rng = random.Random(1)
    vocab = [w for words in TOPICS.values() for w in words] + FILLER + POSITIVE
    splits = {}
    for split, count in (("train", articles), ("validation", 3), ("test", 3)):
        lines: list[str] = [""]
        for a in range(count):
            lines += [f" = Article {split} {a} = \n", ""]
            for s in range(2):
                lines += [f" = = Section {s} = = \n", ""]
                for _ in range(3):
                    words = [rng.choice(vocab) for _ in range(rng.randint(20, 40))]
                    lines.append(" " + " ".join(words) + " . \n")
                lines.append("")
        splits[split] = datasets.Dataset.from_dict(
            {"text": lines}, features=datasets.Features({"text": datasets.Value("string")}))
    return _write_repo(root, {"wikitext-2-raw-v1": splits})


def _images(n: int, shape: tuple[int, ...], classes: int, rng: Any) -> tuple[list[Any], list[int]]:
    """Noisy images whose class is a bright band at a class-dependent row."""
    import numpy as np
    from PIL import Image

    images, labels = [], []
    height = shape[0]
    for i in range(n):
        label = i % classes
        pixels = rng.integers(0, 80, size=shape).astype(np.uint8)
        row = label * (height - 3) // max(classes - 1, 1)
        pixels[row:row + 3] = 230
        images.append(Image.fromarray(pixels, "RGB" if len(shape) == 3 else "L"))
        labels.append(label)
    return images, labels


def build_images(root: Path, which: str, n: int = 200) -> str:
    """MNIST (``image``, 28x28 L), Fashion-MNIST (``image``) or CIFAR-10 (``img``, 32x32 RGB),
    each with train and test splits and ClassLabel labels."""
    import datasets
    import numpy as np

    column, shape, names, config = {
        "mnist": ("image", (28, 28), [str(d) for d in range(10)], "mnist"),
        "fashion_mnist": ("image", (28, 28), ["T - shirt / top", "Trouser", "Pullover", "Dress",
                                              "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                                              "Ankle boot"], "fashion_mnist"),
        "cifar10": ("img", (32, 32, 3), ["airplane", "automobile", "bird", "cat", "deer", "dog",
                                         "frog", "horse", "ship", "truck"], "plain_text"),
    }[which]
    rng = np.random.default_rng(2)
    features = datasets.Features({column: datasets.Image(),
                                  "label": datasets.ClassLabel(names=names)})
    splits = {}
    for split, size in (("train", n), ("test", n // 4)):
        images, labels = _images(size, shape, len(names), rng)
        splits[split] = datasets.Dataset.from_dict({column: images, "label": labels},
                                                   features=features)
    return _write_repo(root, {config: splits})


def build_ag_news(root: Path, n: int = 240) -> str:
    """AG News: ``text`` and a four-class ClassLabel, train and test splits."""
    import datasets

    rng = random.Random(3)
    names = list(TOPICS)
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=names)})
    splits = {}
    for split, size in (("train", n), ("test", n // 4)):
        texts, labels = [], []
        for i in range(size):
            label = i % 4
            words = [rng.choice(TOPICS[names[label]]) for _ in range(3)]
            texts.append(f"{words[0]} {rng.choice(FILLER)} {words[1]} {rng.choice(FILLER)} "
                         f"{words[2]} (Reuters)")
            labels.append(label)
        splits[split] = datasets.Dataset.from_dict({"text": texts, "label": labels},
                                                   features=features)
    return _write_repo(root, {"default": splits})


def _corpus() -> list[str]:
    words = POSITIVE + NEGATIVE + FILLER + [w for ws in TOPICS.values() for w in ws]
    words += ["cat", "dog", "girl", "man", "saw", "liked", "ball", "house", "book", "movie",
              "fun", "article", "section", "reuters", "=", ".", "(", ")"]
    rng = random.Random(4)
    return [" ".join(rng.sample(words, 12)) for _ in range(300)] + [" ".join(words)]


def build_bert(root: Path) -> str:
    """A tiny uncased BERT (WordPiece, [PAD] 0) saved as bert-base-uncased is."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(_corpus(), trainers.WordPieceTrainer(vocab_size=300,
                                                                 special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(fast), hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64,
                                 max_position_embeddings=64, pad_token_id=0))
    model.save_pretrained(root)
    fast.save_pretrained(root)
    return str(root)


def build_gpt2(root: Path) -> str:
    """A tiny GPT-2 (byte-level BPE, end-of-text and no pad token) saved as gpt2 is."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_corpus(), trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   bos_token="<|endoftext|>", unk_token="<|endoftext|>")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(fast), n_positions=64, n_embd=32,
                                       n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0))
    model.save_pretrained(root)
    fast.save_pretrained(root)
    return str(root)


def build_standins(root: Path, only: set[str] | None = None) -> dict[str, str]:
    """Build the stand-ins (all, or the names in ``only``) under ``root``: name -> folder."""
    builders = {
        "glue": build_glue, "wikitext": build_wikitext, "ag_news": build_ag_news,
        "mnist": lambda p: build_images(p, "mnist"),
        "fashion_mnist": lambda p: build_images(p, "fashion_mnist"),
        "cifar10": lambda p: build_images(p, "cifar10"),
        "bert": build_bert, "gpt2": build_gpt2,
    }
    out = {}
    for name, build in builders.items():
        if only is None or name in only:
            out[name] = build(root / name)
    return out


def needed(doc: dict[str, Any]) -> set[str]:
    """The stand-ins a sweep document names (by hub id)."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, str) and node in HUB_IDS:
            found.add(HUB_IDS[node])

    walk(doc)
    return found


def relocate(doc: dict[str, Any], standins: dict[str, str], sizes: list[str] | None = None,
             name: str | None = None) -> dict[str, Any]:
    """The study's document with every hub id replaced by its local stand-in's folder (in the
    base, the grid and the explicit runs alike), then ``sizes`` applied as ``--set`` items."""
    from trainlab.config.load import apply_overrides

    def swap(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: swap(v) for k, v in node.items()}
        if isinstance(node, list):
            return [swap(v) for v in node]
        if isinstance(node, str) and node in HUB_IDS:
            return standins[HUB_IDS[node]]
        return node

    out = swap(copy.deepcopy(doc))
    if name is not None:
        out["name"] = name
    return apply_overrides(out, sizes or [])


# What shrinks each study to a few seconds per run on a CPU (the stand-ins are tiny already).
SIZES: dict[str, list[str]] = {
    "glue-finetune": ["data.max_length=16", "train.epochs=2", "train.log_every=2",
                      "train.device=cpu"],
    "wikitext-lm": ["data.max_length=32", "data.batch_size=8", "model.embed_dim=32",
                    "model.hidden_dim=64", "model.heads=2", "train.epochs=2",
                    "train.log_every=5", "train.device=cpu"],
    "mlp-labs": ["data.limit=100", "train.log_every=10",
                 "train.device=cpu"],
    "mnist-lr-range": ["data.batch_size=16", "lr_find.steps=60", "lr_find.start=1e-4",
                       "train.epochs=2", "train.log_every=5", "train.device=cpu"],
    "agnews-peft": ["data.max_length=16", "data.batch_size=16", "train.log_every=2",
                    "train.device=cpu"],
}
