"""`PretrainedModel.generate` and `.fill_mask`: text or ids in, completions or guesses out.

A GPT model generates; a BERT model fills masks; asking either for the other's job is a
ConfigError. Prompts may be token-id lists or strings (encoded with the model's tokenizer).
Generation stops at the tokenizer's eos id (or config.json's eos_token_id), at any of `stop`'s
ids (on the device: the row stops there) or strings (on the host, after the row ends: the text
and ids are cut before the stop string), or after max_new_tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
from jax.sharding import Mesh

from bertgpt_jax.core.config import ModelConfig
from bertgpt_jax.core.errors import ConfigError
from bertgpt_jax.generation.generator import Completion, Generator
from bertgpt_jax.generation.text import (
    TextTokenizer,
    cut_at_stop_string,
    encode_masked,
    top_at_masks,
)


class PretrainedModel(Protocol):
    """What generation needs of `pretrained.load.PretrainedModel` (which calls in here)."""

    config: ModelConfig
    tokenizer: TextTokenizer | None
    eos_id: int | None

    def generator(self, mesh: Mesh | None = None) -> Generator: ...

    def __call__(self, input_ids: Any) -> dict[str, Any]: ...


Prompt = str | Sequence[int]


def _encode(prompts: Sequence[Prompt], tokenizer: TextTokenizer | None) -> list[list[int]]:
    if isinstance(prompts, str):
        prompts = [prompts]
    out = []
    for p in prompts:
        if isinstance(p, str):
            if tokenizer is None:
                raise ConfigError(
                    "this model has no tokenizer files, so prompts must be token-id lists."
                )
            out.append(tokenizer.encode(p))
        else:
            out.append([int(t) for t in p])
    return out


def _split_stops(stop: Sequence[int | str] | str | None) -> tuple[list[int], list[str]]:
    items: Sequence[int | str] = [stop] if isinstance(stop, str) else (stop or ())
    ids = [int(s) for s in items if not isinstance(s, str)]
    return ids, [s for s in items if isinstance(s, str)]


def _completion(
    ids: list[int],
    logprobs: list[float],
    stopped: bool,
    eos_id: int | None,
    strings: list[str],
    tokenizer: TextTokenizer | None,
) -> Completion:
    reason = "length"
    if stopped:
        reason = "eos" if ids[-1] == eos_id else "stop"
        ids, logprobs = ids[:-1], logprobs[:-1]
    text = None if tokenizer is None else tokenizer.decode(ids)
    if tokenizer is not None and strings:
        cut = cut_at_stop_string(ids, tokenizer.decode, strings)
        if cut is not None:
            (n, text), reason = cut, "stop_string"
            ids, logprobs = ids[:n], logprobs[:n]
    return Completion(ids=ids, logprobs=logprobs, text=text, stop_reason=reason)  # type: ignore[arg-type]


def generate(
    model: PretrainedModel,
    prompts: Sequence[Prompt],
    max_new_tokens: int = 32,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    seed: int | Sequence[int] = 0,
    stop: Sequence[int | str] | str | None = None,
    mesh: Mesh | None = None,
    on_text: Callable[[str], None] | None = None,
) -> list[Completion]:
    """One Completion per prompt; see `PretrainedModel.generate`."""
    generator: Generator = model.generator(mesh)
    tokenizer = model.tokenizer
    ids = _encode(prompts, tokenizer)
    stop_ids, strings = _split_stops(stop)
    eos_id = model.eos_id
    if eos_id is not None:
        stop_ids.append(eos_id)
    on_token = None
    if on_text is not None:
        on_token = _text_streamer(on_text, tokenizer, eos_id)
    raw = generator.generate(
        ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        seed=seed, stop_ids=stop_ids, on_token=on_token,
    )  # fmt: skip
    return [_completion(i, lp, s, eos_id, strings, tokenizer) for i, lp, s in raw]


def _text_streamer(
    on_text: Callable[[str], None], tokenizer: TextTokenizer | None, eos_id: int | None
) -> Callable[[int], None]:
    """Turns streamed ids into streamed text: each call emits what the new id added to the
    decoded text (a piece may change how earlier ones decode, so the whole is re-decoded)."""
    seen: list[int] = []
    shown = [""]

    def on_token(token: int) -> None:
        if token == eos_id:
            return
        seen.append(token)
        text = tokenizer.decode(seen) if tokenizer is not None else " ".join(map(str, seen))
        if text.startswith(shown[0]):
            on_text(text[len(shown[0]) :])
            shown[0] = text

    return on_token


def fill_mask(
    model: PretrainedModel, texts: Sequence[Prompt] | str, top_k: int = 5
) -> list[list[list[dict[str, Any]]]]:
    """For each text, for each [MASK] in it, the top_k guesses as dicts
    {token_id, token, score} (score = probability), most likely first."""
    if model.config.causal:
        raise ConfigError(
            f"fill-mask needs a BERT (masked LM) model, but this is a {model.config.family} "
            "model; use generate for GPT."
        )
    if top_k < 1:
        raise ConfigError(f"top_k={top_k} must be at least 1.")
    tokenizer = model.tokenizer
    texts = [texts] if isinstance(texts, str) else list(texts)
    inputs = [encode_masked(t, tokenizer) if isinstance(t, str) else list(t) for t in texts]
    mask_id = tokenizer.mask_id if tokenizer is not None else None
    if mask_id is None:
        raise ConfigError("this model's tokenizer has no [MASK] token to fill.")
    results = []
    for ids in inputs:
        if mask_id not in ids:
            raise ConfigError(f"input {ids[:12]}... has no [MASK] (id {mask_id}) to fill.")
        if len(ids) > model.config.max_len:
            raise ConfigError(
                f"the input has {len(ids)} tokens but the model has {model.config.max_len} "
                "positions; shorten it."
            )
        logits = np.asarray(model(np.asarray([ids]))["mlm_logits"][0])  # [L, V]
        guesses = top_at_masks(logits, ids, mask_id, top_k)
        token = tokenizer.token if tokenizer is not None else str
        results.append(
            [[{"token_id": i, "token": token(i), "score": s} for i, s in g] for g in guesses]
        )
    return results
