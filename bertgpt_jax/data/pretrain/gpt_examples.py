"""GPT examples: documents packed into fixed windows for causal language modelling.

The split is read as one stream, every document followed by <|endoftext|> (GPT-2's recipe).
Window w covers stream positions [w L, w L + L + 1): inputs are its first L tokens, targets its
last L, so consecutive windows share one token. Documents are placed in the stream one of two
ways:

* continuous (pretraining, `causal_lm` fine-tuning): one after the other, so every stream
  token is a target exactly once per epoch. The final partial window is dropped, except that a
  split shorter than one window gives a single window padded with [PAD] (loss weight 0 where
  the target is padding).
* whole examples (`sft`): no example crosses a window. An example longer than L tokens keeps
  its last L (it is cut from the prompt side; `truncated` counts them); one that does not fit
  in what is left of a window starts the next, and the rest of the window is padding. The last
  window is kept, however full.

Where the store has a loss mask (prompt -> completion examples), a target carries loss weight
only if its token is marked (a completion's); an <|endoftext|> counts when the token before it
does, so the model learns to stop after a completion. Without a mask every real target counts.

With data.document_attention the batch says where documents start, so the model can confine
attention to one document: segment_ids number the documents inside each window 1, 2, 3, ...
(an <|endoftext|> belongs to the document it ends) and positions restart at 0 with each
document (and at the window start for the document already in progress). Without it,
segment_ids are 1 on every real token and positions run 0..L-1, which is GPT-2's behaviour.
Packing uses no randomness; only the order of windows changes per epoch.
"""

from __future__ import annotations

import numpy as np

from bertgpt_jax.core.config import DataConfig
from bertgpt_jax.data.store import StoreSplit
from bertgpt_jax.data.tokenizers import SpecialIds


def place_whole(lengths: np.ndarray, window: int) -> np.ndarray:
    """[D + 1] stream starts of documents of these token counts (each <= window) followed by
    <|endoftext|>, so that document d's tokens and end [s, s + n] lie inside one window's
    L + 1 positions; the last entry is one past the last end."""
    starts = np.empty(len(lengths) + 1, np.int64)
    cursor = 0
    for d, n in enumerate(lengths.tolist()):
        first = cursor // window * window
        if cursor + n > first + window:  # its end would fall beyond this window's last target
            cursor = first + window
        starts[d] = cursor
        cursor += n + 1
    starts[-1] = cursor
    return starts


def stream_starts(lengths: np.ndarray, window: int, whole_examples: bool) -> np.ndarray:
    """[D + 1] stream offsets of documents of these token counts, each followed by its
    <|endoftext|>: one after the other, or placed whole (`place_whole`)."""
    if whole_examples:
        return place_whole(lengths, window)
    return np.concatenate([[0], np.cumsum(np.asarray(lengths, np.int64) + 1)])


def num_windows(lengths: np.ndarray, window: int, whole_examples: bool) -> int:
    """Windows per epoch of documents of these token counts (those placed whole are cut to
    `window` tokens first)."""
    if whole_examples:
        lengths = np.minimum(lengths, window)
    return _windows(int(stream_starts(lengths, window, whole_examples)[-1]), window, whole_examples)


def _windows(stream_len: int, window: int, whole_examples: bool) -> int:
    """Continuous: whole windows only; whole examples: the last, partial one too."""
    return max(1, (stream_len - 1 + (window - 1) * whole_examples) // window)


class GptExampleBuilder:
    """Builds packed GPT batches from one store split; `build` is a pure function of window ids."""

    num_uniforms = 0

    def __init__(
        self,
        split: StoreSplit,
        config: DataConfig,
        specials: SpecialIds,
        whole_examples: bool = False,
    ) -> None:
        """`specials` must have eos (<|endoftext|>); padding uses pad, else eos (GPT-2 has no
        pad token; padded targets carry no loss weight)."""
        self.split = split
        self.eos = int(specials.eos)  # type: ignore[arg-type]
        self.pad = self.eos if specials.pad is None else specials.pad
        self.config = config
        self.whole_examples = whole_examples
        self.doc_start, doc_end = split.document_token_bounds()  # [D] token bounds in the store
        self.doc_len = doc_end - self.doc_start
        length = config.seq_len
        self.truncated = int((self.doc_len > length).sum()) if whole_examples else 0
        if whole_examples:  # keep the last L tokens: the completion is at the end
            self.doc_start = self.doc_start + np.maximum(self.doc_len - length, 0)
            self.doc_len = np.minimum(self.doc_len, length)
        self.stream_start = stream_starts(self.doc_len, length, whole_examples)
        self.stream_len = int(self.stream_start[-1])
        # The loss weight of each document's <|endoftext|>: its last token's mark.
        mask = split.loss_mask
        last = np.maximum(doc_end - 1, 0)
        self.end_weight = (
            np.ones(len(self.doc_len)) if mask is None else (mask[last] * (self.doc_len > 0))
        ).astype(np.float32)

    @property
    def num_examples(self) -> int:
        return _windows(self.stream_len, self.config.seq_len, self.whole_examples)

    def build(self, example_ids: np.ndarray, uniforms: np.ndarray | None = None) -> dict:
        """Rows for window ids [B]; `uniforms` is unused (packing is deterministic)."""
        del uniforms
        length = self.config.seq_len
        windows = np.asarray(example_ids, np.int64)[:, None]
        stream = windows * length + np.arange(length + 1)[None, :]  # [B, L+1]
        doc = np.searchsorted(self.stream_start, np.minimum(stream, self.stream_len - 1), "right")
        doc -= 1
        offset = stream - self.stream_start[doc]
        is_end = offset == self.doc_len[doc]
        real = (stream < self.stream_len) & (offset <= self.doc_len[doc])  # not padding
        source = self.doc_start[doc] + np.clip(offset, 0, np.maximum(self.doc_len[doc] - 1, 0))
        ids = np.where(is_end, self.eos, np.asarray(self.split.tokens[source], dtype=np.int64))
        ids = np.where(real, ids, self.pad).astype(np.int32)
        weights = real.astype(np.float32)
        if self.split.loss_mask is not None:
            marked = np.asarray(self.split.loss_mask[source], np.float32)
            weights *= np.where(is_end, self.end_weight[doc], marked)
        inputs_real = real[:, :length]
        if self.config.document_attention:
            segment = np.where(inputs_real, doc[:, :length] - doc[:, :1] + 1, 0)
            begin = np.maximum(self.stream_start[doc[:, :length]], windows * length)
            positions = np.where(inputs_real, stream[:, :length] - begin, 0)
        else:
            segment = inputs_real.astype(np.int64)
            positions = np.broadcast_to(np.arange(length), inputs_real.shape)
        return {
            "input_ids": ids[:, :length],
            "targets": ids[:, 1:],
            "loss_weights": weights[:, 1:],
            "segment_ids": segment.astype(np.int32),
            "positions": positions.astype(np.int32),
        }
