"""BERT examples: sentence pairs with a pair label, then masked-LM corruption.

Follows google-research/bert `create_pretraining_data.py`, made indexable so that an example is a
pure function of (example id, its uniforms):

* Chunks. Each document is cut greedily into chunks of consecutive sentences, adding sentences
  until the chunk holds at least max_num_tokens = L - 3 tokens (L - 2 without a pair task). The
  chunk table is computed once, vectorised over documents; one chunk is one example per epoch.
* Target length. With probability short_seq_prob the example aims at a random length in
  [2, max_num_tokens] instead, and uses only the chunk's leading sentences up to that length.
* Segment A is the first k sentences, k uniform in [1, n - 1]. A chunk of one sentence is split
  at a uniform token position instead, so that a true continuation always exists (the original
  forces NotNext there, which pushes the NotNext rate above 50% on short documents).
* nsp: with probability 1/2 B is the rest of the chunk (IsNext, label 0); otherwise B is a run of
  sentences from a random position of a random other document, long enough for the target
  (NotNext, label 1). A corpus of one document draws B from the same document.
* sop (ALBERT): A and B are consecutive; with probability 1/2 they are swapped (label 1).
* none (RoBERTa's full sentences): one segment, [CLS] X [SEP], label 0.
* The pair is truncated to max_num_tokens as `truncate_seq_pair` does (always shortening the
  longer side, B on ties); each side's excess is cut from its front or its back, one coin per
  side, so every segment stays one contiguous slice of the store and assembly is a gather.

Row layout: [CLS] A [SEP] B [SEP] [PAD]...; token_type_ids 0 up to the first [SEP], 1 after.
"""

from __future__ import annotations

import numpy as np

from bertgpt_jax.core.config import DataConfig
from bertgpt_jax.core.errors import DataError
from bertgpt_jax.data.pretrain.masking import mask_tokens
from bertgpt_jax.data.store import StoreSplit
from bertgpt_jax.data.tokenizers import SpecialIds

# Scalar uniforms per example, before the 3 * L masking uniforms.
_SHORT, _TARGET, _SPLIT, _COIN, _DOC, _START, _CUT_A, _CUT_B = range(8)
_NUM_SCALARS = 8


