"""Example builders of the tasks that read a prepared store, registered by task name:
pretraining's, and sft's (prompt -> completion examples packed whole, with a loss mask).

A builder turns example ids (and, where it draws, uniforms) into fixed-shape numpy rows; the
pipeline (data/pipeline.py) decides which ids and uniforms. Each entry also fixes the Philox
key word of the task's draws, so two tasks never share a stream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bertgpt_jax.core.config import Config
from bertgpt_jax.core.errors import ConfigError
from bertgpt_jax.data.pretrain.bert_examples import BertExampleBuilder
from bertgpt_jax.data.pretrain.gpt_examples import GptExampleBuilder
from bertgpt_jax.data.store import StoreSplit
from bertgpt_jax.data.tokenizers import Tokenizer


def _masked_lm(config: Config, split: StoreSplit, tokenizer: Tokenizer) -> BertExampleBuilder:
    tokenizer.specials.require(("cls", "sep", "mask"), str(tokenizer.path), "masked LM")
    word_starts = tokenizer.word_start_table() if config.data.whole_word_masking else None
    return BertExampleBuilder(
        split, config.data, tokenizer.specials, tokenizer.special_table(), word_starts
    )


def _causal_lm(config: Config, split: StoreSplit, tokenizer: Tokenizer) -> GptExampleBuilder:
    tokenizer.specials.require(("eos",), str(tokenizer.path), "causal LM")
    return GptExampleBuilder(split, config.data, tokenizer.specials)


def _sft(config: Config, split: StoreSplit, tokenizer: Tokenizer) -> GptExampleBuilder:
    tokenizer.specials.require(("eos",), str(tokenizer.path), "sft")
    if not config.data.document_attention:
        raise ConfigError(
            "task sft packs several examples into a window and needs data.document_attention="
            "true so that none attends to another; drop data.document_attention=false."
        )
    return GptExampleBuilder(split, config.data, tokenizer.specials, whole_examples=True)


# task name -> (Philox stream word, builder factory)
EXAMPLE_BUILDERS: dict[str, tuple[int, Callable[[Config, StoreSplit, Tokenizer], Any]]] = {
    "masked_lm": (1, _masked_lm),
    "causal_lm": (2, _causal_lm),
    "sft": (3, _sft),
}
