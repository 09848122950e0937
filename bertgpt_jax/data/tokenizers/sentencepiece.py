"""SentencePiece tokenizers: training, importing a user's model, loading.

`bertgpt tokenizer` trains SentencePiece models with one special-token layout,

    [PAD]=0  [UNK]=1  [CLS]=2  [SEP]=3  [MASK]=4  <|endoftext|>=5

(SentencePiece owns ids 0 and 1 as pad_id and unk_id; bos/eos are disabled and the other four
are user-defined symbols, placed right after in the order given). A model from elsewhere keeps
its own layout: the special ids are read from the model (its pad/unk/bos/eos ids and the
pieces named [CLS], [SEP], [MASK], <|endoftext|> or their <cls>-style spellings). A tokenizer
directory holds `tokenizer.model` (the model, kept verbatim so it can later be exported to
HuggingFace) and `tokenizer.json` (how it was made, and its identity, written last).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import sentencepiece as spm

from bertgpt_jax.core import fs
from bertgpt_jax.core.errors import DataError
from bertgpt_jax.data.tokenizers.base import SpecialIds, Tokenizer, TokenizerIdentity, files_sha256

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


# Piece spellings of the special tokens SentencePiece has no id accessor for.
_SPELLINGS = {
    "cls": ("[CLS]", "<cls>"),
    "sep": ("[SEP]", "<sep>"),
    "mask": ("[MASK]", "<mask>"),
    "eos": ("<|endoftext|>",),
}


class SentencePieceTokenizer(Tokenizer):
    """A loaded SentencePiece model; its special ids are read from it."""

    kind = "sentencepiece"

    def __init__(self, model_path: str | Path) -> None:
        self.model_path = self.path = Path(model_path)
        info = self.model_path.parent / INFO_FILE
        # The model defines it; the tokenizer.json beside it records how it was made.
        self.files = (self.model_path, info) if info.is_file() else (self.model_path,)
        data = _read_model_bytes(self.model_path)
        self.processor = spm.SentencePieceProcessor()
        try:
            self.processor.LoadFromSerializedProto(data)
        except Exception as err:
            raise DataError(
                f"{self.model_path} is not a SentencePiece model ({err}); pass a `.model` file "
                "or a directory written by `bertgpt tokenizer`."
            ) from err
        self.specials = _special_ids(self.processor)
        named = {self.processor.IdToPiece(i): i for i in self.specials.present().values()}
        self._identity = TokenizerIdentity(
            files_sha256(self.files[:1]), self.vocab_size, tuple(sorted(named.items(), key=_by_id))
        )

    @property
    def identity(self) -> TokenizerIdentity:
        return self._identity

    @property
    def vocab_size(self) -> int:
        return int(self.processor.GetPieceSize())

    def encode(self, texts: list[str], num_threads: int = 1) -> list[list[int]]:
        """Token ids for each text; SentencePiece encodes the batch on `num_threads` threads."""
        return self.processor.Encode(texts, num_threads=num_threads)

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        special = set(self.specials.present().values()) if skip_special else set()
        return self.processor.Decode([int(i) for i in ids if int(i) not in special])

    def piece(self, token_id: int) -> str:
        return str(self.processor.IdToPiece(int(token_id)))

    def word_start_table(self) -> np.ndarray:
        """[V] bool: True where a piece begins a word (used by whole-word masking)."""
        pieces = (self.processor.IdToPiece(i) for i in range(self.vocab_size))
        table = np.fromiter((p.startswith(WORD_START) for p in pieces), bool, self.vocab_size)
        table[self.specials.ids()] = True
        return table


def _read_model_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise DataError(
            f"tokenizer model {path} does not exist; train one with `bertgpt tokenizer` or pass "
            "the directory that holds tokenizer.model."
        )
    return path.read_bytes()


def _by_id(item: tuple[str, int]) -> int:
    return item[1]


def _special_ids(sp: spm.SentencePieceProcessor) -> SpecialIds:
    """The model's special ids: its own pad/unk/bos/eos, then the named pieces."""

    def own(value: int) -> int | None:
        return value if value >= 0 else None

    found: dict[str, int | None] = {
        "pad": own(sp.pad_id()),
        "unk": own(sp.unk_id()),
        "bos": own(sp.bos_id()),
        "eos": own(sp.eos_id()),
    }
    for name, spellings in _SPELLINGS.items():
        for piece in spellings:
            token_id = sp.PieceToId(piece)
            if token_id != sp.unk_id() and sp.IdToPiece(token_id) == piece:
                found[name] = token_id
                break
    if found["bos"] is None:  # GPT-2's recipe: <|endoftext|> also begins a document
        found["bos"] = found["eos"]
    return SpecialIds(**found)


