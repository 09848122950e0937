"""Tagged sentences -> fixed-shape token rows: each word is tokenized on its own, the first
sub-token of a word carries the word's tag (every sub-token with `label_all_tokens`), the other
positions are ignored (weight 0), and `word_ids` maps each tagged position back to its word so
predictions are given per word. Words past the sequence length are cut (and predicted "O")."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bertgpt_jax.core.errors import DataError
from bertgpt_jax.data.finetune.encode import Batch, empty_rows, place, specials
from bertgpt_jax.data.finetune.files import Sentence
from bertgpt_jax.data.tokenizers import Tokenizer


def tag_names(sentences: Sequence[Sentence]) -> tuple[str, ...]:
    return tuple(sorted({t for s in sentences for t in s.tags or ()}))


def check_tags(sentences: Sequence[Sentence], labels: Sequence[str]) -> None:
    known = set(labels)
    for s in sentences:
        for tag in s.tags or ():
            if tag not in known:
                raise DataError(
                    f"{s.where} has tag {tag!r}, which the training data never has (tags: "
                    f"{', '.join(labels)}); remove that sentence or list it in task.labels."
                )


def encode_tagged(
    tokenizer: Tokenizer,
    sentences: Sequence[Sentence],
    labels: Sequence[str],
    length: int,
    label_all_tokens: bool,
) -> Batch:
    cls, sep, pad = specials(tokenizer)
    unk = tokenizer.specials.unk
    flat = [w for s in sentences for w in s.tokens]
    pieces = tokenizer.encode(flat)
    index = {n: i for i, n in enumerate(labels)}
    rows = empty_rows(len(sentences), length, pad)
    rows["tag_ids"] = np.zeros((len(sentences), length), np.int32)
    rows["tag_weights"] = np.zeros((len(sentences), length), np.float32)
    rows["word_ids"] = np.full((len(sentences), length), -1, np.int32)
    at = 0
    for i, s in enumerate(sentences):
        ids: list[int] = []
        for w in range(len(s.tokens)):
            word = pieces[at + w] or ([unk] if unk is not None else [])
            room = length - 2 - len(ids)
            if room <= 0 or not word:
                continue
            start = 1 + len(ids)
            ids.extend(word[:room])
            tag = index.get(s.tags[w], 0) if s.tags else 0
            span = min(len(word), room) if label_all_tokens else 1
            rows["tag_ids"][i, start : start + span] = tag
            rows["tag_weights"][i, start : start + span] = 1.0 if s.tags else 0.0
            rows["word_ids"][i, start] = w
        at += len(s.tokens)
        place(rows, i, [cls, *ids, sep], None)
    return rows
