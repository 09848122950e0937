"""Tokenizers as they come: a SentencePiece model (ours or any) or a HuggingFace tokenizer
directory (tokenizer.json, or vocab.txt, or vocab.json + merges.txt), behind one interface
(`Tokenizer`) whose special ids are read from the tokenizer itself.

`load_tokenizer(path)` takes a `.model` file or a directory: a directory with a readable
SentencePiece `tokenizer.model` is SentencePiece (our exports carry both that and the
tokenizer.json converted from it, with the same ids); otherwise the HuggingFace files decide.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from etils import epath

from bertgpt_jax.core import fs
from bertgpt_jax.core.errors import DataError
from bertgpt_jax.data.tokenizers.base import SpecialIds, Tokenizer, TokenizerIdentity
from bertgpt_jax.data.tokenizers.huggingface import HfTokenizer, is_hf_tokenizer_dir
from bertgpt_jax.data.tokenizers.sentencepiece import MODEL_FILE, SentencePieceTokenizer

# Where a store or a workdir keeps its copy of the tokenizer files.
TOKENIZER_DIR = "tokenizer"


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer at `path`: a SentencePiece `.model` file, or a tokenizer directory."""
    path = fs.require_local(path, "tokenizer")
    if path.is_dir() and (path / MODEL_FILE).is_file():
        return SentencePieceTokenizer(path / MODEL_FILE)
    if path.is_dir() and is_hf_tokenizer_dir(path):
        return HfTokenizer(path)
    if not path.exists():
        raise DataError(
            f"tokenizer model {path} does not exist; train one with `bertgpt tokenizer` or pass "
            "a tokenizer or HuggingFace model directory."
        )
    if path.is_dir():
        raise DataError(
            f"tokenizer directory {path} holds no tokenizer (tokenizer.model, tokenizer.json, "
            "vocab.txt, or vocab.json + merges.txt); train one with `bertgpt tokenizer`."
        )
    return SentencePieceTokenizer(path)


def store_tokenizer(tokenizer: Tokenizer, directory: Path | epath.Path) -> None:
    """Copies the tokenizer's files into a store or workdir: a SentencePiece model (with its
    tokenizer.json) at the top, as stores always had it; a HuggingFace tokenizer, whose file
    names would mix with the directory's own, in `tokenizer/`."""
    target = (
        directory if isinstance(tokenizer, SentencePieceTokenizer) else directory / TOKENIZER_DIR
    )
    target.mkdir(parents=True, exist_ok=True)
    for file in tokenizer.files:
        if (
            not (target / file.name).is_file()
            or (target / file.name).read_bytes() != file.read_bytes()
        ):
            fs.copy_file(file, target / file.name)


def tokenizer_location(directory: Path | epath.Path) -> Any:
    """A store's or workdir's tokenizer: the `tokenizer/` copy (HuggingFace), else the top-level
    tokenizer.model (SentencePiece)."""
    inside = directory / TOKENIZER_DIR
    return inside if inside.is_dir() else directory / MODEL_FILE


__all__ = [
    "TOKENIZER_DIR",
    "HfTokenizer",
    "SentencePieceTokenizer",
    "SpecialIds",
    "Tokenizer",
    "TokenizerIdentity",
    "load_tokenizer",
    "store_tokenizer",
    "tokenizer_location",
]
