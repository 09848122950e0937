"""Token ids in BERT's input layout, at a fixed length: [CLS] A [SEP] (B [SEP]), token types
0 for [CLS] A [SEP] and 1 for B [SEP] (BERT's sentence A/B embeddings), padding after, with
`segment_ids` 1 at real tokens and 0 at padding (the attention mask) and `positions` 0, 1, ...
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bertgpt_jax.core.errors import DataError
from bertgpt_jax.data.tokenizers import Tokenizer

Batch = dict[str, np.ndarray]


def specials(tokenizer: Tokenizer) -> tuple[int, int, int]:
    """(cls, sep, pad) ids of the tokenizer; a tokenizer without [CLS] or [SEP] is refused."""
    s = tokenizer.specials
    s.require(("cls", "sep"), str(tokenizer.path), "fine-tuning BERT")
    assert s.cls is not None and s.sep is not None
    return s.cls, s.sep, 0 if s.pad is None else s.pad


def truncate_pair(a: list[int], b: list[int] | None, budget: int) -> tuple[list[int], list[int]]:
    """Drops tokens from the end of the longer sequence until both fit `budget` (BERT's
    `_truncate_seq_pair`, transformers' "longest_first")."""
    a, b = list(a), list(b or [])
    while len(a) + len(b) > budget:
        (a if len(a) > len(b) else b).pop()
    return a, b


def empty_rows(n: int, length: int, pad: int) -> Batch:
    return {
        "input_ids": np.full((n, length), pad, np.int32),
        "token_type_ids": np.zeros((n, length), np.int32),
        "segment_ids": np.zeros((n, length), np.int32),
        "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (n, length)).copy(),
    }


def place(rows: Batch, i: int, first: Sequence[int], second: Sequence[int] | None) -> None:
    """Writes row i: `first` (already holding [CLS] ... [SEP]) with type 0, `second` with 1."""
    n_a, n_b = len(first), len(second or ())
    rows["input_ids"][i, :n_a] = first
    if second:
        rows["input_ids"][i, n_a : n_a + n_b] = second
        rows["token_type_ids"][i, n_a : n_a + n_b] = 1
    rows["segment_ids"][i, : n_a + n_b] = 1


def encode_texts(
    tokenizer: Tokenizer, texts: Sequence[str], pairs: Sequence[str] | None, length: int
) -> Batch:
    """[N, length] BERT inputs for single texts or (text, pair) pairs, truncated longest-first."""
    cls, sep, pad = specials(tokenizer)
    first = tokenizer.encode(list(texts))
    second = tokenizer.encode(list(pairs)) if pairs is not None else [None] * len(first)
    budget = length - (3 if pairs is not None else 2)
    if budget < 1:
        raise DataError(f"data.seq_len={length} leaves no room for text; raise it.")
    rows = empty_rows(len(first), length, pad)
    for i, (a, b) in enumerate(zip(first, second, strict=True)):
        a, b = truncate_pair(a, b, budget)
        place(rows, i, [cls, *a, sep], [*b, sep] if pairs is not None else None)
    return rows
