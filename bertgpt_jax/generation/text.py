"""Text in and out of generation: the tokenizer a model path ships with, its special ids, stop
strings, and BERT's fill-mask.

Special ids are read from the tokenizer (data/tokenizers: a HuggingFace directory's files or a
SentencePiece model), never assumed; GPT's end of text is config.json's eos_token_id where it
names one.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bertgpt_jax.core import fs
from bertgpt_jax.core.errors import ConfigError
from bertgpt_jax.data.tokenizers import TOKENIZER_DIR, load_tokenizer


@dataclasses.dataclass(frozen=True)
class TextTokenizer:
    """encode(text) -> ids (no special tokens), decode(ids) -> text, token(id) -> the text of
    one id (as transformers' fill-mask `token_str`), and the ids that matter here: eos (GPT
    stops there), mask, cls and sep (BERT's fill-mask input)."""

    encode: Callable[[str], list[int]]
    decode: Callable[[Sequence[int]], str]
    token: Callable[[int], str]
    eos_id: int | None = None
    mask_id: int | None = None
    cls_id: int | None = None
    sep_id: int | None = None


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def load_text_tokenizer(path: Path) -> TextTokenizer | None:
    """The tokenizer stored with a model directory or workdir (see data/tokenizers), or None if
    it has none. GPT stops at config.json's eos_token_id where it names one."""
    if fs.is_remote(path):
        return None
    location = path / TOKENIZER_DIR if (path / TOKENIZER_DIR).is_dir() else path
    try:
        tok = load_tokenizer(location)
    except ConfigError:
        return None
    eos = _read_json(path / "config.json").get("eos_token_id")
    return TextTokenizer(
        encode=lambda text: tok.encode([text])[0],
        decode=lambda ids: tok.decode(ids, skip_special=True),
        token=lambda i: tok.decode([int(i)]) or tok.piece(int(i)),
        eos_id=eos if isinstance(eos, int) else tok.specials.eos,
        mask_id=tok.specials.mask,
        cls_id=tok.specials.cls,
        sep_id=tok.specials.sep,
    )


def cut_at_stop_string(
    ids: list[int], decode: Callable[[Sequence[int]], str], stops: Sequence[str]
) -> tuple[int, str] | None:
    """(number of ids before the token that completes the first stop string, text before it),
    or None if no stop string occurs. Checked on the host after generation."""
    text = decode(ids)
    found = [text.find(s) for s in stops if s and s in text]
    if not found:
        return None
    for k in range(1, len(ids) + 1):
        if any(s and s in decode(ids[:k]) for s in stops):
            return k - 1, text[: min(found)]
    return None


def encode_masked(text: str, tokenizer: TextTokenizer | None) -> list[int]:
    """A fill-mask text as BERT's input: [CLS] ids [SEP], with [MASK] kept as its id."""
    if tokenizer is None or tokenizer.mask_id is None:
        raise ConfigError(
            "fill-mask on text needs the model's tokenizer with a [MASK] token; this model has "
            "none (pass token ids instead)."
        )
    ids = tokenizer.encode(text)
    if tokenizer.mask_id not in ids:
        raise ConfigError(f"the text {text!r} has no [MASK] token; put [MASK] where to fill in.")
    head = [] if tokenizer.cls_id is None else [tokenizer.cls_id]
    tail = [] if tokenizer.sep_id is None else [tokenizer.sep_id]
    return head + ids + tail


def top_at_masks(
    mlm_logits: np.ndarray, ids: Sequence[int], mask_id: int, k: int
) -> list[list[tuple[int, float]]]:
    """mlm_logits [L, V] of one input -> for each mask position, the k most likely
    (id, probability) pairs, most likely first (softmax in float64)."""
    out = []
    for position in np.flatnonzero(np.asarray(ids) == mask_id):
        logits = mlm_logits[position].astype(np.float64)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        best = np.argsort(-probs, kind="stable")[:k]
        out.append([(int(i), float(probs[i])) for i in best])
    return out
