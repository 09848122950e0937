"""What every tokenizer offers the pipeline, whatever library it comes from.

A tokenizer turns text into ids without adding special tokens (the example builders place
those), names its special tokens and their ids (`SpecialIds`, read from the tokenizer, never
assumed), and has an identity: the digest of the files that define it plus its special ids and
vocabulary size. The identity is copied into every prepared store and checkpoint, so a store is
never read, nor a checkpoint continued, with another tokenizer.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from bertgpt_jax.core.errors import DataError

# What each special token is for, and how a user gets one a task needs.
_ROLES = {
    "pad": "padding",
    "unk": "unknown pieces",
    "cls": "the sequence start of BERT inputs",
    "sep": "BERT's segment separator",
    "mask": "masked-LM corruption",
    "eos": "the end of a document",
    "bos": "the start of a document",
}


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """The ids of a tokenizer's special tokens (None where it has none)."""

    pad: int | None = None
    unk: int | None = None
    cls: int | None = None
    sep: int | None = None
    mask: int | None = None
    eos: int | None = None
    bos: int | None = None

    def present(self) -> dict[str, int]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def ids(self) -> np.ndarray:
        """The distinct special ids, sorted."""
        return np.unique(np.asarray(list(self.present().values()), np.int64))

    def require(self, names: Iterable[str], tokenizer: str, task: str) -> None:
        """Raises DataError naming the first of `names` the tokenizer lacks, and the fix."""
        for name in names:
            if getattr(self, name) is None:
                raise DataError(
                    f"tokenizer {tokenizer} has no {name} token, which {task} needs for "
                    f"{_ROLES[name]}; add one to the tokenizer (its special tokens map) or use "
                    "a tokenizer that has it."
                )


@dataclasses.dataclass(frozen=True)
class TokenizerIdentity:
    """What makes two tokenizers interchangeable: the defining files and the id contract."""

    model_sha256: str  # digest of the file(s) that define the tokenizer
    vocab_size: int
    special_ids: tuple[tuple[str, int], ...]
    kind: str = "sentencepiece"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model_sha256": self.model_sha256,
            "vocab_size": self.vocab_size,
            "special_ids": dict(self.special_ids),
        }
        if self.kind != "sentencepiece":  # stores made before other kinds existed say nothing
            out["kind"] = self.kind
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TokenizerIdentity:
        return cls(
            model_sha256=str(data["model_sha256"]),
            vocab_size=int(data["vocab_size"]),
            special_ids=tuple((str(k), int(v)) for k, v in data["special_ids"].items()),
            kind=str(data.get("kind", "sentencepiece")),
        )


def files_sha256(files: Sequence[Path]) -> str:
    """One digest over several files' names and contents (a single file: its plain sha256)."""
    if len(files) == 1:
        return hashlib.sha256(files[0].read_bytes()).hexdigest()
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name):
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


class Tokenizer(abc.ABC):
    """A loaded tokenizer: `encode`/`decode` without special tokens, and its contract."""

    kind: ClassVar[str]
    # Where it was loaded from, its special ids, and the files that define it.
    path: Path
    specials: SpecialIds
    files: tuple[Path, ...]

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int: ...

    @abc.abstractmethod
    def encode(self, texts: list[str], num_threads: int = 1) -> list[list[int]]:
        """Token ids for each text, no special tokens added."""

    @abc.abstractmethod
    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text of `ids`; `skip_special` leaves the special tokens out."""

    @abc.abstractmethod
    def piece(self, token_id: int) -> str:
        """The vocabulary entry of one id."""

    @abc.abstractmethod
    def word_start_table(self) -> np.ndarray:
        """[V] bool: True where a piece begins a word (whole-word masking); specials True."""

    @property
    @abc.abstractmethod
    def identity(self) -> TokenizerIdentity: ...

    def special_table(self) -> np.ndarray:
        """[V] bool: True at every special id."""
        table = np.zeros(self.vocab_size, bool)
        table[self.specials.ids()] = True
        return table
