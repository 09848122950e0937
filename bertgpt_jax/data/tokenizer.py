"""SentencePiece tokenizers: training, importing a user's model, loading, and identity.

Every tokenizer this project uses has the same special tokens at the same ids, so that example
builders, models and exported checkpoints can hard-code them:

    [PAD]=0  [UNK]=1  [CLS]=2  [SEP]=3  [MASK]=4  <|endoftext|>=5

SentencePiece owns ids 0 and 1 (pad_id, unk_id); bos/eos are disabled and the other four are
user-defined symbols, which SentencePiece places right after in the order given. A tokenizer
directory holds `tokenizer.model` (the SentencePiece model, kept verbatim so it can later be
exported to HuggingFace) and `tokenizer.json` (its identity, written last).

The identity is the sha256 of the model file plus the special ids and the vocabulary size; it
is copied into every prepared store so a store can never be read with another tokenizer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import sentencepiece as spm
from etils import epath

from bertgpt_jax.core import fs
from bertgpt_jax.core.errors import DataError

PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID, EOT_ID = 0, 1, 2, 3, 4, 5
SPECIAL_TOKENS: dict[str, int] = {
    "[PAD]": PAD_ID,
    "[UNK]": UNK_ID,
    "[CLS]": CLS_ID,
    "[SEP]": SEP_ID,
    "[MASK]": MASK_ID,
    "<|endoftext|>": EOT_ID,
}
NUM_SPECIAL = len(SPECIAL_TOKENS)
MODEL_FILE = "tokenizer.model"
INFO_FILE = "tokenizer.json"
# SentencePiece marks the start of a word with this meta symbol (U+2581).
WORD_START = "\u2581"


def model_sha256(model: bytes | Path | epath.Path) -> str:
    """The digest that identifies a tokenizer model file (given as its bytes or its path)."""
    data = model if isinstance(model, bytes) else model.read_bytes()
    return hashlib.sha256(data).hexdigest()


@dataclasses.dataclass(frozen=True)
class TokenizerIdentity:
    """What makes two tokenizers interchangeable: the exact model bytes and the id contract."""

    model_sha256: str
    vocab_size: int
    special_ids: tuple[tuple[str, int], ...] = tuple(SPECIAL_TOKENS.items())

    def to_json(self) -> dict[str, Any]:
        return {
            "model_sha256": self.model_sha256,
            "vocab_size": self.vocab_size,
            "special_ids": dict(self.special_ids),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TokenizerIdentity:
        return cls(
            model_sha256=str(data["model_sha256"]),
            vocab_size=int(data["vocab_size"]),
            special_ids=tuple((str(k), int(v)) for k, v in data["special_ids"].items()),
        )


class Tokenizer:
    """A loaded SentencePiece model with the project's special-token contract checked."""

    def __init__(self, model_path: str | Path) -> None:
        self.model_path = Path(model_path)
        data = _read_model_bytes(self.model_path)
        self.processor = spm.SentencePieceProcessor()
        try:
            self.processor.LoadFromSerializedProto(data)
        except Exception as err:
            raise DataError(
                f"{self.model_path} is not a SentencePiece model ({err}); pass a `.model` file "
                "or a directory written by `bertgpt tokenizer`."
            ) from err
        _check_special_ids(self.processor, self.model_path)
        self.identity = TokenizerIdentity(model_sha256(data), self.vocab_size)

    @property
    def vocab_size(self) -> int:
        return int(self.processor.GetPieceSize())

    def encode(self, texts: list[str], num_threads: int = 1) -> list[list[int]]:
        """Token ids for each text; SentencePiece encodes the batch on `num_threads` threads."""
        return self.processor.Encode(texts, num_threads=num_threads)

    def decode(self, ids: Iterable[int]) -> str:
        return self.processor.Decode([int(i) for i in ids])

    def word_start_table(self) -> np.ndarray:
        """[V] bool: True where a piece begins a word (used by whole-word masking)."""
        pieces = (self.processor.IdToPiece(i) for i in range(self.vocab_size))
        table = np.fromiter((p.startswith(WORD_START) for p in pieces), bool, self.vocab_size)
        table[:NUM_SPECIAL] = True
        return table


def _read_model_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise DataError(
            f"tokenizer model {path} does not exist; train one with `bertgpt tokenizer` or pass "
            "the directory that holds tokenizer.model."
        )
    return path.read_bytes()


