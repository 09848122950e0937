"""SQuAD questions -> fixed-shape windows, as google-research/bert's run_squad.py makes them.

The context is split into whitespace-separated words (each with its character span), each word
tokenized on its own; the question is cut to `max_query_length` tokens; the context tokens are
covered by windows of what remains of the sequence, each starting `doc_stride` tokens after the
last. A row is [CLS] question [SEP] window [SEP] with token types 0 / 1. The answer's words
become the token span it is trained to point at, or [CLS] (position 0) where the window does
not hold the whole answer or there is none (SQuAD v2). `token_words` maps each context token
back to its word and `max_context` marks the window where a token has the most context on both
sides, so a predicted span maps back to characters of the context.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from bertgpt_jax.core.errors import DataError
from bertgpt_jax.data.finetune.encode import Batch, empty_rows, place, specials
from bertgpt_jax.data.finetune.files import Question
from bertgpt_jax.data.tokenizers import Tokenizer


@dataclasses.dataclass(frozen=True)
class Context:
    words: tuple[str, ...]
    starts: tuple[int, ...]  # character span [start, end) of each word
    ends: tuple[int, ...]

    def word_at(self, char: int) -> int:
        """The word holding character `char` (a space belongs to the word before it)."""
        return max(0, int(np.searchsorted(np.asarray(self.starts), char, side="right")) - 1)


def split_context(text: str) -> Context:
    words, starts, ends = [], [], []
    start = None
    for i, ch in enumerate([*text, " "]):
        if ch.isspace():
            if start is not None:
                words.append(text[start:i])
                starts.append(start)
                ends.append(i)
                start = None
        elif start is None:
            start = i
    return Context(tuple(words), tuple(starts), tuple(ends))


def _windows(n: int, room: int, stride: int) -> list[tuple[int, int]]:
    spans, start = [], 0
    while True:
        spans.append((start, min(n - start, room)))
        if start + room >= n:
            return spans
        start += min(room, stride)


def _max_context(spans: list[tuple[int, int]], span: int, position: int) -> bool:
    """Whether window `span` is the one where token `position` has the most context."""
    best, best_score = None, None
    for i, (start, length) in enumerate(spans):
        if not start <= position < start + length:
            continue
        score = min(position - start, start + length - 1 - position) + 0.01 * length
        if best_score is None or score > best_score:
            best, best_score = i, score
    return best == span


@dataclasses.dataclass(frozen=True)
class Windows:
    rows: Batch
    example_index: np.ndarray  # [N] the question of each row
    contexts: list[Context]  # per question


def encode_questions(
    tokenizer: Tokenizer,
    questions: Sequence[Question],
    length: int,
    doc_stride: int,
    max_query_length: int,
) -> Windows:
    cls, sep, pad = specials(tokenizer)
    contexts = {q.context: split_context(q.context) for q in questions}
    unique = list(contexts)
    flat = [w for c in unique for w in contexts[c].words]
    pieces_flat = tokenizer.encode(flat) if flat else []
    pieces: dict[str, list[list[int]]] = {}
    at = 0
    for c in unique:
        n = len(contexts[c].words)
        pieces[c] = pieces_flat[at : at + n]
        at += n
    queries = tokenizer.encode([q.question for q in questions])
    made: list[tuple[int, list[int], list[int], list[int], int, int, list[bool]]] = []
    for qi, q in enumerate(questions):
        made.extend(
            _question_rows(qi, q, contexts[q.context], pieces[q.context], queries[qi],
                           length, doc_stride, max_query_length)
        )  # fmt: skip
    rows = empty_rows(len(made), length, pad)
    rows["start_positions"] = np.zeros(len(made), np.int32)
    rows["end_positions"] = np.zeros(len(made), np.int32)
    rows["token_words"] = np.full((len(made), length), -1, np.int32)
    rows["max_context"] = np.zeros((len(made), length), np.int32)
    for r, (_, query, window, words, start, end, best) in enumerate(made):
        place(rows, r, [cls, *query, sep], [*window, sep])
        offset = len(query) + 2
        rows["token_words"][r, offset : offset + len(words)] = words
        rows["max_context"][r, offset : offset + len(best)] = best
        rows["start_positions"][r], rows["end_positions"][r] = start, end
    index = np.asarray([m[0] for m in made], np.int32)
    return Windows(rows, index, [contexts[q.context] for q in questions])


def _question_rows(
    qi: int,
    q: Question,
    context: Context,
    word_pieces: list[list[int]],
    query: list[int],
    length: int,
    doc_stride: int,
    max_query_length: int,
) -> list[tuple[int, list[int], list[int], list[int], int, int, list[bool]]]:
    query = query[:max_query_length]
    tokens: list[int] = []
    token_word: list[int] = []
    first_token: list[int] = []
    for w, p in enumerate(word_pieces):
        first_token.append(len(tokens))
        tokens.extend(p)
        token_word.extend([w] * len(p))
    room = length - len(query) - 3
    if room < 1:
        raise DataError(f"{q.where}: data.seq_len={length} leaves no room for the context.")
    answer = None
    if q.answers:
        text, start = q.answers[0]
        first, last = context.word_at(start), context.word_at(start + max(len(text), 1) - 1)
        end_token = first_token[last + 1] - 1 if last + 1 < len(first_token) else len(tokens) - 1
        answer = (first_token[first], end_token)
    spans = _windows(len(tokens), room, doc_stride)
    out = []
    for s, (start, n) in enumerate(spans):
        a_start = a_end = 0
        if answer and start <= answer[0] and answer[1] < start + n:
            a_start = answer[0] - start + len(query) + 2
            a_end = answer[1] - start + len(query) + 2
        best = [_max_context(spans, s, start + i) for i in range(n)]
        out.append(
            (qi, query, tokens[start : start + n], token_word[start : start + n], a_start, a_end,
             best)
        )  # fmt: skip
    return out