def chunk_table(split: StoreSplit, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Greedy sentence chunks of every document: [N] first sentence, [N] end sentence."""
    offsets = split.sentence_offsets
    starts = split.document_offsets[:-1].copy()
    ends = split.document_offsets[1:]
    firsts, lasts = [], []
    active = np.nonzero(starts < ends)[0]
    while active.size:  # one round per chunk position; all documents advance together
        first = starts[active]
        # The first sentence that starts max_tokens or more after the chunk start ends it.
        stop = np.searchsorted(offsets, offsets[first] + max_tokens, side="left")
        stop = np.clip(stop, first + 1, ends[active])
        firsts.append(first)
        lasts.append(stop)
        starts[active] = stop
        active = active[stop < ends[active]]
    first, last = np.concatenate(firsts), np.concatenate(lasts)
    order = np.argsort(first, kind="stable")
    return first[order], last[order]


def _uniform_int(u: np.ndarray, low: np.ndarray | int, high: np.ndarray | int) -> np.ndarray:
    """Integers uniform in [low, high] (inclusive) from uniforms u in [0, 1)."""
    return low + (u * (np.asarray(high) - low + 1)).astype(np.int64)


def _truncate(a: tuple, b: tuple, limit: int, u: np.ndarray) -> tuple[tuple, tuple]:
    """Shortens spans a=(start, end), b=(start, end) to at most `limit` tokens together."""
    len_a, len_b = a[1] - a[0], b[1] - b[0]
    excess = np.maximum(len_a + len_b - limit, 0)
    first = np.minimum(excess, np.abs(len_a - len_b))  # shorten the longer side to a tie
    rest = excess - first
    cut_a = np.where(len_a > len_b, first, 0) + rest // 2
    cut_b = np.where(len_a > len_b, 0, first) + rest - rest // 2  # ties shorten B first
    front_a, front_b = u[:, _CUT_A] < 0.5, u[:, _CUT_B] < 0.5
    a = (a[0] + np.where(front_a, cut_a, 0), a[1] - np.where(front_a, 0, cut_a))
    b = (b[0] + np.where(front_b, cut_b, 0), b[1] - np.where(front_b, 0, cut_b))
    return a, b


class BertExampleBuilder:
    """Builds BERT batches from one store split; `build` is a pure function of its inputs."""

    def __init__(
        self,
        split: StoreSplit,
        config: DataConfig,
        specials: SpecialIds,
        special_table: np.ndarray,
        word_starts: np.ndarray | None = None,
    ) -> None:
        """`specials` must have cls, sep and mask; `special_table` [V] marks every special id
        (never chosen for masking, never a random replacement)."""
        if config.seq_len < 8:
            raise DataError(f"data.seq_len={config.seq_len} is too short for BERT; use >= 8.")
        if config.max_predictions_per_seq < 1:
            raise DataError("data.max_predictions_per_seq must be at least 1.")
        self.split = split
        self.config = config
        self.cls, self.sep = int(specials.cls), int(specials.sep)  # type: ignore[arg-type]
        self.mask = int(specials.mask)  # type: ignore[arg-type]
        self.pad = specials.pad or 0  # padding is never attended to (segment id 0)
        self.special_table = special_table
        self.replacements = np.flatnonzero(~special_table)  # random-token candidates
        self.word_starts = word_starts if config.whole_word_masking else None
        self.two_segments = config.pair_task != "none"
        self.max_tokens = config.seq_len - (3 if self.two_segments else 2)
        self.chunk_first, self.chunk_end = chunk_table(split, self.max_tokens)
        self.num_uniforms = _NUM_SCALARS + 3 * config.seq_len

    @property
    def num_examples(self) -> int:
        return len(self.chunk_first)

    def pair_spans(self, ids: np.ndarray, u: np.ndarray) -> tuple[tuple, tuple, np.ndarray]:
        """Store token spans of the first and second segment ((starts, ends), each [B]) before
        truncation, and the [B] pair labels, for chunk ids [B] and their uniforms."""
        offsets = self.split.sentence_offsets
        first, end = self.chunk_first[ids], self.chunk_end[ids]
        short = u[:, _SHORT] < self.config.short_seq_prob
        target = np.where(short, _uniform_int(u[:, _TARGET], 2, self.max_tokens), self.max_tokens)
        # The chunk's leading sentences up to the target length (at least one).
        stop = np.searchsorted(offsets, offsets[first] + target, side="left")
        stop = np.clip(stop, first + 1, end)
        start_tok, stop_tok = offsets[first], offsets[stop]
        sentences = stop - first
        by_sentence = offsets[np.minimum(_uniform_int(u[:, _SPLIT], first + 1, stop - 1), stop)]
        by_token = _uniform_int(u[:, _SPLIT], start_tok + 1, stop_tok - 1)
        split_tok = np.where(sentences >= 2, by_sentence, np.minimum(by_token, stop_tok))
        a, b = (start_tok, split_tok), (split_tok, stop_tok)
        coin = (u[:, _COIN] < 0.5) & (split_tok < stop_tok)
        if self.config.pair_task == "none":
            return (start_tok, stop_tok), (stop_tok, stop_tok), np.zeros(len(ids), np.int32)
        if self.config.pair_task == "sop":
            a, b = (
                (np.where(coin, b[0], a[0]), np.where(coin, b[1], a[1])),
                (
                    np.where(coin, a[0], b[0]),
                    np.where(coin, a[1], b[1]),
                ),
            )
            return a, b, coin.astype(np.int32)
        not_next = (u[:, _COIN] >= 0.5) | (split_tok == stop_tok)
        rand_b = self._random_span(first, np.maximum(target - (a[1] - a[0]), 1), u)
        b = (np.where(not_next, rand_b[0], b[0]), np.where(not_next, rand_b[1], b[1]))
        return a, b, not_next.astype(np.int32)

    def _random_span(self, first: np.ndarray, length: np.ndarray, u: np.ndarray) -> tuple:
        """Sentences from a random point of a random other document, >= `length` tokens."""
        offsets, doc_offsets = self.split.sentence_offsets, self.split.document_offsets
        num_docs = self.split.num_documents
        own = np.searchsorted(doc_offsets, first, side="right") - 1
        if num_docs >= 2:
            doc = _uniform_int(u[:, _DOC], 0, num_docs - 2)
            doc = np.where(doc >= own, doc + 1, doc)
        else:
            doc = own
        begin, finish = doc_offsets[doc], doc_offsets[doc + 1]
        start = _uniform_int(u[:, _START], begin, finish - 1)
        stop = np.searchsorted(offsets, offsets[start] + length, side="left")
        stop = np.clip(stop, start + 1, finish)
        return offsets[start], offsets[stop]

    def _assemble(self, a: tuple, b: tuple) -> dict[str, np.ndarray]:
        """[CLS] A [SEP] (B [SEP]) rows gathered from the store, with their masks."""
        length = self.config.seq_len
        pos = np.arange(length)[None, :]
        len_a, len_b = (a[1] - a[0])[:, None], (b[1] - b[0])[:, None]
        in_a = (pos >= 1) & (pos <= len_a)
        in_b = (pos >= len_a + 2) & (pos < len_a + 2 + len_b)
        end = len_a + (len_b + 3 if self.two_segments else 2)  # one past the final [SEP]
        source = np.where(in_a, a[0][:, None] + pos - 1, 0)
        source = np.where(in_b, b[0][:, None] + pos - len_a - 2, source)
        text = in_a | in_b
        ids = np.where(text, np.asarray(self.split.tokens[source], dtype=np.int64), self.pad)
        ids = np.where(pos == 0, self.cls, ids)
        ids = np.where((pos == len_a + 1) | (self.two_segments & (pos == end - 1)), self.sep, ids)
        real = pos < end
        return {
            "input_ids": ids,
            "token_type_ids": (self.two_segments & (pos > len_a + 1) & real).astype(np.int32),
            "segment_ids": real.astype(np.int32),
            "eligible": text & ~self.special_table[ids],
        }

    def build(self, example_ids: np.ndarray, uniforms: np.ndarray) -> dict[str, np.ndarray]:
        """Rows for chunk ids [B] with their [B, num_uniforms] uniforms."""
        a, b, labels = self.pair_spans(np.asarray(example_ids, np.int64), uniforms)
        a, b = _truncate(a, b, self.max_tokens, uniforms)
        rows = self._assemble(a, b)
        masked = mask_tokens(
            rows["input_ids"],
            rows["eligible"],
            uniforms[:, _NUM_SCALARS:],
            masked_lm_prob=self.config.masked_lm_prob,
            max_predictions=self.config.max_predictions_per_seq,
            mask_id=self.mask,
            replacements=self.replacements,
            word_starts=self.word_starts,
        )
        batch, length = rows["input_ids"].shape
        return {
            "input_ids": masked["input_ids"],
            "token_type_ids": rows["token_type_ids"],
            "segment_ids": rows["segment_ids"],
            "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length)).copy(),
            "mlm_positions": masked["mlm_positions"],
            "mlm_ids": masked["mlm_ids"],
            "mlm_weights": masked["mlm_weights"],
            "nsp_labels": labels,
        }
