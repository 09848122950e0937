"""GPT examples: documents packed into fixed windows for causal language modelling.

The split is read as one stream, every document followed by <|endoftext|> (GPT-2's recipe).
Window w covers stream positions [w L, w L + L + 1): inputs are its first L tokens, targets its
last L, so consecutive windows share one token and every stream token is a target exactly once
per epoch. The final partial window is dropped, except that a split shorter than one window
gives a single window padded with [PAD] (loss weight 0 where the target is padding).

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


class GptExampleBuilder:
    """Builds packed GPT batches from one store split; `build` is a pure function of window ids."""

    num_uniforms = 0

    def __init__(self, split: StoreSplit, config: DataConfig, specials: SpecialIds) -> None:
        """`specials` must have eos (<|endoftext|>); padding uses pad, else eos (GPT-2 has no
        pad token; padded targets carry no loss weight)."""
        self.split = split
        self.eos = int(specials.eos)  # type: ignore[arg-type]
        self.pad = self.eos if specials.pad is None else specials.pad
        self.config = config
        self.doc_start, doc_end = split.document_token_bounds()  # [D] token bounds in the store
        self.doc_len = doc_end - self.doc_start
        # Stream offset of each document; +1 for the <|endoftext|> that follows it.
        self.stream_start = np.concatenate([[0], np.cumsum(self.doc_len + 1)])
        self.stream_len = int(self.stream_start[-1])

    @property
    def num_examples(self) -> int:
        return max(1, (self.stream_len - 1) // self.config.seq_len)

    def build(self, example_ids: np.ndarray, uniforms: np.ndarray | None = None) -> dict:
        """Rows for window ids [B]; `uniforms` is unused (packing is deterministic)."""
        del uniforms
        length = self.config.seq_len
        windows = np.asarray(example_ids, np.int64)[:, None]
        stream = windows * length + np.arange(length + 1)[None, :]  # [B, L+1]
        real = stream < self.stream_len
        doc = np.searchsorted(self.stream_start, np.minimum(stream, self.stream_len - 1), "right")
        doc -= 1
        offset = stream - self.stream_start[doc]
        is_end = offset >= self.doc_len[doc]
        source = self.doc_start[doc] + np.minimum(offset, np.maximum(self.doc_len[doc] - 1, 0))
        ids = np.where(is_end, self.eos, np.asarray(self.split.tokens[source], dtype=np.int64))
        ids = np.where(real, ids, self.pad).astype(np.int32)
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
            "loss_weights": real[:, 1:].astype(np.float32),
            "segment_ids": segment.astype(np.int32),
            "positions": positions.astype(np.int32),
        }