def _check_special_ids(sp: spm.SentencePieceProcessor, path: Path) -> None:
    found = {"[PAD]": sp.pad_id(), "[UNK]": sp.unk_id()}
    for piece in list(SPECIAL_TOKENS)[2:]:
        found[piece] = sp.PieceToId(piece) if sp.PieceToId(piece) != sp.unk_id() else -1
    for piece, want in SPECIAL_TOKENS.items():
        if found[piece] != want:
            raise DataError(
                f"tokenizer {path} has {piece} at id {found[piece]} instead of {want}; train it "
                "with `bertgpt tokenizer`, which fixes the special-token ids."
            )


def resolve_model_path(path: str | Path) -> Path:
    """A tokenizer is named by its directory or by its `.model` file."""
    path = fs.require_local(path, "tokenizer")
    return path / MODEL_FILE if path.is_dir() else path


def load_tokenizer(path: str | Path) -> Tokenizer:
    return Tokenizer(resolve_model_path(path))


def _write_dir(output_dir: Path, model: bytes, info: dict[str, Any]) -> Tokenizer:
    """Writes the model, then tokenizer.json last, each through a rename, so a crash never leaves
    a directory whose tokenizer.json describes a model that is not there."""
    output_dir.mkdir(parents=True, exist_ok=True)
    fs.atomic_write(output_dir / MODEL_FILE, lambda tmp: tmp.write_bytes(model))
    tokenizer = Tokenizer(output_dir / MODEL_FILE)
    text = json.dumps({**info, "identity": tokenizer.identity.to_json()}, indent=2) + "\n"
    fs.atomic_write(output_dir / INFO_FILE, lambda tmp: tmp.write_text(text))
    return tokenizer


def read_info(tokenizer_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((tokenizer_dir / INFO_FILE).read_text())
    except (OSError, ValueError):
        return None


def train_tokenizer(
    sentences: Iterable[str],
    output_dir: str | Path,
    vocab_size: int,
    *,
    model_type: Literal["unigram", "bpe"] = "unigram",
    character_coverage: float = 0.9995,
    byte_fallback: bool = False,
    max_sentences: int = 2_000_000,
    inputs_fingerprint: str = "",
    description: str = "the input",
) -> Tokenizer:
    """Trains a SentencePiece model on `sentences` into `output_dir`.

    `inputs_fingerprint` identifies the training text; if `output_dir` already holds a tokenizer
    trained from the same text with the same options, it is returned unchanged (re-running is a
    no-op). Only the first `max_sentences` sentences are used, which keeps training time bounded
    on large corpora and deterministic.
    """
    output_dir = fs.require_local(output_dir, "tokenizer --output")
    options = {
        "vocab_size": vocab_size,
        "model_type": model_type,
        "character_coverage": character_coverage,
        "byte_fallback": byte_fallback,
        "max_sentences": max_sentences,
    }
    trained_from = {"inputs": inputs_fingerprint, "options": options}
    existing = read_info(output_dir)
    if inputs_fingerprint and existing and existing.get("trained_from") == trained_from:
        return Tokenizer(output_dir / MODEL_FILE)
    if vocab_size <= NUM_SPECIAL + 2:
        raise DataError(f"--vocab-size {vocab_size} is too small; use at least 64.")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.Train(
            sentence_iterator=_limit(sentences, max_sentences),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            byte_fallback=byte_fallback,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=-1,
            eos_id=-1,
            pad_piece="[PAD]",
            unk_piece="[UNK]",
            user_defined_symbols=list(SPECIAL_TOKENS)[2:],
            num_threads=min(os.cpu_count() or 1, 16),
            minloglevel=2,
        )
    except RuntimeError as err:
        raise DataError(
            f"SentencePiece could not train a {vocab_size}-piece tokenizer on {description} "
            f"({str(err).strip()}); lower --vocab-size or give more text."
        ) from err
    return _write_dir(output_dir, model.getvalue(), {"trained_from": trained_from})


def _limit(sentences: Iterable[str], limit: int) -> Iterator[str]:
    for count, sentence in enumerate(sentences):
        if count >= limit:
            return
        yield sentence


def import_tokenizer(model_path: str | Path, output_dir: str | Path) -> Tokenizer:
    """Copies a user's own SentencePiece model into a tokenizer directory after checking that it
    keeps the special-token ids."""
    output = fs.require_local(output_dir, "tokenizer --output")
    source = Tokenizer(resolve_model_path(model_path))
    info = {"imported_from": str(source.model_path)}
    return _write_dir(output, source.model_path.read_bytes(), info)
