"""Shared pieces of the fine-tuning tests: a tiny HuggingFace BERT directory with a WordPiece
tokenizer trained here (nothing downloads), and small labelled tasks built in the test that a
2-layer, 64-wide model learns to near-perfect validation metrics in a few hundred steps."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import torch
import transformers

from bertgpt_jax.cli import main
from bertgpt_jax.data.embedded import write_default_corpus

VOCAB = 1000
# Filler and marker words that the WordPiece vocabulary trained on the default corpus (Python
# documentation) holds whole: a marker is then one token the model must find.
WORDS = [
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "this",
    "which",
    "it",
    "are",
    "be",
    "or",
    "an",
    "have",
    "has",
    "one",
    "two",
    "new",
    "first",
    "time",
    "when",
    "other",
    "only",
    "then",
    "must",
]
COLORS = ("file", "list", "string")
# Small and fast: every test run fine-tunes with these unless it says otherwise.
FAST = ["data.seq_len=32", "train.batch_size=16", "train.learning_rate=1e-3",
        "train.warmup_ratio=0.05", "checkpoint.async_save=false", "train.log_every=5",
        "model.dropout_rate=0.0", "model.attention_dropout_rate=0.0"]  # fmt: skip


def fast(*changes: str) -> list[str]:
    """FAST with some keys changed (a key may be given only once)."""
    keys = {c.split("=")[0] for c in changes}
    return [f for f in FAST if f.split("=")[0] not in keys] + list(changes)


def hf_bert_dir(path: Path) -> Path:
    """A bert-base-uncased-like directory: WordPiece tokenizer files + a random BertForPreTraining
    of a tiny config."""
    corpus = path / "corpus"
    write_default_corpus(corpus)
    argv = ["tokenizer", "--input", corpus, "--vocab-size", VOCAB, "--model-type", "wordpiece",
            "--output", path / "bert"]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=64, pad_token_id=0,
    )  # fmt: skip
    transformers.BertForPreTraining(config).save_pretrained(path / "bert", safe_serialization=True)
    return path / "bert"


def _filler(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(WORDS) for _ in range(n)]


def sentence_examples(kind: str, n: int, seed: int) -> list[dict]:
    """classification: the marker word in the text is the label; pair: the marker of the second
    sentence (the first holds another: only its segment tells them apart); regression: the count of "true" / 3; multilabel: the markers present."""
    rng = random.Random(seed)
    out: list[dict] = []
    for _ in range(n):
        words = _filler(rng, rng.randint(4, 9))
        if kind == "classification":
            color = rng.choice(COLORS)
            words.insert(rng.randrange(len(words) + 1), color)
            out.append({"text": " ".join(words), "label": color})
        elif kind == "pair":
            a, b = rng.choice(COLORS), rng.choice(COLORS)
            other = _filler(rng, 5)
            words.insert(rng.randrange(len(words) + 1), a)
            other.insert(rng.randrange(6), b)
            out.append({"sentence1": " ".join(words), "sentence2": " ".join(other), "label": b})
        elif kind == "regression":
            count = rng.randint(0, 3)
            for _ in range(count):
                words.insert(rng.randrange(len(words) + 1), "true")
            out.append({"text": " ".join(words), "label": count / 3})
        else:
            present = sorted(c for c in COLORS if rng.random() < 0.5)
            for c in present:
                words.insert(rng.randrange(len(words) + 1), c)
            out.append({"text": " ".join(words), "label": present})
    return out


def write(path: Path, rows: list[dict]) -> Path:
    """Rows as CSV / TSV / JSON / JSONL, by the suffix."""
    if path.suffix in (".csv", ".tsv"):
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]),
                                    delimiter="\t" if path.suffix == ".tsv" else ",")  # fmt: skip
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


PERSONS = ("python", "method")
PLACES = (("class", "object"), ("module",))


def tagged_sentences(n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """Sentences with PER (one word) and LOC (one or two words) entities in BIO tags."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        tokens: list[str] = []
        tags: list[str] = []
        for _ in range(rng.randint(3, 8)):
            r = rng.random()
            if r < 0.2:
                tokens.append(rng.choice(PERSONS))
                tags.append("B-PER")
            elif r < 0.35:
                place = rng.choice(PLACES)
                tokens += place
                tags += ["B-LOC"] + ["I-LOC"] * (len(place) - 1)
            else:
                tokens.append(rng.choice(WORDS))
                tags.append("O")
        out.append((tokens, tags))
    return out


def write_conll(path: Path, sentences: list[tuple[list[str], list[str]]]) -> Path:
    lines = ["-DOCSTART- -X- -X- O", ""]
    for tokens, tags in sentences:
        lines += [f"{t} X _ {g}" for t, g in zip(tokens, tags, strict=True)] + [""]
    path.write_text("\n".join(lines))
    return path


def squad_examples(n: int, seed: int, unanswerable: float = 0.0) -> list[dict]:
    """ "which one is it": the marker word in a context of 5-40 filler words (long contexts
    span several windows), or none (SQuAD v2) with probability `unanswerable`."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = _filler(rng, rng.randint(5, 40))
        marker = rng.choice(COLORS)
        answered = rng.random() >= unanswerable
        if answered:
            words.insert(rng.randrange(len(words) + 1), marker)
        context = " ".join(words)
        start = len(" ".join(words[: words.index(marker)])) + 1 if answered else 0
        start = 0 if answered and words.index(marker) == 0 else start
        answers = (
            {"text": [marker], "answer_start": [start]}
            if answered
            else {"text": [], "answer_start": []}
        )
        out.append(
            {"id": f"q{i}", "question": "which one is it", "context": context, "answers": answers}
        )
    return out