def resolve_model_path(path: str | Path) -> Path:
    """A tokenizer is named by its directory or by its `.model` file."""
    path = fs.require_local(path, "tokenizer")
    return path / MODEL_FILE if path.is_dir() else path


def _write_dir(output_dir: Path, model: bytes, info: dict[str, Any]) -> SentencePieceTokenizer:
    """Writes the model, then tokenizer.json last, each through a rename, so a crash never leaves
    a directory whose tokenizer.json describes a model that is not there."""
    output_dir.mkdir(parents=True, exist_ok=True)
    fs.atomic_write(output_dir / MODEL_FILE, lambda tmp: tmp.write_bytes(model))
    tokenizer = SentencePieceTokenizer(output_dir / MODEL_FILE)
    text = json.dumps({**info, "identity": tokenizer.identity.to_json()}, indent=2) + "\n"
    fs.atomic_write(output_dir / INFO_FILE, lambda tmp: tmp.write_text(text))
    return tokenizer


def check_output(output_dir: Path, overwrite: bool) -> None:
    """A tokenizer is written only into a new or empty directory, or with `overwrite` over a
    tokenizer this tool wrote (its tokenizer.json records an identity): never over other files."""
    if output_dir.exists() and not output_dir.is_dir():
        raise DataError(f"tokenizer --output {output_dir} is a file; choose a directory.")
    fs.remove_stale_writes(output_dir)  # a killed run's half-written files
    entries = sorted(p.name for p in output_dir.iterdir()) if output_dir.is_dir() else []
    if not entries:
        return
    if "identity" not in (read_info(output_dir) or {}):
        shown = ", ".join(entries[:3]) + (
            f" and {len(entries) - 3} more" if len(entries) > 3 else ""
        )
        raise DataError(
            f"tokenizer --output {output_dir} holds {shown}, not a tokenizer written by "
            "`bertgpt tokenizer`; choose another --output."
        )
    if not overwrite:
        raise DataError(
            f"tokenizer --output {output_dir} already holds a tokenizer; pass --overwrite to "
            "replace it, or choose another --output."
        )


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
    overwrite: bool = False,
) -> SentencePieceTokenizer:
    """Trains a SentencePiece model on `sentences` into `output_dir`.

    `inputs_fingerprint` identifies the training text; if `output_dir` already holds a tokenizer
    trained from the same text with the same options, it is returned unchanged (re-running is a
    no-op); any other tokenizer there is replaced only with `overwrite`. Only the first `max_sentences` sentences are used, which keeps training time bounded
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
        return SentencePieceTokenizer(output_dir / MODEL_FILE)
    check_output(output_dir, overwrite)
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
            f"({_reason(err)}); {_training_fix(str(err))}."
        ) from err
    return _write_dir(output_dir, model.getvalue(), {"trained_from": trained_from})


def _reason(err: Exception) -> str:
    """SentencePiece's message without its source location: '[...] Vocabulary size ...'."""
    return str(err).strip().rsplit("] ", 1)[-1]


def _training_fix(message: str) -> str:
    """The advice for SentencePiece's two vocabulary-size failures, which point opposite ways."""
    if "smaller than required_chars" in message:
        return "raise --vocab-size or lower --character-coverage"
    return "lower --vocab-size or give more text"


def _limit(sentences: Iterable[str], limit: int) -> Iterator[str]:
    for count, sentence in enumerate(sentences):
        if count >= limit:
            return
        yield sentence


def import_tokenizer(
    model_path: str | Path, output_dir: str | Path, overwrite: bool = False
) -> SentencePieceTokenizer:
    """Copies a user's own SentencePiece model into a tokenizer directory (its special ids are
    read from it; a task that needs one it lacks refuses it when the data is built), if
    `output_dir` may be written (see `check_output`)."""
    output = fs.require_local(output_dir, "tokenizer --output")
    source = SentencePieceTokenizer(resolve_model_path(model_path))
    if (read_info(output) or {}).get("identity") == source.identity.to_json():
        return SentencePieceTokenizer(output / MODEL_FILE)  # already imported: a no-op
    check_output(output, overwrite)
    info = {"imported_from": str(source.model_path)}
    return _write_dir(output, source.model_path.read_bytes(), info)
